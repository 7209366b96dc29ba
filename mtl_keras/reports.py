"""What a run leaves for people to look at: learning curves, confusion matrices, a per-class table.

    from mtl_keras import reports
    reports.learning_curves_png("runs/quickstart/history.csv", "curves.png")
    reports.confusion_matrix_png(y_true, y_pred, names, "confusion.png", title="fine")

Plain functions on arrays and paths, usable on any run (the experiment runner calls them too). Figures are
drawn on matplotlib's Agg canvas through `Figure` objects, never pyplot, so importing this module changes
no global backend and works on machines without a display. `write_run_reports` is what train.py calls;
the numbers come from evaluate.py.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from mtl_keras.evaluate import TOP_CONFUSIONS, confusion_matrix, top_confusions

HEADS = ("fine", "coarse")  # the model's output keys, in the order panels are drawn
_MISSING = ("", "NA")  # how CSVLogger writes a value an epoch did not log
ANNOTATE_MAX = 30  # classes up to which every cell shows its count; above, a top-confusions list instead
# Names (classes from folder names, experiments from flagfile names) are drawn as they are: with mathtext, a
# folder named `$x^$` raised a ParseException in savefig, after training.
PLAIN = {"parse_math": False}


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def read_history(history_csv: str | Path) -> dict[str, np.ndarray]:
    """Columns of a Keras CSVLogger file as float arrays; a resumed run's repeated epochs keep the last row.

    CSVLogger adds val_* columns filled with `NA` to a run without validation (--validation_fraction=0):
    `NA` or empty reads as NaN, and a column with no value at all is left out, so such a run has no val_*."""
    with open(history_csv, newline="") as f:
        rows = {int(r["epoch"]): r for r in csv.DictReader(f) if r.get("epoch", "").strip()}
    epochs = sorted(rows)
    columns = rows[epochs[0]].keys() if epochs else []
    cells = {k: [(rows[e][k] or "").strip() for e in epochs] for k in columns}
    return {k: np.asarray([float(v) if v not in _MISSING else np.nan for v in values])
            for k, values in cells.items() if any(v not in _MISSING for v in values)}


def learning_curves_png(history_csv: str | Path, out_png: str | Path, title: str | None = None) -> Path:
    """Loss and accuracy per head, train vs validation, one row of two panels per head."""
    history = read_history(history_csv)
    if "epoch" not in history or not len(history["epoch"]):
        raise ValueError(f"{history_csv} has no epochs to plot")
    epoch = history["epoch"] + 1
    heads = [h for h in HEADS if f"{h}_accuracy" in history or f"{h}_loss" in history] or [""]
    fig = _figure(9, 3 * len(heads))
    axes = fig.subplots(len(heads), 2, squeeze=False)
    for row, head in zip(axes, heads):
        prefix = f"{head}_" if head else ""
        # A one-head model logs a single `loss`; its head has no loss column of its own.
        loss = f"{prefix}loss" if f"{prefix}loss" in history else "loss"
        panels = ((row[0], [(loss, "-")], "loss"),
                  (row[1], [(f"{prefix}accuracy", "-"), (f"{prefix}top5_accuracy", "--")], "accuracy"))
        for ax, keys, what in panels:
            for key, style in keys:
                for split, colour in (("", "tab:blue"), ("val_", "tab:orange")):
                    if split + key in history:
                        name = ("validation" if split else "train") + (" top-5" if "top5" in key else "")
                        ax.plot(epoch, history[split + key], style, color=colour, marker=".", label=name)
            ax.set_title(f"{head or 'model'} {what}")
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, **PLAIN)
    fig.savefig(out_png)
    return Path(out_png)


def confusion_matrix_png(y_true, y_pred, names, out_png: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix with class names on both axes.

    Up to ANNOTATE_MAX classes every cell shows its count; above that (CIFAR-100's 100 classes) the names
    get a small font and a panel beside the matrix lists the TOP_CONFUSIONS most frequent mistakes.
    """
    names = list(names)
    n = len(names)
    m = confusion_matrix(y_true, y_pred, n)
    rates = m / np.maximum(m.sum(1, keepdims=True), 1)
    accuracy = np.trace(m) / max(m.sum(), 1)
    big = n > ANNOTATE_MAX
    side = min(max(3.0 + 0.4 * n, 4.5), 14.0)
    fig = _figure(side + (5.0 if big else 1.2), side)
    if big:
        ax, text_ax = fig.subplots(1, 2, width_ratios=[side, 4.0])
    else:
        ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="share of the true class")
    font = 8 if n <= 20 else max(3.5, min(8.0, 500.0 / n))
    ax.set_xticks(range(n), names, rotation=90, fontsize=font, **PLAIN)
    ax.set_yticks(range(n), names, fontsize=font, **PLAIN)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title + ': ' if title else ''}test accuracy {accuracy:.1%} ({m.sum()} images)", **PLAIN)
    if not big:
        for (t, p), count in np.ndenumerate(m):
            if count:
                ax.text(p, t, str(count), ha="center", va="center", fontsize=max(5, font - 1),
                        color="white" if rates[t, p] > 0.5 else "black")
    else:
        lines = [f"{c['count']:>5}  {c['share']:>6.1%}  {c['true']} -> {c['predicted']}"
                 for c in top_confusions(y_true, y_pred, names, TOP_CONFUSIONS)]
        text_ax.axis("off")
        text_ax.set_title(f"top {len(lines)} confusions (count, share of true class)", fontsize=10, loc="left")
        text_ax.text(0.0, 1.0, "\n".join(lines) or "no mistakes", va="top", family="monospace", fontsize=9,
                     transform=text_ax.transAxes, **PLAIN)
    fig.savefig(out_png)
    return Path(out_png)


