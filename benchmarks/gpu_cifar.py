"""Timing and model FLOP utilisation (MFU) around `mtl_keras.train.run`: the same training command as everyone's,
with one line per epoch (seconds, train images/s, MFU) and a last line of JSON.

    KERAS_BACKEND=jax python benchmarks/gpu_cifar.py --config=mtl_vit_c10 --dataset=folder \
        --data_dir=data/cifar10 [--peak_tflops=N]

Every `mtl_keras.train` flag is accepted and means what it means there (input pipeline, checkpoints, resume,
model.keras, metrics.json, plots, export); --peak_tflops overrides the device table below. MFU = 3 x forward
FLOPs per image x train images/s / peak FLOP/s; forward FLOPs are those train.py reports (models/flops.py,
matmuls and convolutions). An epoch's time runs from its start to its last training step, so validation is
left out; the reported rate is the median of epochs 2.. (epoch 1 compiles), or epoch 1 when it is the only one.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

# Dense peak TFLOP/s per device kind: (bf16/fp16, fp32). JAX's default matmul precision runs float32 matmuls as
# TF32 on Ampere/Hopper, so the float32 figure is the TF32 peak.
PEAKS = (("H100 PCIe", 756.0, 378.0), ("H100", 989.0, 495.0), ("H200", 989.0, 495.0), ("A100", 312.0, 156.0))


def peak_tflops(device_kind: str, mixed_precision: str, override: float | None) -> tuple[float | None, str]:
    """(peak TFLOP/s or None, how it was chosen)."""
    if override:
        return override, f"--peak_tflops={override:g}"
    for kind, half, tf32 in PEAKS:
        if kind.lower() in device_kind.lower():
            peak = tf32 if mixed_precision == "float32" else half
            return peak, f"{kind} dense {'TF32' if mixed_precision == 'float32' else mixed_precision} peak"
    return None, f"no peak known for {device_kind!r}: MFU n/a (pass --peak_tflops)"


def mfu(forward_flops: float, images_per_second: float, peak: float | None) -> float | None:
    """Model FLOP utilisation: training does ~3x the forward FLOPs (forward + backward), over peak TFLOP/s."""
    return 3 * forward_flops * images_per_second / (peak * 1e12) if peak else None


def epoch_timer():
    """A Keras callback that times each epoch's training steps (up to validation)."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds, self.start, self.done = [], 0.0, None

        def _train_done(self):
            if self.done is None:
                # JAX dispatches asynchronously: the last update must have landed before the clock stops.
                keras.ops.convert_to_numpy(self.model.trainable_variables[0].value)
                self.done = time.perf_counter() - self.start

        def on_epoch_begin(self, epoch, logs=None):
            self.start, self.done = time.perf_counter(), None

        def on_test_begin(self, logs=None):
            self._train_done()

        def on_epoch_end(self, epoch, logs=None):
            self._train_done()
            self.seconds.append(self.done)
            print(f"epoch {epoch + 1}: {self.done:.1f} s training (validation left out)", flush=True)

    return EpochTimer()


@contextlib.contextmanager
def timed_fit():
    """Adds the epoch timer to train.run's `model.fit` (train.py stays as everyone runs it)."""
    import keras

    timer, fit = epoch_timer(), keras.Model.fit

    def fit_with_timer(self, *args, callbacks=None, **kwargs):
        return fit(self, *args, callbacks=[*(callbacks or []), timer], **kwargs)

    keras.Model.fit = fit_with_timer
    try:
        yield timer
    finally:
        keras.Model.fit = fit


def report(metrics: dict, seconds: list[float], config, peak_override: float | None) -> dict:
    """metrics.json's figures with the steady images/s and MFU of this device."""
    import jax
    import keras

    device = jax.devices()[0]
    name = device.device_kind if device.platform != "cpu" else f"cpu ({os.cpu_count()} cores)"
    peak, how = peak_tflops(name, config.optim.mixed_precision, peak_override)
    images = metrics["train_examples"]  # per epoch: whole batches of the training split, as fit ran them
    steady = sorted(seconds[1:] or seconds)
    rate = images / steady[len(steady) // 2] if steady else None
    flops = metrics["forward_gflops"] * 1e9
    return {"device": name, "backend": keras.backend.backend(), "peak_tflops": peak, "peak_note": how,
            "images_per_s": round(rate, 1) if rate else None,
            "mfu": round(mfu(flops, rate, peak), 4) if rate and peak else None,
            "per_epoch_images_per_s": [round(images / s, 1) for s in seconds],
            **{k: v for k, v in metrics.items() if k.endswith(("accuracy", "consistency")) or k in (
                "parameters", "forward_gflops", "train_examples", "epochs_run", "train_seconds")}}


def main(argv: list[str]) -> None:
    from absl import flags

    from mtl_keras import flags as mtl_flags
    from mtl_keras import train
    from mtl_keras.errors import MtlError, report as error_line

    if len(argv) > 1:
        sys.exit(f"gpu_cifar: unexpected arguments {argv[1:]}; flags look like --name=value")
    config = mtl_flags.to_config(flags.FLAGS)
    try:
        with timed_fit() as timer:
            metrics = train.run(config)
    except MtlError as e:
        sys.exit(error_line("gpu_cifar", e))
    result = report(metrics, timer.seconds, config, flags.FLAGS.peak_tflops)
    mfu_text = f"{result['mfu']:.1%}" if result["mfu"] is not None else "n/a"
    print(f"steady {result['images_per_s']} images/s on {result['device']}, MFU {mfu_text} ({result['peak_note']})")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "jax")  # before Keras is imported; importing this module sets nothing
    from absl import app, flags

    from mtl_keras import flags as mtl_flags

    mtl_flags.define_train_flags(flags.FLAGS)
    flags.DEFINE_float("peak_tflops", None, "Peak TFLOP/s of the device for MFU (default: the table in this file).")
    flags.adopt_module_key_flags(mtl_flags)
    app.run(main, flags_parser=mtl_flags.parser_exiting_in_one_line("gpu_cifar"))
