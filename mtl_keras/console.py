"""What a user sees on the console: a quiet start, one line saying what hardware was found, time per epoch.

TensorFlow's C++ start-up lines (oneDNN notices, CUDA probes, `failed call to cuInit` on a machine without a
GPU, absl's "All log messages before absl::InitializeLog()") come before any flag is read and say nothing about
the user's run. `quiet_native_logs`, run when the package is imported, raises TF_CPP_MIN_LOG_LEVEL to 3 (errors
only go through as Python exceptions) and drops those lines from the `import tensorflow` that prints them:
its standard error is read from a temporary file and every other line is written on. The user keeps them all
by setting TF_CPP_MIN_LOG_LEVEL or passing --verbose. Stdlib only (imported by mtl_keras/__init__.py).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
import time

# The start-up lines of `import tensorflow` (and of the CUDA probes) that concern no run: absl's notice, and
# INFO / WARNING / ERROR records of TensorFlow's C++ logging (`I0000 00:00:... file.cc:NN] ...`).
NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IWE]\d{4} [\d:.]+ +\d+ \S+:\d+\] )")


def _wanted(argv: list[str]) -> bool:
    return "TF_CPP_MIN_LOG_LEVEL" not in os.environ and "--verbose" not in argv


@contextlib.contextmanager
def filtered_stderr():
    """Standard error (file descriptor 2, where C++ writes) of the block, less the NOISE lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                    if not NOISE.match(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Runs the first `import tensorflow`, whoever makes it (keras, tf.data, a test), inside `filtered_stderr`."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once; and find_spec below must not find this finder again
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            with filtered_stderr():
                run(module)

        spec.loader.exec_module = exec_module
        return spec


class _PausedCollectorImport(importlib.abc.MetaPathFinder):
    """Runs the first import of a framework (TensorFlow, JAX, Keras, whichever comes first and imports the
    others) with the garbage collector paused. Such an import makes some 400,000 objects, and with the collector
    on it ran about 900 collections, 6 of them full ones over an ever larger heap: `import tensorflow, keras`
    took 3.4-4.5 CPU-seconds, 3.0-3.5 through this package (BUILD_NOTES.md, "Start-up time"). What the import
    leaves as garbage is collected once it is done."""

    NAMES = ("tensorflow", "jax", "keras")

    def __init__(self):
        self.finding = False

    def find_spec(self, name, path=None, target=None):
        if name not in self.NAMES or self.finding or not gc.isenabled():
            return None  # not a framework, the lookup below, or inside an import that paused the collector
        self.finding = True
        try:
            spec = importlib.util.find_spec(name)  # through the other finders (a quiet TensorFlow import too)
        finally:
            self.finding = False
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            gc.disable()
            try:
                run(module)
            finally:
                gc.enable()

        spec.loader.exec_module = exec_module
        return spec


def pause_collector_in_framework_imports() -> None:
    """Installs `_PausedCollectorImport` once (imported by mtl_keras/__init__.py)."""
    if not any(isinstance(f, _PausedCollectorImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PausedCollectorImport())


def quiet_native_logs(argv: list[str] | None = None) -> None:
    """TF_CPP_MIN_LOG_LEVEL=3 and a filtered `import tensorflow`, unless the user set the variable or passes
    --verbose (read from sys.argv: flags are parsed after TensorFlow is imported)."""
    if not _wanted(sys.argv if argv is None else argv):
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


def hardware_line() -> str:
    """What was found, in words: `Keras 3.15 on TensorFlow 2.21: CPU only (no GPU found)` / `...: 2 GPUs`."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        version, gpus = tf.__version__, len(tf.config.list_physical_devices("GPU"))
    elif backend == "jax":
        import jax

        version, gpus = jax.__version__, sum(d.platform == "gpu" for d in jax.devices())
    else:
        version, gpus = "", 0
    found = f"{gpus} GPU{'s' if gpus > 1 else ''}" if gpus else "CPU only (no GPU found)"
    name = {"tensorflow": "TensorFlow", "jax": "JAX"}.get(backend, backend)
    return f"Keras {keras.__version__} on {name} {version}".rstrip() + f": {found}"


def fit_verbosity() -> int:
    """Keras's progress bar (elapsed and ETA per step) on a terminal, else one line per epoch (see EpochClock)."""
    return 1 if sys.stdout.isatty() else 2


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def epoch_clock(epochs: int, initial_epoch: int = 0, budget_left=None) -> list:
    """Keras callbacks printing, after each epoch's line of metrics off a terminal, the time spent and an estimate
    of the time left (mean epoch time so far x epochs to go): `epoch 3/10: 0:42 elapsed, about 1:38 left`. Keras's
    own ProgbarLogger comes first, so that the clock follows the metrics (Keras appends its logger last).
    `budget_left()`, under --time_budget: the budget's seconds left, which cap the estimate. The clock runs on
    across the fits of a run (progressive resolution's two sizes): pass the same callbacks to each."""
    import keras

    class EpochClock(keras.callbacks.Callback):
        start = None

        def on_train_begin(self, logs=None):
            if self.start is None:
                self.start = time.time()

        def on_epoch_end(self, epoch, logs=None):
            done = epoch + 1 - initial_epoch
            elapsed = time.time() - self.start
            left = elapsed / done * (epochs - epoch - 1)
            if budget_left is not None:
                left = min(left, budget_left())
            print(f"epoch {epoch + 1}/{epochs}: {_clock(elapsed)} elapsed, about {_clock(left)} left", flush=True)

    return [keras.callbacks.ProgbarLogger(), EpochClock()]
