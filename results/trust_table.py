"""Writes FOLDER/table.md from the trust runs of FOLDER/run.sh (FOLDER/runs/HEAD/seedN/metrics.json):
    python3 results/trust_table.py results/trust_fmnist
"""

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(sys.argv[1]).resolve() if len(sys.argv) == 2 else sys.exit("usage: trust_table.py FOLDER")
COLUMNS = (("fine_accuracy", "fine acc %"), ("coarse_accuracy", "coarse acc %"),
           ("hedge_coverage", "coverage at the hedge threshold %"), ("hedge_fine_precision", "fine precision there %"),
           ("hedge_accuracy", "hedged answers right %"), ("fine_aurc", "fine AURC"),
           ("fine_ece_raw", "fine ECE % (no temperature)"), ("fine_ece", "fine ECE % (--calibrate)"),
           ("coarse_ece_raw", "coarse ECE % (no temperature)"), ("coarse_ece", "coarse ECE % (--calibrate)"),
           ("fine_errors_within_superclass", "fine errors in true superclass %"))


def row(m: dict) -> dict:
    # Where the temperature was not kept the exported model is the raw one: its ECE is both columns.
    return m | {f"{h}_ece_raw": m.get(f"{h}_ece_uncalibrated", m.get(f"{h}_ece")) for h in ("fine", "coarse")}


lines = ["| coarse head | seed | hedge threshold | temperature kept | " + " | ".join(h for _, h in COLUMNS) + " |",
         "|" + " --- |" * (len(COLUMNS) + 4)]
for head in ("learned", "marginal", "both"):
    paths = sorted((HERE / "runs" / head).glob("seed*/metrics.json"))
    runs = {path: row(json.loads(path.read_text())) for path in paths}
    for run, m in runs.items():
        kept = {h: r["temperature"] for h, r in m.get("calibration", {}).items() if r["kept"]}
        cells = [f"{m[k]:.4f}" if k == "fine_aurc" else f"{100 * m[k]:.2f}" if m.get(k) is not None else "–"
                 for k, _ in COLUMNS]
        lines.append(f"| {head} | {run.parent.name[4:]} | {m['hedge_threshold']:.4f} | {kept or 'none'} | "
                     + " | ".join(cells) + " |")
    seeds = list(runs.values())
    if len(seeds) > 1:  # mean +- sample standard deviation over the seeds
        def stat(k: str) -> str:
            v = np.array([m[k] for m in seeds if m.get(k) is not None], float) * (1 if k == "fine_aurc" else 100)
            digits = 4 if k == "fine_aurc" else 2
            return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}" if len(v) > 1 else "–"
        lines.append(f"| **{head}, mean ± sd** | {len(seeds)} seeds | | | " + " | ".join(stat(k) for k, _ in COLUMNS)
                     + " |")
(HERE / "table.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
