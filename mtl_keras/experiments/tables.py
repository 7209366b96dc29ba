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
METRICS = ("fine_accuracy", "coarse_accuracy", "hierarchy_consistency", "both_wrong")
LOWER_IS_BETTER = {"both_wrong"}
PAIR_METRICS = METRICS[2:]  # what compares an STL pair with MTL (a pair's accuracies are its STL rows')
VAL_METRICS = ("val_fine_accuracy", "val_coarse_accuracy")
RESULTS_HEADER = "# Results: "  # results.md's first bytes: the runner overwrites no results.md without them
# Trust columns (evaluate.trust_metrics), mean over seeds in %: calibration, mistake severity, the hedged answer.
TRUST = (("fine_ece", "fine ECE %"), ("coarse_ece", "coarse ECE %"),
         ("fine_errors_within_superclass", "fine errors in true superclass %"),
         ("hedge_coverage", "hedged: fine-level coverage %"), ("hedge_fine_precision", "hedged: fine precision %"))
# Size and cost columns, from the runs' metrics.json (train.compute_figures): key, header, format.
COMPUTE = (("train_seconds", "train s / run", "{:.0f}"), ("train_images_per_second", "images/s", "{:,.0f}"),
           ("parameters", "parameters", "{:,.0f}"), ("train_gflops", "train GFLOPs", "{:,.0f}"))
# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (beyond: the normal 1.96).
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
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


def ci95(values: list[float]) -> tuple[float, float] | None:
    """Mean and the half-width of its two-sided 95 % Student-t confidence interval (nan for one value)."""
    if not values:
        return None
    n = len(values)
    if n == 1:
        return float(values[0]), float("nan")
    t = _T95[n - 2] if n - 1 <= len(_T95) else 1.96
    return float(np.mean(values)), t * float(np.std(values, ddof=1)) / np.sqrt(n)


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


def _compute_cells(r: Row) -> list[str]:
    """Mean over seeds of each COMPUTE column, formatted; – where the runs did not record it."""
    return ["–" if r.stats(key) is None else fmt.format(r.stats(key)[0]) for key, _, fmt in COMPUTE]


def markdown_table(rows: list[Row]) -> str:
    """Accuracy per head and hierarchy consistency, mean ± std over seeds in %, one row per experiment / pair,
    with the seed study's figures and the runs' size and cost."""
    header = ["experiment", "task", "seeds", "fine acc %", "coarse acc %", "hierarchy consistency %",
              "wrong at both levels %",
              "seed study fine / coarse %", *(h for _, h, _ in COMPUTE), *(h for _, h in TRUST)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in rows:
        ref = " / ".join("–" if v is None else f"{v:.1f}" for v in seed_study(r))
        lines.append(f"| {r.experiment} | {r.task} | {len(r.seeds)} | "
                     + " | ".join(_pct(r.stats(m)) for m in METRICS)
                     + f" | {ref} | " + " | ".join(_compute_cells(r)) + " | "
                     + " | ".join(_pct(r.stats(k)) for k, _ in TRUST) + " |")
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
                         "seed_study_fine_pct", "seed_study_coarse_pct", *(f"{k}_mean" for k, _, _ in COMPUTE)])
        for r in rows:
            cells = []
            for m in METRICS:
                stats = r.stats(m)
                cells += ["" if stats is None or v != v else f"{100 * v:.2f}" for v in (stats or (0, 0))]
            reference = ["" if v is None else v for v in seed_study(r)]
            compute = ["" if r.stats(k) is None else f"{r.stats(k)[0]:.1f}" for k, _, _ in COMPUTE]
            writer.writerow([r.experiment, r.task, len(r.seeds), " ".join(map(str, r.seeds)), *cells, *reference,
                             *compute])


def _ci_cell(values: list[float]) -> str:
    """Mean difference in points with its 95 % confidence interval, e.g. `+0.42 [-0.31, +1.15]`."""
    stats = ci95(values)
    if stats is None:
        return "–"
    mean, half = (100 * v for v in stats)
    return f"{mean:+.2f}" + (f" [{mean - half:+.2f}, {mean + half:+.2f}]" if half == half else "")


def validation_scores(row: Row) -> dict[int, float]:
    """Seed -> the mean of the two heads' validation accuracy (final weights)."""
    return {s: float(np.mean([row.values[m][s] for m in VAL_METRICS])) for s in row.seeds
            if all(s in row.values.get(m, {}) for m in VAL_METRICS)}


