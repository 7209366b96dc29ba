"""The CIFAR-10 recipe study's combined table and scaling view, from the experiment runner's results.csv files.

    mtl-keras experiments --grid='cifar10_study/a_*' --seeds=0 \
        --results_dir=results/cifar10_study/budget_a
    mtl-keras experiments --grid='cifar10_study/b_*' --seeds=0 \
        --results_dir=results/cifar10_study/budget_b
    python benchmarks/cifar10_study.py --results=results/cifar10_study --levers=results/cifar10_cpu \
        --recipe=muon_alt_flip

Writes RESULTS/study.md and study.csv (one row per flagfile, with the command that trains it) and scaling.png:
test error against training compute for the ViT sizes and budgets, with a power-law fit err = a * C^-b over the
ViT (conv stem, default recipe) rows. The fit's value at a larger compute is an extrapolation, printed as one.

With --levers, the 15-minute lever runs (results/cifar10_cpu/runs/ROW/seedS/metrics.json) join the view: the
`budget` row is the default recipe at a larger budget, so it joins the fit; the --recipe row is a changed recipe
measured at one compute only, so it gets the family's exponent through its own points (an assumption, drawn and
printed as one).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

BUDGETS = {"budget_a": "A: 10k images x 5 epochs", "budget_b": "B: 40k images, 8-20 epochs"}
# Rows that differ from the base recipe only in model size / budget: the scaling family (budget B rows add the
# flipped-view average and batch 64, worth about +0.7 and +2 points at budget A).
SCALING_ROWS = ("a_vit_pico4", "a_vit_mu4", "a_vit_mi4", "a_vit_xs4")


def in_scaling_family(experiment: str) -> bool:
    return experiment in SCALING_ROWS or experiment.startswith("b_vit_") or experiment == "15 min: budget"
COLUMNS = ("fine_accuracy_mean_pct", "coarse_accuracy_mean_pct", "hierarchy_consistency_mean_pct",
           "train_seconds_mean", "train_images_per_second_mean", "parameters_mean", "train_gflops_mean")


def read_rows(results: Path) -> list[dict]:
    rows = []
    for budget in BUDGETS:
        path = results / budget / "results.csv"
        if path.is_file():
            with open(path, newline="") as f:
                rows += [{"budget": budget, **r} for r in csv.DictReader(f) if r["task"] == "mtl"]
    return rows


def read_levers(levers: Path) -> list[dict]:
    """One row per lever with its mean fine accuracy and training compute over seeds (rows whose compute is not
    recorded, e.g. progressive resolution, are left out)."""
    rows = []
    for run in sorted(p for p in (levers / "runs").iterdir() if p.is_dir()):
        metrics = [json.loads(m.read_text()) for m in sorted(run.glob("seed*/metrics.json"))]
        metrics = [m for m in metrics if m.get("train_gflops")]
        if metrics:
            rows.append({"budget": "levers", "experiment": f"15 min: {run.name}", "lever": run.name,
                         "seeds": len(metrics),
                         "fine_accuracy_mean_pct": str(100 * np.mean([m["fine_accuracy"] for m in metrics])),
                         "train_gflops_mean": str(np.mean([m["train_gflops"] for m in metrics]))})
    return rows


def shifted(rows: list[dict], exponent: float) -> float:
    """a of error = a * GFLOPs^-exponent through the given rows (geometric mean in log space)."""
    return float(np.exp(np.mean([np.log(1 - _num(r["fine_accuracy_mean_pct"]) / 100)
                                 + exponent * np.log(_num(r["train_gflops_mean"])) for r in rows])))


def _num(text: str) -> float | None:
    return float(text) if text not in ("", None) else None


def power_law(rows: list[dict]) -> tuple[float, float] | None:
    """(a, b) of fine-head test error = a * GFLOPs^-b, least squares in log-log over the scaling rows."""
    pts = [(_num(r["train_gflops_mean"]), 1 - _num(r["fine_accuracy_mean_pct"]) / 100) for r in rows
           if in_scaling_family(r["experiment"]) and _num(r["train_gflops_mean"])]
    if len(pts) < 3:
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    slope, intercept = np.polyfit(x, y, 1)
    return float(np.exp(intercept)), float(-slope)


def write_table(rows: list[dict], results: Path) -> None:
    header = ["budget", "row", "fine %", "coarse %", "consistency %", "train s", "images/s", "parameters",
              "train GFLOPs", "command"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    with open(results / "study.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["budget", "experiment", *COLUMNS, "command"])
        for r in rows:
            command = f"mtl-keras train --config=cifar10_study/{r['experiment']}"
            writer.writerow([r["budget"], r["experiment"], *(r[c] for c in COLUMNS), command])
            v = [_num(r[c]) for c in COLUMNS]
            cells = [f"{x:.2f}" if x is not None else "–" for x in v[:3]]
            cells += [f"{x:,.0f}" if x is not None else "–" for x in v[3:]]
            lines.append(f"| {r['budget'][-1].upper()} | {r['experiment']} | " + " | ".join(cells)
                         + f" | `{command}` |")
    (results / "study.md").write_text("\n".join(lines) + "\n")


def scaling_png(rows: list[dict], fit: tuple[float, float] | None, out: Path, at: list[float],
                recipe: tuple[str, float] | None = None) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter

    fig = Figure(figsize=(7, 5), dpi=110, layout="constrained")
    ax = fig.subplots()
    for r in rows:
        gflops, acc = _num(r["train_gflops_mean"]), _num(r["fine_accuracy_mean_pct"])
        if gflops is None or acc is None:
            continue
        family = in_scaling_family(r["experiment"])
        color = "tab:green" if recipe and r.get("lever") == recipe[0] else "tab:blue" if family else "tab:gray"
        ax.scatter(gflops, 100 - acc, color=color, marker="o" if family or color == "tab:green" else "x")
        ax.annotate(r["experiment"], (gflops, 100 - acc), fontsize=6, xytext=(3, 3), textcoords="offset points")
    if fit:
        xs = np.geomspace(min(_num(r["train_gflops_mean"]) or 1 for r in rows) / 2, max([1e5, *at]) * 1.5, 50)
        ax.plot(xs, 100 * fit[0] * xs ** -fit[1], "--", color="tab:blue",
                label=f"fit: error = {fit[0]:.2f} x GFLOPs^-{fit[1]:.3f} (beyond the points: extrapolation)")
        for c in at:
            ax.scatter(c, 100 * fit[0] * c ** -fit[1], facecolors="none", edgecolors="tab:red", s=60)
            ax.annotate(f"extrapolated: {100 * (1 - fit[0] * c ** -fit[1]):.1f} % at {c:,.0f} GFLOPs",
                        (c, 100 * fit[0] * c ** -fit[1]),
                        fontsize=7, color="tab:red", xytext=(-150, 10), textcoords="offset points")
        if recipe:
            ax.plot(xs, 100 * recipe[1] * xs ** -fit[1], ":", color="tab:green",
                    label=f"{recipe[0]}: the same exponent through its points (an assumption)")
            for c in at:
                ax.scatter(c, 100 * recipe[1] * c ** -fit[1], facecolors="none", edgecolors="tab:green", s=60)
                ax.annotate(f"extrapolated: {100 * (1 - recipe[1] * c ** -fit[1]):.1f} %",
                            (c, 100 * recipe[1] * c ** -fit[1]), fontsize=7, color="tab:green",
                            xytext=(-110, -14), textcoords="offset points")
        ax.legend(fontsize=7)
    ax.set(xscale="log", yscale="log", xlabel="training compute (GFLOPs, 3 x forward x images)",
           ylabel="fine-head test error % (CIFAR-10, 5,000 held-out images)",
           title="CIFAR-10 on a 2-core CPU: error vs training compute")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.grid(alpha=0.3, which="both")
    fig.savefig(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results/cifar10_study")
    parser.add_argument("--at_gflops", type=float, action="append", default=[],
                        help="print the fit's extrapolated fine-head accuracy at this training compute")
    parser.add_argument("--levers", help="results folder of the 15-minute lever runs (results/cifar10_cpu)")
    parser.add_argument("--recipe", help="the lever row whose recipe is drawn with the family's exponent")
    args = parser.parse_args()
    results = Path(args.results)
    rows = read_rows(results)
    if not rows:
        sys.exit(f"cifar10_study: error: no budget_*/results.csv under {results}; run the experiment grids first")
    write_table(rows, results)
    levers = read_levers(Path(args.levers)) if args.levers else []
    fit = power_law(rows + levers)
    chosen = [r for r in levers if r["lever"] == args.recipe]
    if args.recipe and not chosen:
        sys.exit(f"cifar10_study: error: no lever row {args.recipe!r} with a recorded compute under {args.levers}")
    recipe = (args.recipe, shifted(chosen, fit[1])) if chosen and fit else None
    scaling_png(rows + levers, fit, results / "scaling.png", args.at_gflops, recipe)
    print(f"wrote {results / 'study.md'}, study.csv, scaling.png ({len(rows)} rows)")
    if fit:
        print(f"fit: fine error = {fit[0]:.3f} x GFLOPs^-{fit[1]:.4f}")
        for c in args.at_gflops:
            print(f"extrapolation at {c:,.0f} training GFLOPs: fine accuracy {100 * (1 - fit[0] * c ** -fit[1]):.1f} %")
            if recipe:
                print(f"  {recipe[0]} with the same exponent (an assumption): "
                      f"{100 * (1 - recipe[1] * c ** -fit[1]):.1f} %")


if __name__ == "__main__":
    main()
