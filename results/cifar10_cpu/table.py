"""Writes results/cifar10_cpu/table.md from the runs of results/cifar10_cpu/run.sh (runs/ROW/seedN/metrics.json):
    python3 results/cifar10_cpu/table.py
Rows already in table.md whose run folder is gone (runs/ is not kept in git) stay as they are. A budgeted run
trains as many steps as the machine gives it, so each row names the machine it ran on (this one's CPU model, core
count and AMX, read from /proc/cpuinfo): compare rows of the same machine only."""

import json
import os
from pathlib import Path


def machine() -> str:
    info = Path("/proc/cpuinfo").read_text()
    name = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
    return f"{name}, {os.cpu_count()} cores" + (", AMX" if " amx_tile" in info else "")


HERE = Path(__file__).resolve().parent
FLAGS = {"budget": "", "muon": "--optimizer=muon", "alt_flip": "--augment=alt_flip_crop",
         "whitened": "--stem_init=whitened", "batch128": "--batch_size=128 --learning_rate=2.8e-3",
         "wider": "--variant=Mi/4",
         "progressive": "--progressive_size=24 --progressive_share=0.5",
         "muon_alt_flip": "--optimizer=muon --augment=alt_flip_crop",
         "muon_alt_flip_whitened": "--optimizer=muon --augment=alt_flip_crop --stem_init=whitened",
         "muon_alt_flip_progressive": "--optimizer=muon --augment=alt_flip_crop --progressive_size=24 "
                                      "--progressive_share=0.5",
         "muon_alt_flip_progressive_whitened": "--optimizer=muon --augment=alt_flip_crop --progressive_size=24 "
                                               "--progressive_share=0.5 --stem_init=whitened"}
HEADER = ["| row | seed | fine % | coarse % | consistency % | epochs | steps | train s | images/s | change | machine |",
          "|" + " --- |" * 11]
EARLIER = "AMD EPYC (Zen 4), 2 cores"  # the machine of the rows written before the table named machines

table = HERE / "table.md"
rows = {}  # (row, seed, machine) -> line
if table.is_file():
    for line in table.read_text().splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 10:
            cells.append(EARLIER)
            line += f" {EARLIER} |"
        rows[cells[0], int(cells[1]), cells[10]] = line
here = machine()
for row, change in FLAGS.items():
    for path in sorted((HERE / "runs" / row).glob("seed*/metrics.json")):
        m = json.loads(path.read_text())
        b = m["time_budget"]
        seed = int(path.parent.name[4:])
        rows[row, seed, here] = (
            f"| {row} | {seed} | {100 * m['fine_accuracy']:.2f} | {100 * m['coarse_accuracy']:.2f} | "
            f"{100 * m['hierarchy_consistency']:.2f} | {b['epochs']} | {b['steps']:,} | {m['train_seconds']:,.0f} | "
            f"{m['train_images_per_second']:,.0f} | `{change or '(the config under the budget)'}` | {here} |")
order = list(FLAGS)
lines = HEADER + [rows[key] for key in sorted(rows, key=lambda k: (k[2] != EARLIER, order.index(k[0]), k[1]))]
table.write_text("\n".join(lines) + "\n")
print("\n".join(lines))
