"""Trains a multi-task (or single-task) classifier, evaluates it, exports it and checks the export.

    python -m mtl_keras.train --flagfile=configs/quickstart.flags
    python -m mtl_keras.train --flagfile=configs/mtl_vit_c10.flags --data_dir=~/tensorflow_datasets

Writes WORKDIR/flags.txt (the resolved flags), history.csv, model.keras and metrics.json; exports to
EXPORT_DIR/MODEL_NAME/VERSION (SavedModel + model.onnx) and runs the onnxruntime parity check.
"""

from __future__ import annotations

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


def build_and_compile(config: TrainConfig, info: data.DatasetInfo, input_shape, steps_per_epoch: int):
    """The model for `config.task`, compiled with AdamW, warmup + cosine, per-head loss and accuracy."""
    import keras

    from mtl_keras.models import build_model

    heads = {name: n for name, n in info.num_classes.items() if config.task in ("mtl", name)}
    model = build_model(config.model, input_shape, heads, variant=config.variant, stem=config.stem,
                        image_size=config.image_size, dropout=config.dropout)
    total = config.epochs * steps_per_epoch
    warmup = min(int(config.warmup_epochs * steps_per_epoch), total - 1)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=total - warmup, warmup_target=config.learning_rate, warmup_steps=warmup)
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "embedding"])
    model.compile(
        optimizer=optimizer,
        loss={h: keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing) for h in heads},
        loss_weights=config.loss_weights(),
        metrics={h: ["accuracy"] for h in heads},
        jit_compile=config.jit_compile,
    )
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


def run(config: TrainConfig) -> dict:
    """Runs training, evaluation, export and parity check for `config`; returns the metrics dict."""
    import keras

    from mtl_keras import check_onnx, export
    from mtl_keras.flags import flagfile_text

    workdir = prepare_workdir(config.workdir)
    atomic_write_text(workdir / "flags.txt", flagfile_text(config))
    keras.utils.set_random_seed(config.seed)

    splits = data.load(config.dataset, data_dir=config.data_dir, validation_fraction=config.validation_fraction,
                       max_train_examples=config.max_train_examples, seed=config.seed, download=config.download)
    info, train = splits.info, splits.train
    if len(train) < config.batch_size:
        raise RunError(f"--batch_size={config.batch_size} exceeds the {len(train)} training examples")
    steps = len(train) // config.batch_size
    common = dict(task=config.task, batch_size=config.batch_size)
    train_ds = data.pipeline(train, info, training=True, augment=config.augment, seed=config.seed, **common)
    val_ds = data.pipeline(splits.val, info, **common) if len(splits.val) else None

    input_shape = train.images.shape[1:]
    model = build_and_compile(config, info, input_shape, steps)
    print(f"{config.dataset}: {len(train)} train / {len(splits.val)} val / {len(splits.test)} test; "
          f"model {model.name} ({config.variant}), {model.count_params():,} parameters, task {config.task}")
    start = time.time()
    model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, steps_per_epoch=steps, verbose=2,
              callbacks=[keras.callbacks.CSVLogger(str(workdir / "history.csv"))])
    train_seconds = time.time() - start

    metrics = evaluate(model, splits.test, info, config.batch_size)
    metrics["train_seconds"] = round(train_seconds, 1)
    model_path = workdir / "model.keras"
    tmp_model = workdir / ".model.tmp.keras"
    model.save(tmp_model)
    os.replace(tmp_model, model_path)

    artifacts = {"workdir": str(workdir), "model": str(model_path)}
    if config.export:
        names = {"fine": list(info.fine_names), "coarse": list(info.coarse_names)}
        version_dir = export.export(model, config.export_dir, config.model_name, class_names=names)
        artifacts |= {"saved_model": str(version_dir), "onnx": str(version_dir / export.ONNX_FILE)}
        if config.check:
            images = np.concatenate([check_onnx.random_pixels(input_shape, 32, config.seed),
                                     splits.test.images[:256].astype(np.float32)])
            parity = check_onnx.check(artifacts["saved_model"], artifacts["onnx"], images, atol=1e-5)
            print(parity.table())
            metrics["onnx_parity"] = {o.name: {"max_abs_diff": o.max_abs_diff,
                                               "argmax_agreement": o.argmax_agreement} for o in parity.outputs}
            metrics["onnx_parity_ok"] = parity.ok
    atomic_write_text(workdir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    artifacts["metrics"] = str(workdir / "metrics.json")

    accuracies = ", ".join(f"{k} {v:.2%}" for k, v in metrics.items() if k.endswith("_accuracy"))
    print(f"\nTest: {accuracies} (trained {train_seconds:.0f} s)")
    for name, path in artifacts.items():
        print(f"  {name:<12} {path}")
    if config.export and config.check and not metrics["onnx_parity_ok"]:
        raise RunError("ONNX parity check failed: " + "; ".join(parity.problems))
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