def write_run_reports(truth: dict, preds: dict, info, workdir: str | Path) -> list[Path]:
    """Draws WORKDIR/learning_curves.png and confusion_{head}.png from the test pass's true and predicted class
    ids (`evaluate.predict_split`, `evaluate.predicted_classes`; images without a head's label, -1, are left
    out of its matrix) and lists undecodable files in skipped_files.txt (when any); returns the files written."""
    workdir = Path(workdir)
    written = []
    if (workdir / "history.csv").is_file():
        written.append(learning_curves_png(workdir / "history.csv", workdir / "learning_curves.png"))
    names = info.class_names
    for head, pred in preds.items():
        labelled = truth[head] >= 0
        written.append(confusion_matrix_png(truth[head][labelled], pred[labelled], names[head],
                                            workdir / f"confusion_{head}.png", title=head))
    if info.skipped_files:
        (workdir / "skipped_files.txt").write_text("\n".join(info.skipped_files) + "\n")
        written.append(workdir / "skipped_files.txt")
        print(f"skipped {len(info.skipped_files)} image files that could not be decoded: "
              f"{', '.join(info.skipped_files[:3])}{', ...' if len(info.skipped_files) > 3 else ''} "
              f"(all in {workdir / 'skipped_files.txt'})")
    print("reports: " + ", ".join(str(p) for p in written))
    return written


def per_class_table(metrics_json: str | Path, head: str = "fine") -> str:
    """metrics.json's per-class accuracy of `head` as a Markdown table, worst class first."""
    rows = json.loads(Path(metrics_json).read_text())["accuracy_per_class"][head]
    ordered = sorted(rows.items(), key=lambda kv: (kv[1]["accuracy"] is None, kv[1]["accuracy"] or 0.0))
    lines = [f"| {head} class | test accuracy | images |", "|---|---:|---:|"]
    lines += [f"| {name} | {'-' if r['accuracy'] is None else format(r['accuracy'], '.1%')} | {r['examples']} |"
              for name, r in ordered]
    return "\n".join(lines)


def reliability_png(truth: dict, probs: dict, out_png: str | Path) -> Path:
    """Reliability diagram per head (15 bins): accuracy against mean confidence, the diagonal is calibrated;
    each panel's title gives its ECE (confidence.ece)."""
    from mtl_keras.confidence import ECE_BINS, ece, reliability

    heads = [h for h in HEADS if h in probs]
    fig = _figure(4 * len(heads), 4)
    for ax, head in zip(fig.subplots(1, len(heads), squeeze=False)[0], heads):
        r = reliability(probs[head], truth[head])
        centers = (np.arange(ECE_BINS) + 0.5) / ECE_BINS
        acc = [a if a is not None else 0.0 for a in r["accuracy"]]
        ax.bar(centers, acc, width=1 / ECE_BINS, edgecolor="black", alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
        ax.set_title(f"{head}: ECE {ece(probs[head], truth[head]):.3f}", **PLAIN)
        ax.legend(loc="upper left")
    fig.savefig(out_png)
    return Path(out_png)


def risk_coverage_png(confidence: np.ndarray, correct: np.ndarray, out_png: str | Path,
                      threshold_coverage: float | None = None) -> Path:
    """Fine-level risk (error) against coverage (share answered at the fine level), most confident first; the
    title gives the AURC, a dotted line the coverage the hedge threshold gives."""
    from mtl_keras.confidence import risk_coverage

    coverage, risk, aurc = risk_coverage(confidence, correct)
    fig = _figure(5, 4)
    ax = fig.subplots()
    ax.plot(coverage, risk)
    if threshold_coverage is not None:
        ax.axvline(threshold_coverage, ls=":", color="gray", label="hedge threshold")
        ax.legend(loc="upper left")
    ax.set(xlim=(0, 1), ylim=(0, max(float(risk.max()), 0.01) if len(risk) else 1), xlabel="coverage (fine answers)",
           ylabel="fine risk (error)")
    ax.set_title(f"risk-coverage, AURC {aurc:.4f}", **PLAIN)
    fig.savefig(out_png)
    return Path(out_png)


def write_trust_reports(truth: dict, probs: dict, info, consistent: bool, decoding: dict,
                        workdir: str | Path) -> list[Path]:
    """WORKDIR/reliability.png and, with both heads, risk_coverage.png from the test pass."""
    from mtl_keras.serving import answers

    workdir = Path(workdir)
    written = [reliability_png(truth, probs, workdir / "reliability.png")]
    if {"fine", "coarse"} <= set(probs):
        ids = answers.pair(probs, info.fine_to_coarse, consistent)
        keep = (truth["fine"] >= 0) & (truth["coarse"] >= 0)
        level = answers.at_fine_level(probs, ids, decoding.get("hedge_threshold"))[keep]
        written.append(risk_coverage_png(answers.fine_confidence(probs, ids)[keep],
                                         (ids["fine"] == truth["fine"])[keep], workdir / "risk_coverage.png",
                                         float(level.mean()) if keep.any() else None))
    print("trust reports: " + ", ".join(str(p) for p in written))
    return written
