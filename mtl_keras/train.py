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


def check_workdir(workdir: str) -> Path:
    """Raises RunError unless `workdir` is, or can be created as, a writable folder; creates nothing."""
    path = Path(workdir).expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        why = "is not a folder" if existing.exists() and not existing.is_dir() else "is not writable"
        raise RunError(f"--workdir={workdir} cannot be used: {existing} {why}")
    return path


def evaluate(truth: dict[str, np.ndarray], probs: dict[str, np.ndarray], info: data.DatasetInfo) -> dict:
    """Test metrics from labels and probabilities per head: accuracy, top-5 for 100-class heads, and
    hierarchy consistency (predicted fine class inside the predicted coarse class) for two heads."""
    preds = {name: p.argmax(-1) for name, p in probs.items()}
    metrics = {f"{name}_accuracy": float(np.mean(pred == truth[name])) for name, pred in preds.items()}
    for name, p in probs.items():
        if p.shape[-1] >= 100:  # top-5 where top-1 is a hard target (CIFAR-100's fine head)
            top5 = np.argsort(-p, axis=-1)[:, :5]
            metrics[f"{name}_top5_accuracy"] = float(np.mean((top5 == truth[name][:, None]).any(-1)))
    if len(preds) == 2:
        parent = np.asarray(info.fine_to_coarse)[preds["fine"]]
        metrics["hierarchy_consistency"] = float(np.mean(parent == preds["coarse"]))
    metrics["test_examples"] = len(next(iter(truth.values())))
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


def compute_figures(model, train_examples: int, epochs_run: int, train_seconds: float) -> dict:
    """Size and cost of this run's training: parameters, forward GFLOPs per image, images/s through fit (the
    validation passes and the first epoch's compilation included) and training GFLOPs (3 x forward per image)."""
    from mtl_keras.models.flops import forward_flops

    gflops = forward_flops(model) / 1e9
    images = train_examples * epochs_run
    return {"parameters": model.count_params(), "forward_gflops": round(gflops, 5),
            "train_examples": train_examples, "epochs_run": epochs_run,
            "train_images_per_second": round(images / train_seconds, 1) if epochs_run and train_seconds else None,
            "train_gflops": round(3 * gflops * images, 1)}


