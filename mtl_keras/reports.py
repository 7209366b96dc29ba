"""What a run leaves for people to look at: learning curves, confusion matrices, per-class accuracy.

    from mtl_keras import reports
    reports.learning_curves_png("runs/quickstart/history.csv", "curves.png")
    reports.confusion_matrix_png(y_true, y_pred, names, "confusion.png", title="fine")

Plain functions on arrays and paths, usable on any run (the experiment runner calls them too). Figures are
drawn on matplotlib's Agg canvas through `Figure` objects, never pyplot, so importing this module changes
no global backend and works on machines without a display. `write_run_reports` is what train.py calls.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import keras
import numpy as np

HEADS = ("fine", "coarse")
ANNOTATE_MAX = 30  # classes up to which every cell shows its count; above, a top-confusions list instead
TOP_CONFUSIONS = 25


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def read_history(history_csv: str | Path) -> dict[str, np.ndarray]:
    """Columns of a Keras CSVLogger file as float arrays; a resumed run's repeated epochs keep the last row."""
    with open(history_csv, newline="") as f:
        rows = {int(r["epoch"]): r for r in csv.DictReader(f) if r.get("epoch", "").strip()}
    epochs = sorted(rows)
    columns = rows[epochs[0]].keys() if epochs else []
    return {k: np.asarray([float(rows[e][k] or "nan") for e in epochs]) for k in columns}


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
        fig.suptitle(title)
    fig.savefig(out_png)
    return Path(out_png)


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Counts [true class, predicted class]."""
    m = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return m


def per_class_accuracy(y_true, y_pred, names) -> dict[str, dict]:
    """{class name: {"accuracy": share of its test images predicted right (None if it has none), "examples": n}}."""
    m = confusion_matrix(y_true, y_pred, len(names))
    totals = m.sum(1)
    return {name: {"accuracy": float(m[i, i] / totals[i]) if totals[i] else None, "examples": int(totals[i])}
            for i, name in enumerate(names)}


def top_confusions(y_true, y_pred, names, k: int = 10) -> list[dict]:
    """The `k` most frequent (true, predicted) mistakes, with their share of the true class's images."""
    m = confusion_matrix(y_true, y_pred, len(names))
    np.fill_diagonal(m, 0)
    order = np.argsort(-m, axis=None, kind="stable")[:k]
    totals = np.bincount(np.asarray(y_true, np.int64), minlength=len(names))
    out = []
    for t, p in zip(*np.unravel_index(order, m.shape)):
        if m[t, p]:
            out.append({"true": names[t], "predicted": names[p], "count": int(m[t, p]),
                        "share": float(m[t, p] / totals[t])})
    return out


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
    ax.set_xticks(range(n), names, rotation=90, fontsize=font)
    ax.set_yticks(range(n), names, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title + ': ' if title else ''}test accuracy {accuracy:.1%} ({m.sum()} images)")
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
                     transform=text_ax.transAxes)
    fig.savefig(out_png)
    return Path(out_png)


