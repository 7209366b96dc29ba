"""Trains a multi-task (or single-task) classifier, evaluates it, exports it and checks the export.

    mtl-keras train --config=quickstart                  (or python -m mtl_keras.train --config=quickstart)
    mtl-keras train --config=mtl_vit_c10 --data_dir=~/tensorflow_datasets
    mtl-keras train --config=my_run.flags --epochs=3     (a flagfile; `mtl-keras configs copy` makes one)

Writes WORKDIR/flags.txt (the resolved flags), history.csv, model.keras and metrics.json; exports to
EXPORT_DIR/MODEL_NAME/VERSION (SavedModel + model.onnx) and runs the onnxruntime parity check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gc
import json
import os
import sys
import time
from pathlib import Path

from mtl_keras import atomic, evaluate
from mtl_keras.data import datasets, feeds
from mtl_keras import config as config_lib
from mtl_keras.config import OptimConfig, ServingConfig, TrainConfig
from mtl_keras.errors import MtlError, RunError, interrupted, report
from mtl_keras.run_checks import check_hierarchy_heads, check_same_classes, class_names


def check_workdir(workdir: str, flag: str = "workdir") -> Path:
    """Raises RunError unless `workdir` (the value of --`flag`) is, or can be created as, a writable folder;
    creates nothing."""
    path = Path(workdir).expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():  # mkdir would fail on it with FileExistsError, after the checks
            raise RunError(f"--{flag}={workdir} cannot be used: {existing} is a symbolic link to "
                           f"{os.readlink(existing)}, which does not exist")
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        why = "is not a folder" if existing.exists() and not existing.is_dir() else "is not writable"
        raise RunError(f"--{flag}={workdir} cannot be used: {existing} {why}")
    return path


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def disk_full_is_one_line(workdir: Path):
    """Turns a full disk (or quota) while the block writes into one RunError line; h5py reports it with no errno,
    only the system's message."""
    try:
        yield
    except Exception as e:  # OSError; h5py's and TensorFlow's (ResourceExhaustedError) carry only the message
        if getattr(e, "errno", None) not in DISK_FULL and os.strerror(errno.ENOSPC) not in str(e):
            raise
        where = getattr(e, "filename", None) or workdir
        resume = "it resumes from the last finished epoch" if (workdir / "checkpoints" / "state.json").is_file() \
            else "no epoch has a checkpoint yet, so it starts over"
        raise DiskFull(f"no space left on the device writing {where}; free some space and rerun the same "
                       f"command: {resume}") from None


class DiskFull(RunError):
    """A full disk: reported in one line, then the process ends at once (h5py's objects, half-written, printed
    dozens of tracebacks while Python shut down, then crashed it)."""


def save_model(model, path: Path) -> Path:
    """Saves `model` to `path` through a hidden temporary file and a rename; a failed save (a full disk) leaves
    no temporary file and is one RunError line (the trained weights are still in the last checkpoint)."""
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RunError(f"{path} could not be written ({e.strerror or e}); the trained weights are in the last "
                       "checkpoint: free some space and rerun the same command, which resumes there") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def compute_figures(model, train_examples: int, epochs_run: int, train_seconds: float,
                    images: int | None = None) -> dict:
    """Size and cost of this run's training: parameters, forward GFLOPs per image, images/s through fit (the
    validation passes and the first epoch's compilation included) and training GFLOPs (3 x forward per image).
    `images`: the images trained on, when not whole epochs of `train_examples` (a run under --time_budget)."""
    from mtl_keras.models.flops import forward_flops

    gflops = forward_flops(model) / 1e9
    images = train_examples * epochs_run if images is None else images
    return {"parameters": model.count_params(), "forward_gflops": round(gflops, 5),
            "train_examples": train_examples, "epochs_run": epochs_run,
            "train_images_per_second": round(images / train_seconds, 1) if epochs_run and train_seconds else None,
            "train_gflops": round(3 * gflops * images, 1)}