def validation_score(row: Row) -> float | None:
    """What gamma (or a weighting) is chosen by: the mean over seeds of the two heads' mean validation accuracy."""
    per_seed = list(validation_scores(row).values())
    return float(np.mean(per_seed)) if per_seed else None


def versus_chosen(row: Row, best: Row) -> list[float]:
    """`row` minus the chosen row in validation score, paired by seed (for the selection's confidence interval)."""
    mine, theirs = validation_scores(row), validation_scores(best)
    return [mine[s] - theirs[s] for s in sorted(mine) if s in theirs]


def chosen_on_validation(rows: list[Row]) -> dict[str, tuple[Row, list[Row]]]:
    """Per MTL setting (rows that differ only in gamma / loss weighting): the row with the best validation score,
    and all candidates. Test accuracy never enters the choice."""
    groups: dict[str, list[Row]] = {}
    for r in rows:
        if r.task == "mtl" and validation_score(r) is not None:
            groups.setdefault(r.key, []).append(r)
    return {key: (max(group, key=validation_score), group) for key, group in groups.items()}


def write_markdown(rows: list[Row], path: Path, title: str, command: str) -> None:
    """The table, how to read it, the MTL settings chosen on validation, and the MTL-minus-STL differences
    paired by seed with 95 % confidence intervals."""
    md = [f"{RESULTS_HEADER}{title}", "", f"Command: `{command}`", "",
          "Test split. Mean ± sample standard deviation (ddof=1) over seeds, in %. `stl pair`: the fine-only and "
          "coarse-only models of the same seed taken together; their hierarchy consistency is the share of test "
          "images whose coarse prediction is the parent of the fine prediction. Seed study: its reported CIFAR "
          "test accuracy (MTL at its best gamma), for reference. images/s: training images through `fit` per "
          "second (validation passes and compilation included); train GFLOPs: 3 x forward FLOPs x images trained.",
          "", markdown_table(rows), ""]
    chosen = chosen_on_validation(rows)
    if any(len(group) > 1 for _, group in chosen.values()):
        md += ["## Gamma chosen on validation", "",
               "Each MTL setting's candidates (the same run but for gamma / loss weighting), scored by the mean of "
               "the two heads' validation accuracy (final weights, mean over seeds); test accuracy plays no part.",
               "Δ: the candidate minus the chosen one in validation score, paired by seed, with its 95 % confidence "
               "interval (an interval containing 0: the choice is not clear-cut).",
               "", "| candidate | validation score % | Δ vs chosen | test fine % | test coarse % | chosen |",
               "| --- | --- | --- | --- | --- | --- |"]
        for best, group in chosen.values():
            for r in group:
                delta = "–" if r is best else _ci_cell(versus_chosen(r, best))
                md.append(f"| {r.experiment} | {100 * validation_score(r):.2f} | {delta} | "
                          f"{_pct(r.stats(METRICS[0]))} | {_pct(r.stats(METRICS[1]))} | "
                          f"{'**yes**' if r is best else ''} |")
        md.append("")
    deltas = comparisons(rows)
    if deltas:
        best_rows = {id(best) for best, _ in chosen.values()}
        md += ["## MTL minus STL, paired by seed (the same validation split and training subset)", "",
               "Mean difference in points over seeds, with its 95 % confidence interval (Student t, n - 1 degrees of "
               "freedom); an interval that contains 0 means no difference was shown.", "",
               "| MTL | STL pair | seeds | Δ fine acc | Δ coarse acc | Δ hierarchy consistency | Δ wrong at both "
               "levels | seeds where MTL is ahead (fine, coarse, consistency, fewer wrong at both) |",
               "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for mtl, pair, d in deltas:
            wins = ", ".join(f"{sum((x < 0) if m in LOWER_IS_BETTER else (x > 0) for x in d[m])}/{len(d[m])}"
                             for m in METRICS)
            name = mtl.experiment + (" (chosen on validation)" if id(mtl) in best_rows and len(deltas) > 1 else "")
            md.append(f"| {name} | {pair.experiment} | {len(d['fine_accuracy'])} | "
                      + " | ".join(_ci_cell(d[m]) for m in METRICS) + f" | {wins} |")
        md.append("")
    path.write_text("\n".join(md))
