"""The test-set pass and every metric computed from it, for train and the experiment runner.

`predict_split` is the one pass over a test split (streamed through the data pipeline, so labels stay aligned
with predictions; an image without a label for a head gets -1 there); `test_metrics` turns its labels and
probabilities into metrics.json's entries: accuracy per head over the images labelled for it, top-5 for
100-class heads, hierarchy consistency, the share wrong at both levels, per-class accuracy and top confusions.
Predicted classes are each head's argmax, or with `consistent=True` (hierarchy-aware heads, `--coarse_head`
marginal / both) the pair of models.hierarchy.consistent_pair, which never contradicts the hierarchy.
`save_predictions` / `load_predictions` keep the predicted and true classes in WORKDIR/test_predictions.npz,
so experiments compare runs without predicting again. `fit_on_validation` fits what train takes from the
validation images (a `--calibrate` temperature, the hedge threshold) and `trust_metrics` adds the calibration,
mistake-severity and hedged-answer figures (confidence.py) to metrics.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PREDICTIONS_FILE = "test_predictions.npz"  # {head: predicted class ids, "true_" + head: true class ids}
TOP_CONFUSIONS = 25


def predict_batch(model, images, rows: int) -> dict[str, np.ndarray]:
    """`model.predict_on_batch(images)` as numpy, with fewer than `rows` images padded by zero images to `rows`
    (their outputs dropped): every batch of a pass runs at one shape, so the predict step is traced, and with
    XLA or JAX compiled, once instead of again for each smaller last batch (a Mu/4 compile: about a second).
    Each image's outputs do not depend on the others in its batch (inference mode)."""
    images = np.asarray(images)  # numpy: any Keras backend takes it
    n = len(images)
    if 0 < n < rows:
        images = np.concatenate([images, np.zeros((rows - n, *images.shape[1:]), images.dtype)])
    return {head: np.asarray(p)[:n] for head, p in model.predict_on_batch(images).items()}


def predict_split(model, split, info, batch_size: int = 256, input_pipeline: str = "auto") -> tuple[dict, dict]:
    """(true labels, probabilities) per head of `model` on `split`, batched by `input_pipeline` (data/feeds.py)
    and run at one batch shape (`predict_batch`)."""
    from mtl_keras.data import feeds

    truth: dict[str, list] = {}
    probs: dict[str, list] = {}
    for images, labels, *_ in feeds.eval_batches(split, info, batch_size, input_pipeline):  # *_: weights
        outputs = predict_batch(model, images, batch_size)
        for head, p in outputs.items():
            probs.setdefault(head, []).append(p)
            onehot = np.asarray(labels[head])
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


def check_validation(model_config, validation_examples: int, hedge_default: float) -> None:
    """RunError (one line, before anything is written) when the run asks for what needs validation images
    and has none: --calibrate, or a --hedge_target other than the default (the default hedges when it can)."""
    from mtl_keras.errors import RunError

    if not 0 < model_config.hedge_target < 1:
        raise RunError(f"--hedge_target={model_config.hedge_target} must lie strictly between 0 and 1")
    if validation_examples:
        return
    asked = [f for f, on in (("--calibrate", model_config.calibrate),
                             (f"--hedge_target={model_config.hedge_target}",
                              model_config.hedge_target != hedge_default)) if on]
    if asked:
        raise RunError(f"{' and '.join(asked)} need validation images, and this run has none: set "
                       "--validation_fraction above 0")


def fit_on_validation(model, splits, info, model_config, batch_size: int = 256, input_pipeline: str = "auto"):
    """(model, decoding, metrics, validation (truth, probabilities) or None): with `--calibrate` the model with
    the temperature kept inside it (confidence.calibrate), and the hedge threshold chosen on validation images
    for --hedge_target fine-level precision (answers.choose_threshold). `decoding`: answers.Decoding's keys for
    classes.json; `metrics`: the calibration report."""
    from mtl_keras import confidence
    from mtl_keras.serving import answers

    if not len(splits.val):
        return model, {}, {}, None
    truth, probs = predict_split(model, splits.val, info, batch_size, input_pipeline)
    consistent = model_config.coarse_head != "learned"
    tied = info.fine_to_coarse if consistent and {"fine", "coarse"} <= set(probs) else None
    decoding, metrics = {}, {}
    if model_config.calibrate:
        from mtl_keras.models.hierarchy import with_temperature

        kept, metrics["calibration"] = confidence.calibrate(truth, probs, tied)
        if kept:
            model = with_temperature(model, kept, tied)
            probs = confidence.apply(probs, kept, tied)
            decoding["temperature"] = kept
    if {"fine", "coarse"} <= set(probs):
        ids = answers.pair(probs, info.fine_to_coarse, consistent)
        keep = truth["fine"] >= 0
        decoding["hedge_threshold"] = answers.choose_threshold(answers.fine_confidence(probs, ids)[keep],
                                                               (ids["fine"] == truth["fine"])[keep],
                                                               model_config.hedge_target)
        decoding["hedge_target"] = model_config.hedge_target
    return model, decoding, metrics, (truth, probs)


def trust_metrics(truth: dict, probs: dict, info, consistent: bool, decoding: dict) -> dict:
    """metrics.json's trust entries on test images: ECE per head (and before calibration, where a temperature
    was kept), the share of fine errors inside the true superclass, and the hedged answer's figures."""
    from mtl_keras import confidence
    from mtl_keras.serving import answers

    metrics = {f"{h}_ece": confidence.ece(p, truth[h]) for h, p in probs.items()}
    kept = decoding.get("temperature")
    if kept:  # softmax(log p * t) undoes the temperature t exactly: the model's test probabilities before it
        tied = info.fine_to_coarse if consistent and {"fine", "coarse"} <= set(probs) else None
        raw = confidence.apply(probs, {h: 1.0 / t for h, t in kept.items()}, tied)
        metrics |= {f"{h}_ece_uncalibrated": confidence.ece(p, truth[h]) for h, p in raw.items()}
    ids = answers.pair(probs, info.fine_to_coarse, consistent)
    if {"fine", "coarse"} <= set(probs):
        metrics["fine_errors_within_superclass"] = confidence.within_superclass(truth, ids, info.fine_to_coarse)
        metrics |= confidence.hedge_metrics(truth, probs, ids, decoding.get("hedge_threshold"))
        metrics["hedge_target"] = decoding.get("hedge_target")
    elif "fine" in probs:
        preds = {"fine": ids["fine"]}
        metrics["fine_errors_within_superclass"] = confidence.within_superclass(truth, preds, info.fine_to_coarse)
    return metrics