def _setup_runtime(optim: OptimConfig) -> None:
    """Device split and determinism: both must happen before TensorFlow runs its first op."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    from mtl_keras import distribute

    if optim.cpu_devices > 1:
        distribute.use_logical_cpus(optim.cpu_devices)
    if optim.deterministic:
        tf.config.experimental.enable_op_determinism()


def pipelines(config: TrainConfig, splits, shard: tuple[int, int] = (0, 1), start_step: int = 0):
    """The run's (training, validation or None) batches from its input pipeline (data/feeds.py). `shard`: this
    process's slice of each global batch (a multi-process run); `start_step`: the first training batch (a fit
    from epoch E starts at E * steps per epoch, so a resumed run trains on the batches it would have had)."""
    return feeds.fit_feeds(config.data, splits, task=config.model.task, batch_size=config.optim.batch_size,
                           seed=config.run.seed, shard=shard, start_step=start_step)


def _build_before_tracing(model, train_ds) -> None:
    """Creates the optimizer's, compiled losses' and metrics' variables from the batches' spec before fit. Keras
    on TensorFlow without a tf.distribute strategy leaves them to the first trace of the training step, and
    TensorFlow then traces the whole step a second time (seconds per run, more than a small model's epoch)."""
    import keras

    # Under a strategy fit builds them itself, in the strategy's scope.
    if keras.backend.backend() == "tensorflow" and not model._distribute_strategy and hasattr(train_ds,
                                                                                               "element_spec"):
        model._symbolic_build(data_batch=train_ds.element_spec)


def _phases(model, config: TrainConfig, num_classes, initial_epoch: int, budget) -> list[tuple]:
    """(model to fit, last epoch, seconds of the budget where the fit stops) for each part of training still to
    run: one, or under --progressive_size the same weights at the smaller size first (modeling.at_resolution)."""
    from mtl_keras.modeling import at_resolution, compile_model

    optim = config.optim
    whole = [(model, optim.epochs, budget.seconds if budget else None)]
    if not optim.progressive_size:
        return whole
    if budget:
        if budget.spent >= optim.progressive_share * budget.seconds:
            return whole
        switch = (optim.epochs, optim.progressive_share * budget.seconds)
    else:
        switch = (round(optim.progressive_share * optim.epochs), None)
        if initial_epoch >= switch[0]:
            return whole
    small = at_resolution(model, optim.progressive_size)
    compile_model(small, config.model, optim, num_classes, model.optimizer)
    return [(small, *switch), *whole]


def _smaller_size_gflops_saved(config: TrainConfig, info, forward_gflops: float, images_at_size: int) -> float:
    """Training GFLOPs that counting the images trained under --progressive_size at the full size overstates:
    3 x (full - smaller forward) per image, the smaller size's forward pass counted on the same architecture
    built at that size."""
    from mtl_keras.modeling import build
    from mtl_keras.models.flops import forward_flops

    size = config.optim.progressive_size
    small = forward_flops(build(config.model, info.num_classes, (size, size, 3), optim=config.optim,
                                fine_to_coarse=info.fine_to_coarse)) / 1e9
    return 3 * (forward_gflops - small) * images_at_size


def _epochs_at_size(optim, checkpoints: Path, finished: int) -> int | None:
    """For a run resumed after the switch of --progressive_size: the epochs its earlier attempts ran at the smaller
    size. By epochs, the switch's epoch; under a budget, the first finished epoch whose recorded seconds reach the
    budget's share (the smaller fit stops in that epoch); None where the records do not say."""
    from mtl_keras import budget

    if not optim.time_budget:
        return round(optim.progressive_share * optim.epochs)
    until = optim.progressive_share * optim.time_budget
    return next((e for e in range(1, finished + 1) if budget.spent(checkpoints, e)[0] >= until), None)


def _fit(model, config: TrainConfig, workdir: Path, feeds_from, steps: int, checkpoint,
         initial_epoch: int, num_classes) -> tuple[float, int, dict]:
    """Fits from `initial_epoch` (restored from `checkpoint`) to --epochs or the end of --time_budget; returns
    seconds spent in fit, epochs run and records for metrics.json (the time budget's, progressive resolution's).
    `feeds_from(start_step)`: the (training, validation) batches of a fit whose first step is `start_step`."""
    import keras

    from mtl_keras import console, losses
    from mtl_keras.budget import TimeBudget
    from mtl_keras.callbacks import FailedValueGuard, NanGuard, TensorBoardScalars, trim_history
    from mtl_keras.modeling import free_input_shapes

    if initial_epoch:
        print(f"Resumed from epoch {initial_epoch} ({checkpoint.state_path})")
        trim_history(workdir / "history.csv", initial_epoch)  # rows logged after the checkpoint go
    guard = NanGuard()
    start = time.time()
    optim = config.optim
    epochs = optim.epochs
    budget = None
    if optim.time_budget:
        budget = TimeBudget(optim.time_budget, optim.learning_rate, optim.warmup_epochs / epochs, optim.lr_schedule,
                            workdir / "checkpoints", initial_epoch)
        if initial_epoch and budget.exhausted:
            print(f"--time_budget={optim.time_budget:g} s was spent by epoch {initial_epoch}: nothing left to train")
    epochs_done = initial_epoch
    records = {}
    verbose = console.fit_verbosity()  # a progress bar on a terminal, else a line per epoch and its clock
    clock = console.epoch_clock(epochs, initial_epoch, budget.left if budget else None)  # one for every fit of the run
    at_size = None  # (epochs done, images trained in this attempt) when the smaller size ran
    for fit_model, last_epoch, until in _phases(model, config, num_classes, initial_epoch, budget):
        if epochs_done >= last_epoch or budget and budget.exhausted or guard.failure:
            continue
        if budget:
            budget.until = until
        smaller = fit_model is not model
        if smaller:
            print(f"progressive resolution: {optim.progressive_size} x {optim.progressive_size} px until "
                  + (f"{until:g} s of the budget" if budget else f"epoch {last_epoch}") + ", then full size")
        # In this order: the epoch's row is written before its checkpoint, so no checkpointed epoch lacks a row
        # (a kill between the two leaves a row that the resumed run trims, see trim_history); the budget's
        # seconds are recorded before the checkpoint too (budget.py).
        callbacks = [FailedValueGuard(), guard, *([budget] if budget else []),
                     *losses.weighting_callbacks(model, config.optim.loss_weighting),
                     keras.callbacks.CSVLogger(str(workdir / "history.csv"), append=epochs_done > 0),
                     TensorBoardScalars(workdir / "tensorboard"),
                     checkpoint]
        callbacks += clock if verbose == 2 else []
        steps_before = budget.steps if budget else 0
        train_ds, val_ds = feeds_from(epochs_done * steps)  # each fit goes on with the run's batch stream
        with free_input_shapes(model) if smaller else contextlib.nullcontext():
            _build_before_tracing(fit_model, train_ds)
            # shuffle=False: the tf.data pipeline shuffles; Keras would only warn that it ignores shuffle=True.
            history = fit_model.fit(train_ds, validation_data=val_ds, epochs=last_epoch, initial_epoch=epochs_done,
                                    steps_per_epoch=steps, verbose=verbose, callbacks=callbacks, shuffle=False)
        epochs_done += len(history.epoch)
        if smaller:
            steps_at_size = budget.steps - steps_before if budget else len(history.epoch) * steps
            at_size = (epochs_done, steps_at_size * optim.batch_size)
    if optim.progressive_size:  # without a smaller fit in this attempt it resumed after the switch
        epochs_at_size, images_at_size = at_size or (
            _epochs_at_size(optim, workdir / "checkpoints", initial_epoch), 0)
        records["progressive"] = {"size": optim.progressive_size, "share": optim.progressive_share,
                                  "epochs_at_size": epochs_at_size, "images_at_size": images_at_size}
    if guard.failure:
        epoch, step, loss = guard.failure
        kept = f"the last good checkpoint is {checkpoint.state_path}" if checkpoint.state_path.is_file() else \
            "no epoch finished, so there is no checkpoint"
        raise RunError(f"loss became {loss} at epoch {epoch}, step {step}; training stopped and {kept} "
                       "(try a lower --learning_rate or --grad_clip_norm)")
    seconds, epochs_run = time.time() - start, epochs_done - initial_epoch
    if budget is None:
        return seconds, epochs_run, records
    if budget.stopped:
        print(f"--time_budget={optim.time_budget:g} s spent: stopped after {budget.steps} steps in epoch {epochs_done}")
    return seconds, epochs_run, records | {
        "time_budget": {"seconds": optim.time_budget, "spent": round(budget.elapsed(), 1), "epochs": epochs_done,
                        "steps": budget.steps, "steps_this_attempt": budget.steps - budget.initial_steps,
                        "stopped_by_budget": budget.stopped}}


def _export(model, serving: ServingConfig, workdir: Path, splits) -> dict:
    """`serving.runs.export_run` on this run: in-process on TensorFlow; on another backend in a
    TensorFlow-backend `python -m mtl_keras.export` (a SavedModel saved from JAX holds XlaCallModule ops
    that tf2onnx cannot convert), whose JSON result is read back. Same artifacts and checks either way."""
    import keras

    settings = {k: v for k, v in dataclasses.asdict(serving).items() if k != "export"}
    if not feeds.tensorflow_installed():  # the export and its checks are TensorFlow programs
        print(f"export skipped: TensorFlow is not installed here; run `python -m mtl_keras.export "
              f"--workdir={workdir}` where it is")
        return {"artifacts": {}, "metrics": {}}
    if keras.backend.backend() == "tensorflow":
        from mtl_keras.callbacks import disk_full_names
        from mtl_keras.serving.runs import export_run

        with disk_full_names(Path(serving.export_dir).expanduser()):  # else the error names the workdir
            return export_run(workdir, model=model, splits=splits, **settings)
    import subprocess

    result_file = workdir / ".export_result.json"
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "mtl_keras.export", f"--workdir={workdir}", f"--result_json={result_file}",
           *(f"--{k}={v}" if not isinstance(v, bool) else f"--{'' if v else 'no'}{k}" for k, v in settings.items())]
    proc = subprocess.run(cmd, env={**os.environ, "KERAS_BACKEND": "tensorflow"})
    if not result_file.is_file():
        raise RunError(f"export in a TensorFlow process failed (exit status {proc.returncode}): {' '.join(cmd)}")
    result = json.loads(result_file.read_text())
    result_file.unlink()
    return result


