"""`--time_budget`: train for a fixed wall-clock budget instead of a fixed number of epochs.

The learning rate follows the elapsed share of the budget, not the step count: linear warmup over the share
`warmup_epochs / epochs` of the budget, then the run's `--lr_schedule` (cosine to 0, or constant) over the
rest, so the rate reaches 0 when the budget is spent whatever the machine's speed ("Budgeted Training", Li,
Yumer and Ramanan, ICLR 2020: a schedule decaying to 0 over the budget is robust and strong). Training stops at
the first step boundary past the budget; Keras then runs that epoch's validation and the checkpoint as for any
epoch, so `--epochs` is only a cap.

The seconds spent are kept per finished epoch in CHECKPOINT_DIR/budget.json, written before the epoch's
checkpoint: a resumed run reads the entry of the epoch it resumes from and continues the same budget (the time
of an epoch killed before its checkpoint is not counted, since that epoch is trained again).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import keras

from mtl_keras import atomic

FILE = "budget.json"


def learning_rate(fraction: float, peak: float, warmup: float, schedule: str) -> float:
    """The rate at `fraction` (0-1) of the budget: linear warmup over the first `warmup` of it, then `schedule`."""
    fraction = min(max(fraction, 0.0), 1.0)
    if fraction < warmup:
        return peak * fraction / warmup
    if schedule == "constant":
        return peak
    decay = (fraction - warmup) / (1.0 - warmup) if warmup < 1.0 else 1.0
    return peak * 0.5 * (1.0 + math.cos(math.pi * decay))


def spent(directory: str | Path, epoch: int) -> tuple[float, int]:
    """(seconds of the budget spent, training steps run) by the end of finished `epoch`; (0, 0) for epoch 0 or
    a run without records."""
    path = Path(directory) / FILE
    if not epoch or not path.is_file():
        return 0.0, 0
    try:
        record = json.loads(path.read_text())[str(epoch)]
        return float(record["seconds"]), int(record["steps"])
    except (ValueError, KeyError, TypeError):
        return 0.0, 0  # a damaged record restarts the clock: the run trains longer, never loses its checkpoint


class TimeBudget(keras.callbacks.Callback):
    """Sets the learning rate from the elapsed share of `seconds` before each step and stops training once
    `seconds` are spent (counting `spent` seconds of earlier, resumed attempts).

    `steps` counts the training steps of the run (resumed attempts included) and `stopped` tells whether the
    budget ended this fit. One instance may serve several fits of a run (progressive resolution's two sizes): the
    clock runs on across them, and `until` (seconds, default the whole budget) ends a fit early at a step boundary.
    """

    def __init__(self, seconds: float, peak: float, warmup: float, schedule: str, directory: str | Path,
                 initial_epoch: int = 0):
        super().__init__()
        self.seconds, self.peak, self.warmup, self.schedule = float(seconds), peak, warmup, schedule
        self.directory = Path(directory)
        self.spent, self.steps = spent(self.directory, initial_epoch)
        self.initial_steps = self.steps
        self.stopped = False
        self.until = self.seconds
        self._start = None
        self._last_set = -math.inf

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.seconds

    def elapsed(self) -> float:
        return self.spent + (time.perf_counter() - self._start if self._start is not None else 0.0)

    def left(self) -> float:
        """The budget's seconds not yet spent."""
        return max(0.0, self.seconds - self.elapsed())

    def on_train_begin(self, logs=None) -> None:
        self._start = time.perf_counter()

    def on_train_end(self, logs=None) -> None:
        self.spent, self._start = self.elapsed(), None

    def _set_rate(self, rate: float) -> None:
        optimizer = getattr(self.model.optimizer, "inner_optimizer", self.model.optimizer)  # loss scaling wraps it
        if keras.backend.backend() == "jax":
            # JAX's fit keeps the optimizer's variables in its own state between epochs: write the state back,
            # set the rate, and mark the state stale so the next step reads the variables again.
            self.model.jax_state_sync()
            optimizer.learning_rate = rate
            self.model._jax_state_synced = True
        else:
            optimizer.learning_rate = rate

    def on_train_batch_begin(self, batch: int, logs=None) -> None:
        elapsed = self.elapsed()
        # Every step on TensorFlow (a variable assignment); on JAX, where a change costs a state sync, at most
        # every 1/1000 of the budget (a 15-minute budget: every 0.9 s).
        if keras.backend.backend() != "jax" or elapsed - self._last_set >= self.seconds / 1000:
            self._set_rate(learning_rate(elapsed / self.seconds, self.peak, self.warmup, self.schedule))
            self._last_set = elapsed

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        self.steps += 1
        elapsed = self.elapsed()
        if elapsed >= self.until:
            self.stopped = elapsed >= self.seconds
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        path = self.directory / FILE
        try:
            records = json.loads(path.read_text()) if path.is_file() else {}
        except ValueError:
            records = {}
        records[str(epoch + 1)] = {"seconds": round(self.elapsed(), 3), "steps": self.steps}
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic.write_json(path, records)