class TensorBoardScalars(keras.callbacks.Callback):
    """Per-epoch TensorBoard scalars: every logged loss and metric (per head) and the learning rate.

    Same layout and tags as keras.callbacks.TensorBoard (LOG_DIR/train, LOG_DIR/validation, `epoch_*`), but
    written with TensorFlow's own summary ops: Keras's callback needs the `tensorboard` package, which
    TensorFlow no longer installs; only the viewer (`tensorboard --logdir LOG_DIR`) needs it.
    """

    def __init__(self, log_dir: str | Path):
        super().__init__()
        self.log_dir = Path(log_dir)
        self._writers: dict = {}

    def _write(self, split: str, values: dict[str, float], step: int) -> None:
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        if split not in self._writers:
            self._writers[split] = tf.summary.create_file_writer(str(self.log_dir / split))
        scalar = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
        with self._writers[split].as_default():
            for name, value in values.items():
                tf.summary.write(f"epoch_{name}", tf.constant(float(value), tf.float32), step=step, metadata=scalar)
        self._writers[split].flush()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        train = {k: v for k, v in logs.items() if not k.startswith("val_")}
        optimizer = getattr(self.model.optimizer, "inner_optimizer", self.model.optimizer)  # loss scaling wraps it
        train["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        self._write("train", train, epoch)
        val = {k[4:]: v for k, v in logs.items() if k.startswith("val_")}
        if val:
            self._write("validation", val, epoch)

    def on_train_end(self, logs: dict | None = None) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


def read_scalars(log_dir: str | Path) -> dict[str, dict[str, list[float]]]:
    """{split: {tag: values by step}} from TensorBoard event files under LOG_DIR/SPLIT (for tests and scripts)."""
    import tensorflow as tf

    out: dict[str, dict[str, list[float]]] = {}
    for events in sorted(Path(log_dir).glob("*/events.out.tfevents.*")):
        tags = out.setdefault(events.parent.name, {})
        for record in tf.data.TFRecordDataset(str(events)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for v in event.summary.value:
                tags.setdefault(v.tag, []).append(float(tf.make_ndarray(v.tensor)))
    return out


def predict_split(model, split, info, batch_size: int = 256) -> tuple[dict, dict]:
    """(true labels, probabilities) per head of `model` on `split`, read through `data.pipeline`, so a
    split of image files is streamed and labels stay aligned with predictions. The one test-set pass of
    a run: metrics.json and every report are computed from it."""
    from mtl_keras import data

    truth: dict[str, list] = {}
    probs: dict[str, list] = {}
    for images, labels in data.pipeline(split, info, batch_size=batch_size):
        outputs = model.predict_on_batch(np.asarray(images))  # numpy: any Keras backend takes it
        for head, p in outputs.items():
            probs.setdefault(head, []).append(np.asarray(p))
            truth.setdefault(head, []).append(labels[head].numpy().argmax(-1))
    return ({h: np.concatenate(v) for h, v in truth.items()}, {h: np.concatenate(v) for h, v in probs.items()})


def write_run_reports(truth: dict, probs: dict, info, workdir: str | Path) -> dict:
    """Writes WORKDIR/learning_curves.png, confusion_{head}.png and skipped_files.txt (when any files were
    skipped) from the test labels and probabilities of `predict_split`; returns metrics.json entries:
    per-class accuracy, top confusions, skipped-file count."""
    workdir = Path(workdir)
    written, metrics = [], {}
    if (workdir / "history.csv").is_file():
        written.append(learning_curves_png(workdir / "history.csv", workdir / "learning_curves.png"))
    if probs:
        preds = {head: p.argmax(-1) for head, p in probs.items()}
        names = {"fine": info.fine_names, "coarse": info.coarse_names}
        metrics["accuracy_per_class"] = {h: per_class_accuracy(truth[h], preds[h], names[h]) for h in preds}
        metrics["top_confusions"] = {h: top_confusions(truth[h], preds[h], names[h]) for h in preds}
        for head in preds:
            written.append(confusion_matrix_png(truth[head], preds[head], names[head],
                                                workdir / f"confusion_{head}.png", title=head))
    if info.skipped_files:
        (workdir / "skipped_files.txt").write_text("\n".join(info.skipped_files) + "\n")
        written.append(workdir / "skipped_files.txt")
        print(f"skipped {len(info.skipped_files)} image files that could not be decoded: "
              f"{', '.join(info.skipped_files[:3])}{', ...' if len(info.skipped_files) > 3 else ''} "
              f"(all in {workdir / 'skipped_files.txt'})")
    metrics["skipped_files"] = len(info.skipped_files)
    print("reports: " + ", ".join(str(p) for p in written))
    return metrics


def per_class_table(metrics_json: str | Path, head: str = "fine") -> str:
    """metrics.json's per-class accuracy of `head` as a Markdown table, worst class first."""
    rows = json.loads(Path(metrics_json).read_text())["accuracy_per_class"][head]
    ordered = sorted(rows.items(), key=lambda kv: (kv[1]["accuracy"] is None, kv[1]["accuracy"] or 0.0))
    lines = [f"| {head} class | test accuracy | images |", "|---|---:|---:|"]
    lines += [f"| {name} | {'-' if r['accuracy'] is None else format(r['accuracy'], '.1%')} | {r['examples']} |"
              for name, r in ordered]
    return "\n".join(lines)