def run(config: TrainConfig) -> dict:
    """Runs training (resuming from WORKDIR/checkpoints), evaluation, export and checks; returns metrics."""
    from mtl_keras import distribute, processes
    from mtl_keras.callbacks import Checkpoint
    from mtl_keras.locks import refuse_links, workdir_lock

    # Everything that can reject the run happens before anything is written.
    data, optim, seed = config.data, config.optim, config.run.seed
    feeds.check(data)  # the input pipeline exists here and implements what the flags ask
    _setup_runtime(optim)
    workdir = check_workdir(config.run.workdir)
    if config.serving.export:  # found only after training, it lost the run's metrics.json
        model_dir = check_workdir(config.serving.export_dir, "export_dir") / config.serving.model_name
        if model_dir.is_symlink() and not model_dir.exists() or model_dir.exists() and not model_dir.is_dir():
            raise RunError(f"--model_name={config.serving.model_name} cannot be used: {model_dir} is not a folder")
    try:
        scope, replicas = distribute.strategy_scope(optim.distribution, optim)
    except ValueError as e:
        raise RunError(str(e)) from None
    if optim.batch_size % replicas:
        raise RunError(f"--batch_size={optim.batch_size} does not divide by the {replicas} replicas of "
                       f"--distribution={optim.distribution}")
    splits = datasets.prepare(data, seed)
    train = splits.train
    evaluate.check_validation(config.model, len(splits.val), config_lib.ModelConfig.hedge_target)
    size = optim.progressive_size
    if size and not size < min(train.images.shape[1:3]):
        raise RunError(f"--progressive_size={size} must be below the images' size {train.images.shape[1]} x "
                       f"{train.images.shape[2]} (it is the smaller size trained first)")
    if size and replicas > 1:
        raise RunError(f"--progressive_size trains on one device, not the {replicas} replicas of "
                       f"--distribution={optim.distribution}: use --distribution=none")
    if len(train) < optim.batch_size:
        raise RunError(f"--batch_size={optim.batch_size} exceeds the {len(train)} training examples")
    if not len(splits.test):  # found after training, it crashed the test pass and lost the model
        raise RunError(f"--dataset={data.dataset} has no test images ({len(train)} train / {len(splits.val)} "
                       "validation): give it more images per class (--folder_test_fraction carves the test split "
                       "per class) or a test split (ROOT/test, a CSV split column)")
    check_hierarchy_heads(config.model.coarse_head, splits.info)
    if Checkpoint(workdir / "checkpoints", config_lib.identity(config, "checkpoint")).check()[0]:  # another run's?
        check_same_classes(workdir, splits.info)
    if workdir.is_dir():
        refuse_links(workdir, f"--workdir={config.run.workdir}")

    workdir = processes.own_folder(workdir)  # process K > 0 of a multi-process run: its scratch folder
    workdir.mkdir(parents=True, exist_ok=True)
    with workdir_lock(workdir, f"--workdir={config.run.workdir}"), disk_full_is_one_line(workdir):
        return _run_locked(config, workdir, splits, scope, replicas)


