"""Plots of an experiment grid: MTL-vs-STL bars and the mean learning curves over seeds (matplotlib `Figure`, no
pyplot, so no global backend and no display needed)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from mtl_keras.experiments.tables import METRICS, PAIR_METRICS, Row


def mtl_vs_stl_png(rows: list[Row], out_png: Path) -> None:
    """Bars per experiment for fine / coarse accuracy, hierarchy consistency and the share wrong at both levels,
    error bars ±1 std over seeds."""
    from matplotlib.figure import Figure  # not pyplot: no global backend, works without a display
    from matplotlib.patches import Rectangle

    colors = {"mtl": "tab:blue", "fine": "tab:orange", "coarse": "tab:orange", "stl pair": "tab:green"}
    fig = Figure(figsize=(5.5 * len(METRICS), 5), dpi=100, layout="constrained")
    for ax, metric in zip(fig.subplots(1, len(METRICS)), METRICS):
        # Accuracy compares single runs (a pair's accuracies are its STL rows'); the pair metrics MTL vs pairs.
        shown = [r for r in rows if r.stats(metric) and (r.task != "stl pair" or metric in PAIR_METRICS)]
        if not shown:
            ax.set_axis_off()
            continue
        mean = np.array([100 * r.stats(metric)[0] for r in shown])
        std = np.nan_to_num([100 * r.stats(metric)[1] for r in shown])
        ax.bar(range(len(shown)), mean, yerr=std, capsize=4, color=[colors[r.task] for r in shown])
        for i, (m, s) in enumerate(zip(mean, std)):
            ax.annotate(f"{m:.1f}", (i, m + s), ha="center", va="bottom", fontsize=8)
        low = max(0.0, float(np.floor((mean - std).min() - 3)))  # zoom in: the differences are a few points
        ax.set_ylim(low, min(100.0, float((mean + std).max()) + 2))
        ax.set_xticks(range(len(shown)), [r.experiment.replace(" + ", "\n+ ") for r in shown], rotation=30,
                      ha="right", fontsize=8, parse_math=False)  # flagfile names drawn as they are
        ax.set(title=metric.replace("_", " "), ylabel="test split %" + (f" (axis from {low:.0f})" if low else ""))
        ax.grid(axis="y", alpha=0.3)
    handles = [Rectangle((0, 0), 1, 1, color=c) for c in ("tab:blue", "tab:orange", "tab:green")]
    fig.legend(handles, ["MTL", "STL", "STL pair"], loc="outside upper right", ncol=3)
    fig.suptitle("MTL vs STL: mean ± std over seeds")
    fig.savefig(out_png)


def mean_history(history_csvs: list[Path], task: str, out_csv: Path) -> Path:
    """Writes the mean over seeds of the runs' history.csv files to `out_csv`, columns named per head as in an
    MTL run (a one-head model logs plain loss / accuracy); epochs are cut to the shortest run."""
    from mtl_keras import reports

    runs = []
    for path in history_csvs:
        history = reports.read_history(path)  # keeps the last row of epochs a resumed run repeats
        runs.append({name if task == "mtl" else re.sub(r"^(val_)?(loss|accuracy)$", rf"\g<1>{task}_\2", name): v
                     for name, v in history.items() if name != "epoch"})
    epochs = min(len(next(iter(r.values()))) for r in runs)
    columns = [c for c in runs[0] if all(c in r for r in runs)]
    with open(out_csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", *columns])
        writer.writerows([e, *(f"{np.mean([r[c][e] for r in runs]):.6g}" for c in columns)] for e in range(epochs))
    return out_csv