def _setup_runtime(config: TrainConfig) -> None:
    """Device split and determinism: both must happen before TensorFlow runs its first op."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    from mtl_keras import distribute

    if config.cpu_devices > 1:
        distribute.use_logical_cpus(config.cpu_devices)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()


def _fit(model, config: TrainConfig, workdir: Path, train_ds, val_ds, steps: int) -> tuple[float, int]:
    """Fits from the last checkpoint (if any) to config.epochs; returns seconds spent in fit and epochs run."""
    import keras

    from mtl_keras import losses, reports
    from mtl_keras.callbacks import Checkpoint, CheckpointError, NanGuard

    checkpoint = Checkpoint(workdir / "checkpoints", dataclasses.asdict(config))
    try:
        initial_epoch = checkpoint.restore(model)
    except CheckpointError as e:
        raise RunError(str(e)) from None
    if initial_epoch:
        print(f"Resumed from epoch {initial_epoch} ({checkpoint.state_path})")
    guard = NanGuard()
    start = time.time()
    if initial_epoch < config.epochs:
        callbacks = [guard, *losses.weighting_callbacks(model, config.loss_weighting),
                     keras.callbacks.CSVLogger(str(workdir / "history.csv"), append=initial_epoch > 0),
                     reports.TensorBoardScalars(workdir / "tensorboard"),
                     checkpoint]
        model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, initial_epoch=initial_epoch,
                  steps_per_epoch=steps, verbose=2, callbacks=callbacks)
    if guard.failure:
        epoch, step, loss = guard.failure
        kept = f"the last good checkpoint is {checkpoint.state_path}" if checkpoint.state_path.is_file() else \
            "no epoch finished, so there is no checkpoint"
        raise RunError(f"loss became {loss} at epoch {epoch}, step {step}; training stopped and {kept} "
                       "(try a lower --learning_rate or --grad_clip_norm)")
    return time.time() - start, config.epochs - initial_epoch


def _export_in_tensorflow(config: TrainConfig, workdir: Path) -> dict[str, str]:
    """Exports WORKDIR/model.keras from a TensorFlow-backend process: a SavedModel saved from JAX holds
    XlaCallModule ops that tf2onnx cannot convert, while the .keras file is backend-neutral."""
    import subprocess

    from mtl_keras import export

    model_dir = Path(config.export_dir) / config.model_name
    version = export.next_version(model_dir) if model_dir.is_dir() else 1
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    cmd = [sys.executable, "-m", "mtl_keras.export", f"--workdir={workdir}", f"--export_dir={config.export_dir}",
           f"--model_name={config.model_name}", f"--version={version}", "--int8" if config.int8 else "--noint8"]
    if subprocess.run(cmd, env=env).returncode:
        raise RunError(f"export in a TensorFlow process failed: {' '.join(cmd)}")
    version_dir = model_dir / str(version)
    if config.check:
        check = [sys.executable, "-m", "mtl_keras.check_onnx", f"--saved_model={version_dir}",
                 f"--onnx={version_dir / export.ONNX_FILE}", f"--keras_model={workdir / 'model.keras'}"]
        if subprocess.run(check, env=env).returncode:
            raise RunError(f"ONNX parity check failed: {' '.join(check)}")
    return {"saved_model": str(version_dir), "onnx": str(version_dir / export.ONNX_FILE)}


def run(config: TrainConfig) -> dict:
    """Runs training (resuming from WORKDIR/checkpoints), evaluation, export and checks; returns metrics."""
    import keras

    from mtl_keras import distribute, reports
    from mtl_keras.flags import flagfile_text
    from mtl_keras.modeling import build_and_compile, plain_copy
    from mtl_keras.models import ADAPTED_NORM, channel_stats
    from mtl_keras.models.tta import with_flip_average

    # Everything that can reject the run happens before anything is written.
    _setup_runtime(config)
    workdir = check_workdir(config.workdir)
    try:
        scope, replicas = distribute.strategy_scope(config.distribution)
    except ValueError as e:
        raise RunError(str(e)) from None
    if config.batch_size % replicas:
        raise RunError(f"--batch_size={config.batch_size} does not divide by the {replicas} replicas of "
                       f"--distribution={config.distribution}")
    splits = data.load_for(config)
    info, train = splits.info, splits.train
    if len(train) < config.batch_size:
        raise RunError(f"--batch_size={config.batch_size} exceeds the {len(train)} training examples")

    workdir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(workdir / "flags.txt", flagfile_text(config))
    atomic_write_text(workdir / "config.json", json.dumps(dataclasses.asdict(config), indent=1) + "\n")
    class_names = {"fine": list(info.fine_names), "coarse": list(info.coarse_names),
                   "fine_to_coarse": list(info.fine_to_coarse)}
    atomic_write_text(workdir / "classes.json", json.dumps(class_names, indent=1) + "\n")
    keras.utils.set_random_seed(config.seed)
    steps = len(train) // config.batch_size
    common = dict(task=config.task, batch_size=config.batch_size)
    train_ds = data.pipeline(train, info, training=True, augment=config.augment, seed=config.seed,
                             randaugment_ops=config.randaugment_ops,
                             randaugment_magnitude=config.randaugment_magnitude,
                             mixup_alpha=config.mixup_alpha, cutmix_alpha=config.cutmix_alpha, **common)
    val_ds = data.pipeline(splits.val, info, **common) if len(splits.val) else None

    input_shape = train.images.shape[1:]
    norm_stats = channel_stats(train.images) if config.model in ADAPTED_NORM else None
    compile_config = config
    if replicas > 1 and config.jit_compile and keras.backend.backend() == "tensorflow":
        # XLA cannot reach MirroredStrategy's per-replica variables on other devices (a known TF issue).
        print("note: XLA is off under tf.distribute with several replicas")
        compile_config = dataclasses.replace(config, jit_compile=False)
    with scope:
        model = build_and_compile(compile_config, info, input_shape, steps, norm_stats=norm_stats)
    print(f"{config.dataset}: {len(train)} train / {len(splits.val)} val / {len(splits.test)} test; "
          f"model {model.name} ({config.variant}), {model.count_params():,} parameters, task {config.task}, "
          f"{replicas} replica(s), {config.mixed_precision}")
    train_seconds, epochs_run = _fit(model, config, workdir, train_ds, val_ds, steps)
    # Mirrored models' predict duplicated a partial last batch here: evaluate a plain float32 copy.
    model = plain_copy(model, config, info, norm_stats, force=replicas > 1)
    if config.tta_flip:
        model = with_flip_average(model)

    truth, probs = reports.predict_split(model, splits.test, info, config.batch_size)
    metrics = evaluate(truth, probs, info)
    if len(splits.val):  # the final weights (EMA swapped in) on validation: what experiments choose gamma by
        val = evaluate(*reports.predict_split(model, splits.val, info, config.batch_size), info)
        metrics |= {f"val_{k}": v for k, v in val.items() if k.endswith("_accuracy")}
    metrics |= reports.write_run_reports(truth, probs, info, workdir)  # PNGs, per-class accuracy
    metrics["train_seconds"] = round(train_seconds, 1)
    metrics |= compute_figures(model, steps * config.batch_size, epochs_run, train_seconds)
    model_path = workdir / "model.keras"
    tmp_model = workdir / ".model.tmp.keras"
    model.save(tmp_model)
    os.replace(tmp_model, model_path)

    artifacts = {"workdir": str(workdir), "model": str(model_path)}
    if config.export and keras.backend.backend() != "tensorflow":
        artifacts |= _export_in_tensorflow(config, workdir)
    elif config.export:
        artifacts |= export_and_check(model, config, splits, metrics)
    atomic_write_text(workdir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    artifacts["metrics"] = str(workdir / "metrics.json")

    accuracies = ", ".join(f"{k} {v:.2%}" for k, v in metrics.items()
                           if k.endswith("_accuracy") and not k.startswith("val_"))
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
