"""Callbacks that make runs survive: atomic per-epoch checkpoints with resume, and a NaN/Inf loss guard."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import keras

# Config fields that change what is trained; a checkpoint made under other values must not be resumed.
_NOT_TRAINING = {"workdir", "export_dir", "model_name", "export", "int8", "check", "download", "data_dir",
                 "fashion_mnist_dir", "jit_compile", "tta_flip"}


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message names the file and what to do."""


def _write_json_atomic(path: Path, value: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


class Checkpoint(keras.callbacks.Callback):
    """Saves weights + optimizer state after every finite epoch, atomically, and restores them.

    Layout: DIR/epoch-N.weights.h5 (only the newest is kept) and DIR/state.json naming it. Each file is
    written under a temporary name and renamed, and state.json is replaced last, so a kill at any moment
    leaves the previous complete checkpoint in force.
    """

    def __init__(self, directory: str | Path, run_config: dict):
        super().__init__()
        self.directory = Path(directory)
        self.run_config = {k: v for k, v in run_config.items() if k not in _NOT_TRAINING}
        self.state_path = self.directory / "state.json"

    def restore(self, model: keras.Model) -> int:
        """Loads the newest checkpoint into `model` (and its optimizer); returns its epoch (0: none)."""
        if not self.state_path.is_file():
            return 0
        hint = f"delete {self.directory} to start the run over"
        try:
            state = json.loads(self.state_path.read_text())
            epoch, weights = int(state["epoch"]), self.directory / state["weights"]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"checkpoint {self.state_path} is corrupt ({e}); {hint}") from None
        saved = state.get("config", {})
        changed = sorted(k for k in set(saved) | set(self.run_config) if saved.get(k) != self.run_config.get(k))
        if changed:
            raise CheckpointError(f"{self.directory} holds a checkpoint of a run with other flags "
                                  f"({', '.join(changed)}); use another --workdir or {hint}")
        if not weights.is_file():
            raise CheckpointError(f"checkpoint {weights} is missing; {hint}")
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        try:
            model.load_weights(weights)
        except Exception as e:  # h5py / Keras raise many types for a damaged file
            raise CheckpointError(f"checkpoint {weights} cannot be read ({type(e).__name__}); {hint}") from None
        return epoch

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            return  # keep the last good checkpoint
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{epoch + 1}.weights.h5"
        tmp = self.directory / f".tmp-{name}"
        self.model.save_weights(tmp)
        os.replace(tmp, self.directory / name)
        _write_json_atomic(self.state_path, {"epoch": epoch + 1, "weights": name, "config": self.run_config})
        for old in self.directory.glob("epoch-*.weights.h5"):
            if old.name != name:
                old.unlink()


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
