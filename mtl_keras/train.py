"""Trains a multi-task (or single-task) classifier, evaluates it, exports it and checks the export.

    python -m mtl_keras.train --flagfile=configs/quickstart.flags
    python -m mtl_keras.train --flagfile=configs/mtl_vit_c10.flags --data_dir=~/tensorflow_datasets

Writes WORKDIR/flags.txt (the resolved flags), history.csv, model.keras and metrics.json; exports to
EXPORT_DIR/MODEL_NAME/VERSION (SavedModel + model.onnx) and runs the onnxruntime parity check.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mtl_keras import data
from mtl_keras.config import TrainConfig


class RunError(RuntimeError):
    """A run cannot go on; the message is one line for the user."""


def atomic_write_text(path: Path, text: str) -> None:
    """Writes `text` to `path` through a temporary file and a rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def prepare_workdir(workdir: str) -> Path:
    path = Path(workdir).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path)
        probe.close()
    except OSError as e:
        raise RunError(f"--workdir={workdir} is not writable: {e.strerror or e}") from None
    return path


def build_and_compile(config: TrainConfig, info: data.DatasetInfo, input_shape, steps_per_epoch: int,
                      norm_stats=None):
    """The model for `config.task`, compiled with its optimizer, LR schedule, per-head losses and metrics.

    `norm_stats` = per-channel (mean, variance) of the training pixels, used by trunks in ADAPTED_NORM.
    """
    import keras

    from mtl_keras import losses
    from mtl_keras.models import build_model

    heads = {name: n for name, n in info.num_classes.items() if config.task in ("mtl", name)}
    model = build_model(config.model, input_shape, heads, variant=config.variant, stem=config.stem,
                        image_size=config.image_size, dropout=config.dropout, head=config.head,
                        head_dropout=config.head_dropout, stochastic_depth=config.stochastic_depth,
                        norm_stats=norm_stats, loss_weighting=config.loss_weighting)
    total = config.epochs * steps_per_epoch
    warmup = min(int(config.warmup_epochs * steps_per_epoch), total - 1)
    schedule = config.learning_rate if config.lr_schedule == "constant" else keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=total - warmup, warmup_target=config.learning_rate, warmup_steps=warmup)
    extra = {"global_clipnorm": config.grad_clip_norm or None}
    if config.ema:  # EMA weights replace the trained ones at the end of fit (Keras finalize_variable_values)
        extra |= {"use_ema": True, "ema_momentum": config.ema_momentum}
    if config.optimizer == "adam":
        optimizer = keras.optimizers.Adam(schedule, **extra)
    else:
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay, **extra)
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "embedding", "log_var"])
    loss, loss_weights = losses.compile_losses(model, list(heads), config.loss_weighting, gamma=config.gamma,
                                               label_smoothing=config.label_smoothing)
    # Top-5 where top-1 is a hard target (CIFAR-100's 100 fine classes); names log as fine_top5_accuracy.
    metrics = {h: ["accuracy"] + ([keras.metrics.TopKCategoricalAccuracy(5, name="top5_accuracy")] if n >= 100
                                  else []) for h, n in heads.items()}
    model.compile(optimizer=optimizer, loss=loss, loss_weights=loss_weights, metrics=metrics,
                  jit_compile=config.jit_compile)
    return model


def evaluate(model, test: data.Split, info: data.DatasetInfo, batch_size: int) -> dict[str, float]:
    """Test-split accuracy per head (and hierarchy consistency for a two-head model)."""
    probs = model.predict(test.images.astype(np.float32), batch_size=batch_size, verbose=0)
    preds = {name: p.argmax(-1) for name, p in probs.items()}
    metrics = {f"{name}_accuracy": float(np.mean(pred == getattr(test, name))) for name, pred in preds.items()}
    if len(preds) == 2:
        parent = np.asarray(info.fine_to_coarse)[preds["fine"]]
        metrics["hierarchy_consistency"] = float(np.mean(parent == preds["coarse"]))
    metrics["test_examples"] = len(test)
    return metrics


def export_and_check(model, config: TrainConfig, splits: data.Splits, metrics: dict) -> dict[str, str]:
    """Exports (SavedModel, ONNX, int8 ONNX), runs the parity and int8 checks into `metrics`; returns paths."""
    from mtl_keras import check_onnx, export
    from mtl_keras.flags import flagfile_text

    shape = model.input_shape[1:]
    info = splits.info
    test_images = data.fit_images(splits.test.images, shape).astype(np.float32)
    version_dir = export.export(
        model, config.export_dir, config.model_name, flags_text=flagfile_text(config),
        class_names={"fine": list(info.fine_names), "coarse": list(info.coarse_names)},
        calibration_images=data.fit_images(splits.train.images[:256], shape) if config.int8 else None,
        warmup_images=test_images[:8])
    paths = {"saved_model": str(version_dir), "onnx": str(version_dir / export.ONNX_FILE)}
    if config.int8:
        paths["onnx_int8"] = str(version_dir / export.INT8_FILE)
    if not config.check:
        return paths
    images = np.concatenate([check_onnx.random_pixels(shape, 32, config.seed), test_images[:256]])
    parity = check_onnx.check(paths["saved_model"], paths["onnx"], images, atol=1e-5)
    print(parity.table())
    metrics["onnx_parity"] = {o.name: {"max_abs_diff": o.max_abs_diff, "argmax_agreement": o.argmax_agreement}
                              for o in parity.outputs}
    metrics["onnx_parity_ok"] = parity.ok
    metrics["onnx_parity_problems"] = parity.problems
    if config.int8:
        labels = {"fine": splits.test.fine, "coarse": splits.test.coarse}
        metrics["int8"] = check_onnx.int8_accuracy_drop(paths["onnx"], paths["onnx_int8"], test_images, labels)
        for head, r in metrics["int8"].items():
            print(f"int8 {head}: test accuracy {r['fp32_accuracy']:.2%} -> {r['int8_accuracy']:.2%}")
    return paths


