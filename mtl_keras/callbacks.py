"""Callbacks of a training run: atomic per-epoch checkpoints with resume, a NaN/Inf loss guard, and TensorBoard
scalars (a loss weighting's own callbacks live with it, in mtl_keras/weightings/)."""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import math
import os
import sys
import traceback
from pathlib import Path

import keras

from mtl_keras import atomic
from mtl_keras import config as config_lib
from mtl_keras.errors import CheckpointError

class Checkpoint(keras.callbacks.Callback):
    """Saves weights + optimizer state after every finite epoch, atomically, and restores them.

    Layout: DIR/epoch-N.weights.h5 (only the newest is kept) and DIR/state.json naming it. Each file is
    written under a temporary name and renamed, and state.json is replaced last, so a kill at any moment
    leaves the previous complete checkpoint in force.
    """

    def __init__(self, directory: str | Path, run_config: dict, write: bool = True):
        """`run_config`: what identifies the run (`config.identity(cfg, "checkpoint")`); another run's is refused.
        `write=False`: restore only (the processes of a multi-process run other than process 0)."""
        super().__init__()
        self.write = write
        self.directory = Path(directory)
        self.run_config = dict(run_config)
        self.state_path = self.directory / "state.json"
        self.saved = None  # the model `restore` loaded into: what each epoch saves, whichever model `fit` runs

    def check(self) -> tuple[int, Path | None]:
        """The newest checkpoint's (epoch, weights file), (0, None) when none; raises CheckpointError when it
        cannot be used. Needs no model, so a run is refused before it writes any record."""
        if not self.state_path.is_file():
            return 0, None
        try:
            state = json.loads(self.state_path.read_text())
            epoch, weights = int(state["epoch"]), self.directory / state["weights"]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"checkpoint {self.state_path} is corrupt ({e}); {self._hint}") from None
        saved = state.get("config", {})
        unknown = sorted(set(saved) - set(config_lib.FIELDS)) if isinstance(saved, dict) else ["config"]
        if unknown:
            raise CheckpointError(f"{self.directory} holds a checkpoint with settings this version does not know "
                                  f"({', '.join(unknown)}); use the mtl_keras version that wrote it or {self._hint}")
        # This run's settings only: a setting the saved run did not record (an older version) reads as the value
        # that reproduces that version; one whose role changed since (no longer identifying) is not compared.
        saved = config_lib.with_absent(saved)
        changed = sorted(k for k in self.run_config if saved.get(k, config_lib.ABSENT) != self.run_config[k])
        if changed:
            raise CheckpointError(f"{self.directory} holds a checkpoint of a run with other flags "
                                  f"({', '.join(changed)}); use another --workdir or {self._hint}")
        if not weights.is_file():
            raise CheckpointError(f"checkpoint {weights} is missing; {self._hint}")
        return epoch, weights

    @property
    def _hint(self) -> str:
        return f"delete {self.directory} to start the run over"

    def restore(self, model: keras.Model) -> int:
        """Loads the newest checkpoint into `model` (and its optimizer); returns its epoch (0: none)."""
        self.saved = model
        epoch, weights = self.check()
        if not epoch:
            return 0
        hint = self._hint
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        try:
            model.load_weights(weights)
        except Exception as e:  # h5py / Keras raise many types for a damaged file
            raise CheckpointError(f"checkpoint {weights} cannot be read ({type(e).__name__}); {hint}") from None
        return epoch

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if not self.write or loss is not None and not math.isfinite(float(loss)):
            return  # keep the last good checkpoint
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{epoch + 1}.weights.h5"
        tmp = self.directory / f".tmp-{name}"
        try:
            with _without_mesh(), disk_full_names(self.directory / name):
                (self.saved or self.model).save_weights(tmp)
            os.replace(tmp, self.directory / name)
        except BaseException:  # a full disk: no half-written file left beside the last good checkpoint
            tmp.unlink(missing_ok=True)
            raise
        atomic.write_json(self.state_path, {"epoch": epoch + 1, "weights": name, "config": self.run_config})
        for old in self.directory.glob("epoch-*.weights.h5"):
            if old.name != name:
                old.unlink()