def _run_locked(config: TrainConfig, workdir: Path, splits, scope, replicas: int) -> dict:
    """`run` once its checks passed and it holds the workdir: records, fit, evaluate, save, export."""
    import keras

    from mtl_keras import processes, reports
    from mtl_keras.callbacks import Checkpoint
    from mtl_keras.flags import flagfile_text
    from mtl_keras.modeling import build_and_compile, plain_copy
    from mtl_keras.models import ADAPTED_NORM, whiten
    from mtl_keras.models.preprocess import channel_stats
    from mtl_keras.models.tta import with_flip_average

    data, optim, seed = config.data, config.optim, config.run.seed
    info, train = splits.info, splits.train
    keras.utils.set_random_seed(seed)
    steps = len(train) // optim.batch_size

    input_shape = train.images.shape[1:]
    norm_stats = channel_stats(train.images) if config.model.model in ADAPTED_NORM else None
    stem_sample = whiten.sample(train.images, seed) if config.model.stem_init == "whitened" else None
    compile_optim = optim
    if replicas > 1 and optim.jit_compile and keras.backend.backend() == "tensorflow":
        # XLA cannot reach MirroredStrategy's per-replica variables on other devices (a known TF issue).
        print("note: XLA is off under tf.distribute with several replicas")
        compile_optim = dataclasses.replace(optim, jit_compile=False)
    with scope:
        model = build_and_compile(config.model, compile_optim, info.num_classes, input_shape, steps, norm_stats,
                                  fine_to_coarse=info.fine_to_coarse, stem_sample=stem_sample)
    labelled = {h: int((getattr(train, h) >= 0).sum()) for h in ("fine", "coarse")}
    if min(labelled.values()) < len(train):  # partial labels: each head trains on its labelled images only
        print("partial labels: " + ", ".join(f"{n} of {len(train)} training images have a {h} label"
                                             for h, n in labelled.items()))
    print(f"{data.dataset}: {len(train)} train / {len(splits.val)} val / {len(splits.test)} test; "
          f"model {model.name} ({config.model.variant}), {model.count_params():,} parameters, task "
          f"{config.model.task}, {replicas} replica(s), {optim.mixed_precision}")
    # Every process resumes from process 0's checkpoints; only process 0 writes them.
    checkpoint = Checkpoint(Path(config.run.workdir).expanduser() / "checkpoints",
                            config_lib.identity(config, "checkpoint"), write=processes.is_primary())
    initial_epoch = checkpoint.restore(model)  # CheckpointError: one line for the user
    processes.same_everywhere(initial_epoch, "the checkpoint epoch to resume from")
    # The first fit's batches now: what the input pipeline refuses, it refuses before the records are written.
    made = {initial_epoch * steps: pipelines(config, splits, processes.shard(), initial_epoch * steps)}

    def feeds_from(start_step: int):
        return made.pop(start_step) if start_step in made else pipelines(config, splits, processes.shard(),
                                                                          start_step)
    # The records only once nothing can refuse the run: a refused rerun once rewrote classes.json for the
    # checkpoint's model, and predict named a dog "cow".
    atomic.write_text(workdir / "flags.txt", flagfile_text(config))
    atomic.write_text(workdir / "config.json", json.dumps(config_lib.flat(config), indent=1) + "\n")
    atomic.write_text(workdir / "classes.json", json.dumps(class_names(info), indent=1) + "\n")
    train_seconds, epochs_run, fit_records = _fit(model, config, workdir, feeds_from, steps, checkpoint,
                                                  initial_epoch, info.num_classes)
    group = processes.active()
    if group:  # every process's weights digest; then process 0 goes on alone
        digests = processes.finish(model)
        print(f"weights sha256 {digests[0][:16]}... identical in all {group.num_processes} processes")
        if group.process_id:
            return {"process_id": group.process_id, "weights_sha256": digests[group.process_id]}
    # Mirrored models' predict duplicated a partial last batch here: evaluate a plain float32 copy.
    model = plain_copy(model, config.model, info.num_classes, norm_stats, optim=optim,
                       fine_to_coarse=info.fine_to_coarse, force=replicas > 1)
    if config.model.tta_flip:  # the flipped-view average is what is evaluated, saved and exported
        model = with_flip_average(model)
    model_path = save_model(model, workdir / "model.keras")  # first: nothing after fit may lose the model
    # Temperature (--calibrate) and hedge threshold from validation images; they travel in classes.json.
    model, decoding, calibration, val_pass = evaluate.fit_on_validation(model, splits, info, config.model,
                                                                        optim.batch_size, data.input_pipeline)
    if "temperature" in decoding:
        model_path = save_model(model, workdir / "model.keras")
    if decoding:
        atomic.write_text(workdir / "classes.json", json.dumps(class_names(info) | decoding, indent=1) + "\n")

    # the one test pass
    truth, probs = evaluate.predict_split(model, splits.test, info, optim.batch_size, data.input_pipeline)
    consistent = config.model.coarse_head != "learned"  # hierarchy-aware heads predict a consistent pair
    metrics = evaluate.test_metrics(truth, probs, info, consistent) | calibration
    metrics |= evaluate.trust_metrics(truth, probs, info, consistent, decoding)
    if val_pass:  # the final weights (EMA swapped in) on validation: what experiments choose gamma by
        val = evaluate.accuracy_metrics(*val_pass, info, consistent)
        metrics |= {f"val_{k}": v for k, v in val.items() if k.endswith("_accuracy")}
    reports.write_run_reports(truth, evaluate.predicted_classes(probs, info, consistent), info, workdir)
    reports.write_trust_reports(truth, probs, info, consistent, decoding, workdir)
    metrics["train_labelled"] = labelled
    if group:
        metrics |= {"processes": group.num_processes, "weights_sha256": digests}
    metrics["train_seconds"] = round(train_seconds, 1)
    budget = fit_records.get("time_budget")
    trained = budget["steps_this_attempt"] * optim.batch_size if budget else None
    metrics |= compute_figures(model, steps * optim.batch_size, epochs_run, train_seconds, trained) | fit_records
    if optim.progressive_size:  # forward_gflops is the full size's; the images trained at the smaller size cost less
        metrics["train_gflops"] = round(metrics["train_gflops"] - _smaller_size_gflops_saved(
            config, info, metrics["forward_gflops"], metrics["progressive"]["images_at_size"]), 1)
    evaluate.save_predictions(workdir, truth, probs, info, consistent)  # after model.keras: experiments check order

    artifacts = {"workdir": str(workdir), "model": str(model_path)}
    if config.serving.export:  # the metrics so far first: an export that fails (a full disk) leaves them
        atomic.write_text(workdir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        exported = _export(model, config.serving, workdir, splits)
        artifacts |= exported["artifacts"]
        metrics |= exported["metrics"]
    atomic.write_text(workdir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    artifacts["metrics"] = str(workdir / "metrics.json")

    accuracies = ", ".join(f"{k} {v:.2%}" for k, v in metrics.items()
                           if k.endswith("_accuracy") and not k.startswith("val_") and v is not None)
    print(f"\nTest: {accuracies} (trained {train_seconds:.0f} s)")
    for name, path in artifacts.items():
        print(f"  {name:<12} {path}")
    if not metrics.get("onnx_parity_ok", True):
        raise RunError("ONNX parity check failed: " + "; ".join(metrics["onnx_parity_problems"]))
    return metrics


def freeze_imported() -> None:
    """Imports Keras, its backend framework and the models with the garbage collector paused, collects once, and
    moves every object then alive (about 400,000 after TensorFlow's import) to the collector's permanent
    generation, so that no full collection of the run walks the frameworks again: one follows every checkpoint
    write (callbacks.disk_full_names), 0.15 s each. The package's own pause (console.
    pause_collector_in_framework_imports) ends with the framework's import, and the collections right after it
    walk those objects again: relying on it alone cost 0.4 CPU-seconds more here (3.05-3.31 against 2.68-2.86,
    three alternating runs). `benchmarks/startup.py`: 3.54 CPU-seconds for `import tensorflow, keras`, 2.78
    for this. The command lines call it once, before any run starts, so that nothing a run makes is frozen (the
    experiment runner trains run after run in one process)."""
    paused = gc.isenabled()
    gc.disable()
    try:
        import keras  # noqa: F401  (and with it TensorFlow or JAX)

        import mtl_keras.models  # noqa: F401
    finally:
        if paused:
            gc.enable()
    gc.collect()
    gc.freeze()


def main(argv: list[str]) -> None:
    from absl import flags, logging

    from mtl_keras import console, processes
    from mtl_keras import flags as mtl_flags

    logging.set_verbosity(logging.WARNING)  # keep TF's INFO lines (export, tf2onnx) out of the run log
    if len(argv) > 1:
        sys.exit(f"train: unexpected arguments {argv[1:]}; flags look like --name=value")
    config = mtl_flags.to_config(flags.FLAGS)
    if processes.is_child():
        processes.follow_parent()
    elif config.optim.distribution == "multi_worker" and processes.keras_backend() == "jax":
        # The supervising parent loads no Keras: it starts the child that does the work, and waits.
        try:  # the work runs in a child process, so a native abort (lost coordinator) still ends in one line
            sys.exit(processes.supervise("train", processes.resolve(config.optim)))
        except MtlError as e:
            sys.exit(report("train", e))
    freeze_imported()
    if not processes.is_child():
        print(console.hardware_line(), flush=True)
    try:
        run(config)
    except KeyboardInterrupt:
        sys.exit(interrupted("train", "rerun the same command to resume from the last finished epoch"))
    except Exception as e:  # in a process group, exit without JAX's shutdown barrier (it waits for the peers)
        error = e if isinstance(e, MtlError) else processes.lost_peer(e)
        if error is None and not processes.active():
            raise
        if error is None:
            import traceback

            traceback.print_exc()
        status = report("train", error) if error is not None else 1
        if isinstance(e, DiskFull):
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)  # skip the finalizers of the half-written HDF5 file
        processes.exit_now(status) if processes.active() else sys.exit(status)
    if processes.active():
        processes.exit_now(0)


def cli(argv: list[str] | None = None) -> None:
    """`mtl-keras train` and `python -m mtl_keras.train`."""
    from absl import app, flags

    from mtl_keras import flags as mtl_flags

    mtl_flags.define_train_flags(flags.FLAGS)
    mtl_flags.adopt_for_help(flags.FLAGS)  # --help lists these (only train's are defined in this process)
    app.run(main, argv=argv, flags_parser=mtl_flags.parser_exiting_in_one_line("train"))


if __name__ == "__main__":
    cli()
