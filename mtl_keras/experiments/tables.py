"""The results table of an experiment grid (used by runner.py; numpy and csv only, no TensorFlow).

Rows hold one value per seed; the table shows mean ± sample std (ddof=1) in %, the seed study's reported figures
beside the seed_* experiments, and MTL-minus-STL differences paired by seed.
"""

from __future__ import annotations

import csv
import dataclasses
import re
from pathlib import Path

import numpy as np

HEADS = ("fine", "coarse")
METRICS = ("fine_accuracy", "coarse_accuracy", "hierarchy_consistency")
# Test accuracy (%) reported by the seed study, (fine, coarse) per trunk and CIFAR set; MTL at its best gamma.
SEED_STUDY = {
    ("vit", "c10"): {"stl": (65.9, 93.3), "mtl": (67.5, 94.3)},
    ("vit", "c100"): {"stl": (30.2, 45.8), "mtl": (33.5, 49.1)},
    ("resnet152", "c10"): {"stl": (66.4, 94.2), "mtl": (68.8, 94.9)},
    ("resnet152", "c100"): {"stl": (30.4, 43.0), "mtl": (27.1, 47.6)},
}
_SEED_NAME = re.compile(r"seed_(vit|resnet152)_(c10|c100)_(stl_fine|stl_coarse|mtl_g[\d.]+)")


def mean_std(values: list[float]) -> tuple[float, float] | None:
    """Mean and sample standard deviation (ddof=1; nan for a single value), or None for no values."""
    if not values:
        return None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


@dataclasses.dataclass
class Row:
    """One table row: an experiment, or an STL pair (`pair` = its fine and coarse experiment names)."""
    experiment: str
    task: str  # mtl, fine, coarse or "stl pair"
    key: str  # equal for an MTL experiment and the STL pair it is compared with
    values: dict[str, dict[int, float]]  # metric -> seed -> value (fractions; train_seconds in s)
    pair: tuple[str, str] | None = None

    @property
    def seeds(self) -> list[int]:
        return sorted({s for v in self.values.values() for s in v})

    def stats(self, metric: str) -> tuple[float, float] | None:
        return mean_std(list(self.values.get(metric, {}).values()))


def seed_study(row: Row) -> tuple[float | None, float | None]:
    """The seed study's (fine, coarse) test accuracy in % for a seed_* experiment or pair; None elsewhere."""
    def lookup(name: str, head: str) -> float | None:
        m = _SEED_NAME.fullmatch(name)
        if not m or (m[3].startswith("stl") and m[3] != f"stl_{head}"):
            return None
        return SEED_STUDY[(m[1], m[2])]["mtl" if m[3].startswith("mtl") else "stl"][HEADS.index(head)]

    fine_name, coarse_name = row.pair or (row.experiment, row.experiment)
    return lookup(fine_name, "fine"), lookup(coarse_name, "coarse")


def _pct(stats: tuple[float, float] | None, sign: str = "") -> str:
    if stats is None:
        return "–"
    mean, std = stats
    return f"{100 * mean:{sign}.2f}" + (f" ± {100 * std:.2f}" if std == std else "")  # std is nan for one seed


def markdown_table(rows: list[Row]) -> str:
    """Accuracy per head and hierarchy consistency, mean ± std over seeds in %, one row per experiment / pair."""
    lines = ["| experiment | task | seeds | fine acc % | coarse acc % | hierarchy consistency % | seed study "
             "fine / coarse % | train s / run |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ref = " / ".join("–" if v is None else f"{v:.1f}" for v in seed_study(r))
        secs = r.stats("train_seconds")
        lines.append(f"| {r.experiment} | {r.task} | {len(r.seeds)} | "
                     + " | ".join(_pct(r.stats(m)) for m in METRICS)
                     + f" | {ref} | {'–' if secs is None else f'{secs[0]:.0f}'} |")
    return "\n".join(lines)


def comparisons(rows: list[Row]) -> list[tuple[Row, Row, dict[str, list[float]]]]:
    """(MTL row, STL pair row, metric -> MTL minus STL per shared seed) for every MTL row with a matching pair.

    Paired by seed because a seed fixes the validation split and the training subset for both.
    """
    out = []
    for mtl in (r for r in rows if r.task == "mtl"):
        for pair in (r for r in rows if r.task == "stl pair" and r.key == mtl.key):
            out.append((mtl, pair, {m: [v - pair.values[m][s] for s, v in sorted(mtl.values.get(m, {}).items())
                                        if s in pair.values[m]] for m in METRICS}))
    return out


def write_csv(rows: list[Row], path: Path) -> None:
    """One line per experiment / pair; values in %, empty where a head or figure does not exist."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["experiment", "task", "n_seeds", "seeds",
                         *(f"{m}_{s}_pct" for m in METRICS for s in ("mean", "std")),
                         "seed_study_fine_pct", "seed_study_coarse_pct", "train_seconds_mean"])
        for r in rows:
            cells = []
            for m in METRICS:
                stats = r.stats(m)
                cells += ["" if stats is None or v != v else f"{100 * v:.2f}" for v in (stats or (0, 0))]
            secs = r.stats("train_seconds")
            reference = ["" if v is None else v for v in seed_study(r)]
            writer.writerow([r.experiment, r.task, len(r.seeds), " ".join(map(str, r.seeds)), *cells, *reference,
                             "" if secs is None else f"{secs[0]:.1f}"])


def write_markdown(rows: list[Row], path: Path, title: str, command: str) -> None:
    """The table, how to read it, and the MTL-minus-STL differences paired by seed."""
    md = [f"# Results: {title}", "", f"Command: `{command}`", "",
          "Test split. Mean ± sample standard deviation (ddof=1) over seeds, in %. `stl pair`: the fine-only and "
          "coarse-only models of the same seed taken together; their hierarchy consistency is the share of test "
          "images whose coarse prediction is the parent of the fine prediction. Seed study: its reported CIFAR "
          "test accuracy (MTL at its best gamma), for reference.", "", markdown_table(rows), ""]
    deltas = comparisons(rows)
    if deltas:
        md += ["## MTL minus STL, paired by seed (the same validation split and training subset)", "",
               "| MTL | STL pair | seeds | Δ fine acc (points) | Δ coarse acc (points) | Δ hierarchy consistency "
               "(points) | seeds where MTL is ahead (fine, coarse, consistency) |",
               "| --- | --- | --- | --- | --- | --- | --- |"]
        for mtl, pair, d in deltas:
            wins = ", ".join(f"{sum(x > 0 for x in d[m])}/{len(d[m])}" for m in METRICS)
            md.append(f"| {mtl.experiment} | {pair.experiment} | {len(d['fine_accuracy'])} | "
                      + " | ".join(_pct(mean_std(d[m]), "+") for m in METRICS) + f" | {wins} |")
        md.append("")
    path.write_text("\n".join(md))