def run(config: TrainConfig) -> dict:
    """Runs training, evaluation, export and parity check for `config`; returns the metrics dict."""
    import keras

    from mtl_keras.flags import flagfile_text

    workdir = prepare_workdir(config.workdir)
    atomic_write_text(workdir / "flags.txt", flagfile_text(config))
    atomic_write_text(workdir / "config.json", json.dumps(dataclasses.asdict(config), indent=1) + "\n")
    keras.utils.set_random_seed(config.seed)

    splits = data.load(config.dataset, data_dir=config.data_dir, validation_fraction=config.validation_fraction,
                       max_train_examples=config.max_train_examples, seed=config.seed, download=config.download,
                       fashion_mnist_dir=config.fashion_mnist_dir)
    info, train = splits.info, splits.train
    class_names = {"fine": list(info.fine_names), "coarse": list(info.coarse_names),
                   "fine_to_coarse": list(info.fine_to_coarse)}
    atomic_write_text(workdir / "classes.json", json.dumps(class_names, indent=1) + "\n")
    if len(train) < config.batch_size:
        raise RunError(f"--batch_size={config.batch_size} exceeds the {len(train)} training examples")
    steps = len(train) // config.batch_size
    common = dict(task=config.task, batch_size=config.batch_size)
    train_ds = data.pipeline(train, info, training=True, augment=config.augment, seed=config.seed,
                             randaugment_ops=config.randaugment_ops,
                             randaugment_magnitude=config.randaugment_magnitude,
                             mixup_alpha=config.mixup_alpha, cutmix_alpha=config.cutmix_alpha, **common)
    val_ds = data.pipeline(splits.val, info, **common) if len(splits.val) else None

    input_shape = train.images.shape[1:]
    from mtl_keras import losses, reports
    from mtl_keras.models import ADAPTED_NORM, channel_stats

    norm_stats = channel_stats(train.images) if config.model in ADAPTED_NORM else None
    model = build_and_compile(config, info, input_shape, steps, norm_stats=norm_stats)
    print(f"{config.dataset}: {len(train)} train / {len(splits.val)} val / {len(splits.test)} test; "
          f"model {model.name} ({config.variant}), {model.count_params():,} parameters, task {config.task}")
    start = time.time()
    model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, steps_per_epoch=steps, verbose=2,
              callbacks=[*losses.weighting_callbacks(model, config.loss_weighting),
                         keras.callbacks.CSVLogger(str(workdir / "history.csv")),
                         reports.TensorBoardScalars(workdir / "tensorboard")])
    train_seconds = time.time() - start

    metrics = evaluate(model, splits.test, info, config.batch_size)
    metrics |= reports.write_run_reports(model, splits, workdir, config.batch_size)
    metrics["train_seconds"] = round(train_seconds, 1)
    model_path = workdir / "model.keras"
    tmp_model = workdir / ".model.tmp.keras"
    model.save(tmp_model)
    os.replace(tmp_model, model_path)

    artifacts = {"workdir": str(workdir), "model": str(model_path)}
    if config.export:
        artifacts |= export_and_check(model, config, splits, metrics)
    atomic_write_text(workdir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    artifacts["metrics"] = str(workdir / "metrics.json")

    accuracies = ", ".join(f"{k} {v:.2%}" for k, v in metrics.items() if k.endswith("_accuracy"))
    print(f"\nTest: {accuracies} (trained {train_seconds:.0f} s)")
    for name, path in artifacts.items():
        print(f"  {name:<12} {path}")
    if not metrics.get("onnx_parity_ok", True):
        raise RunError("ONNX parity check failed: " + "; ".join(metrics["onnx_parity_problems"]))
    return metrics


def main(argv: list[str]) -> None:
    from absl import logging

    from mtl_keras import flags as mtl_flags

    logging.set_verbosity(logging.WARNING)  # keep TF's INFO lines (export, tf2onnx) out of the run log
    if len(argv) > 1:
        sys.exit(f"train: unexpected arguments {argv[1:]}; flags look like --name=value")
    try:
        run(mtl_flags.to_config())
    except (data.DatasetError, RunError) as e:
        sys.exit(f"train: error: {e}")


if __name__ == "__main__":
    from absl import app

    import mtl_keras.flags  # noqa: F401  (defines the flags before absl parses argv)

    app.run(main)
