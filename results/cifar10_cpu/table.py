"""Writes results/cifar10_cpu/table.md from the runs of results/cifar10_cpu/run.sh (runs/ROW/seedN/metrics.json):
    python3 results/cifar10_cpu/table.py
"""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
FLAGS = {"budget": "", "muon": "--optimizer=muon", "alt_flip": "--augment=alt_flip_crop",
         "whitened": "--stem_init=whitened", "batch128": "--batch_size=128 --learning_rate=2.8e-3"}
lines = ["| row | seed | fine % | coarse % | consistency % | epochs | steps | train s | images/s | change |",
         "|" + " --- |" * 10]
for row, change in FLAGS.items():
    for path in sorted((HERE / "runs" / row).glob("seed*/metrics.json")):
        m = json.loads(path.read_text())
        b = m["time_budget"]
        lines.append(f"| {row} | {path.parent.name[4:]} | {100 * m['fine_accuracy']:.2f} | "
                     f"{100 * m['coarse_accuracy']:.2f} | {100 * m['hierarchy_consistency']:.2f} | {b['epochs']} | "
                     f"{b['steps']:,} | {m['train_seconds']:,.0f} | {m['train_images_per_second']:,.0f} | "
                     f"`{change or '(the config under the budget)'}` |")
(HERE / "table.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