@contextlib.contextmanager
def disk_full_names(path: Path):
    """A full disk inside the block as one OSError(ENOSPC) naming `path` (TensorFlow's and h5py's errors carry
    the system's message, no file name). On a real full tmpfs each of a half-written file's h5py objects failed
    its flush again when freed, and Cython printed each failure twice (through sys.excepthook, then as
    "Exception ignored in ... __dealloc__"): 120 tracebacks before the error line. Here they are freed inside
    the block (the failed write's frames cleared, then a collection) while both hooks drop reports of a full
    disk; other reports pass through."""
    full = os.strerror(errno.ENOSPC)
    dropped = []
    hooks = sys.unraisablehook, sys.excepthook

    def unraisable_hook(unraisable):
        if full in str(unraisable.exc_value):
            dropped.append(unraisable.exc_type)
        else:
            hooks[0](unraisable)

    def except_hook(kind, value, tb):  # Cython's __dealloc__ prints each traceback through it first
        if full in str(value):
            dropped.append(kind)
        else:
            hooks[1](kind, value, tb)

    sys.unraisablehook, sys.excepthook = unraisable_hook, except_hook
    disk_full = False
    try:
        try:
            yield
        except Exception as e:  # h5py raises RuntimeError / OSError with the system's message, no errno
            if getattr(e, "errno", None) != errno.ENOSPC and full not in str(e):
                raise
            chain = e
            while chain is not None:  # its frames, and those of the errors it happened in, hold the objects
                traceback.clear_frames(chain.__traceback__)
                chain.__traceback__ = None
                chain = chain.__context__
            disk_full = True
        gc.collect()
    finally:
        sys.unraisablehook, sys.excepthook = hooks
    if disk_full or dropped:  # raised here, outside the except: no __context__ keeps the objects alive
        raise OSError(errno.ENOSPC, full, str(path))


@contextlib.contextmanager
def _without_mesh():
    """No keras.distribution for the block: saving builds a throwaway optimizer, whose variable would be a
    collective over a multi-process mesh that only process 0 (the writer) joins, and wait forever."""
    current = keras.distribution.distribution()
    if current is not None:
        keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        if current is not None:
            keras.distribution.set_distribution(current)


def trim_history(path: str | Path, epochs: int) -> None:
    """Keeps the header of CSVLogger's file and its complete rows of the first `epochs` epochs, each once.

    CSVLogger writes an epoch's row before Checkpoint saves that epoch (so a checkpointed epoch always has its
    row); a kill between the two resumes from the epoch before, which trains and logs the epoch again. Called
    before a resumed fit appends, this drops such rows (and a row cut by the kill) instead of repeating them.
    """
    path = Path(path)
    if not path.is_file():
        return
    with open(path, newline="") as f:
        lines = f.readlines()
    kept, seen = lines[:1], set()
    for line in lines[1:]:
        epoch = line.split(",", 1)[0]
        if line.endswith("\n") and epoch.isdigit() and int(epoch) < epochs and epoch not in seen:
            seen.add(epoch)
            kept.append(line)
    if kept != lines:
        atomic.write_text(path, "".join(kept))


class NanGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite loss and remembers where (1-based epoch and step)."""

    def __init__(self):
        super().__init__()
        self.epoch = 0
        self.failure: tuple[int, int, float] | None = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.failure = (self.epoch + 1, batch + 1, float(loss))
            self.model.stop_training = True


class FailedValueGuard(keras.callbacks.Callback):
    """Raises the error of an epoch's logged value whose computation failed, before any other callback reads it.

    Keras turns every logged value into a float and keeps, as it is, one it could not convert
    (`pythonify_logs`). On JAX a step whose collective lost its peer leaves such values: each one raises the
    collective's error when read, but CSVLogger iterates over it first and fails with an unrelated TypeError,
    which would hide the lost peer. Goes first in the callback list.
    """

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        import numpy as np

        for value in (logs or {}).values():
            if not isinstance(value, (int, float, str)):
                np.asarray(value)  # a value whose computation failed raises that failure here


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
        if self._writers is None:
            return
        try:
            import tensorflow as tf
            from tensorflow.core.framework import summary_pb2
        except ImportError:  # a run without TensorFlow (host input pipeline): history.csv has the same values
            print(f"note: no TensorBoard scalars in {self.log_dir}: they are written with TensorFlow, which is not "
                  "installed here (history.csv has them)")
            self._writers = None
            return

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
        for writer in (self._writers or {}).values():
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
