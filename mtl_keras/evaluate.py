"""The test-set pass and every metric computed from it, for train and the experiment runner.

`predict_split` is the one pass over a test split (streamed through the data pipeline, so labels stay aligned
with predictions; an image without a label for a head gets -1 there); `test_metrics` turns its labels and
probabilities into metrics.json's entries: accuracy per head over the images labelled for it, top-5 for
100-class heads, hierarchy consistency, the share wrong at both levels, per-class accuracy and top confusions.
Predicted classes are each head's argmax, or with `consistent=True` (hierarchy-aware heads, `--coarse_head`
marginal / both) the pair of models.hierarchy.consistent_pair, which never contradicts the hierarchy.
`save_predictions` / `load_predictions` keep the predicted and true classes in WORKDIR/test_predictions.npz,
so experiments compare runs without predicting again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PREDICTIONS_FILE = "test_predictions.npz"  # {head: predicted class ids, "true_" + head: true class ids}
TOP_CONFUSIONS = 25


def predict_split(model, split, info, batch_size: int = 256) -> tuple[dict, dict]:
    """(true labels, probabilities) per head of `model` on `split`."""
    from mtl_keras.data.pipeline import pipeline  # TensorFlow: only for the pass itself

    truth: dict[str, list] = {}
    probs: dict[str, list] = {}
    for images, labels, *_ in pipeline(split, info, batch_size=batch_size):  # *_: partial labels' weights
        outputs = model.predict_on_batch(np.asarray(images))  # numpy: any Keras backend takes it
        for head, p in outputs.items():
            probs.setdefault(head, []).append(np.asarray(p))
            onehot = labels[head].numpy()
            truth.setdefault(head, []).append(np.where(onehot.max(-1) > 0, onehot.argmax(-1), -1))
    return ({h: np.concatenate(v) for h, v in truth.items()}, {h: np.concatenate(v) for h, v in probs.items()})


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


def hierarchy_consistency(fine_pred, coarse_pred, fine_to_coarse) -> float:
    """Share of images whose predicted fine class lies inside the predicted coarse class."""
    return float(np.mean(np.asarray(fine_to_coarse)[np.asarray(fine_pred)] == np.asarray(coarse_pred)))


def predicted_classes(probs: dict[str, np.ndarray], info, consistent: bool = False) -> dict[str, np.ndarray]:
    """Class ids per head: each head's argmax, or the hierarchy-consistent pair (`consistent`, two heads)."""
    from mtl_keras.serving.answers import pair  # what predict and serving_bytes answer

    return pair(probs, info.fine_to_coarse if consistent else None, consistent)


def _mean_where(hit: np.ndarray, labelled: np.ndarray) -> float | None:
    return float(np.mean(hit[labelled])) if labelled.any() else None


def both_wrong(truth: dict[str, np.ndarray], preds: dict[str, np.ndarray]) -> float | None:
    """Share of the images labelled at both levels whose fine and coarse predictions are both wrong (None when
    no image has both labels)."""
    wrong = (preds["fine"] != truth["fine"]) & (preds["coarse"] != truth["coarse"])
    return _mean_where(wrong, (truth["fine"] >= 0) & (truth["coarse"] >= 0))


def accuracy_metrics(truth: dict[str, np.ndarray], probs: dict[str, np.ndarray], info,
                     consistent: bool = False, preds: dict[str, np.ndarray] | None = None) -> dict:
    """Accuracy per head over the images labelled for it, top-5 for 100-class heads; for two heads hierarchy
    consistency and `both_wrong` (share of fully labelled images wrong at both levels); test_examples and,
    when some images lack a head's label, `labelled_<head>`. `preds`: `predicted_classes`, when already known."""
    preds = predicted_classes(probs, info, consistent) if preds is None else preds
    labelled = {name: truth[name] >= 0 for name in preds}
    metrics = {f"{name}_accuracy": _mean_where(pred == truth[name], labelled[name]) for name, pred in preds.items()}
    for name, p in probs.items():
        if p.shape[-1] >= 100:  # top-5 where top-1 is a hard target (CIFAR-100's fine head)
            top5 = np.argsort(-p, axis=-1)[:, :5]
            metrics[f"{name}_top5_accuracy"] = _mean_where((top5 == truth[name][:, None]).any(-1), labelled[name])
    if len(preds) == 2:
        metrics["hierarchy_consistency"] = hierarchy_consistency(preds["fine"], preds["coarse"], info.fine_to_coarse)
        metrics["both_wrong"] = both_wrong(truth, preds)
    metrics["test_examples"] = len(next(iter(truth.values())))
    for name, mask in labelled.items():
        if not mask.all():
            metrics[f"labelled_{name}"] = int(mask.sum())
    return metrics


def test_metrics(truth: dict[str, np.ndarray], probs: dict[str, np.ndarray], info, consistent: bool = False) -> dict:
    """Every metrics.json entry of the test pass: `accuracy_metrics`, per-class accuracy, top confusions and
    the count of skipped (undecodable) files."""
    preds = predicted_classes(probs, info, consistent)
    metrics = accuracy_metrics(truth, probs, info, consistent, preds)
    names = info.class_names
    keep = {h: truth[h] >= 0 for h in preds}
    metrics["accuracy_per_class"] = {h: per_class_accuracy(truth[h][keep[h]], preds[h][keep[h]], names[h])
                                     for h in preds}
    metrics["top_confusions"] = {h: top_confusions(truth[h][keep[h]], preds[h][keep[h]], names[h]) for h in preds}
    metrics["skipped_files"] = len(info.skipped_files)
    return metrics


def save_predictions(workdir: str | Path, truth: dict, probs: dict, info=None, consistent: bool = False) -> Path:
    """WORKDIR/test_predictions.npz: predicted (see `predicted_classes`) and true class ids per head (int32;
    -1: not labelled)."""
    path = Path(workdir) / PREDICTIONS_FILE
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, **{h: p.astype(np.int32) for h, p in predicted_classes(probs, info, consistent).items()},
             **{f"true_{h}": np.asarray(t, np.int32) for h, t in truth.items()})
    tmp.replace(path)
    return path


def load_predictions(workdir: str | Path) -> tuple[dict, dict] | None:
    """(true, predicted) class ids per head from WORKDIR/test_predictions.npz; None when the run has none (or
    it is older than its model.keras, or from a version that did not keep the true labels)."""
    path, model_file = Path(workdir) / PREDICTIONS_FILE, Path(workdir) / "model.keras"
    if not path.is_file() or (model_file.is_file() and path.stat().st_mtime < model_file.stat().st_mtime):
        return None
    with np.load(path) as f:
        arrays = dict(f)
    heads = [k for k in arrays if not k.startswith("true_")]
    if not heads or any(f"true_{h}" not in arrays for h in heads):
        return None
    return {h: arrays[f"true_{h}"] for h in heads}, {h: arrays[h] for h in heads}
