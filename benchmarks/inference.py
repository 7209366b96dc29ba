"""Inference latency of one exported model in four runtimes, on the same inputs, in one run.

    python benchmarks/inference.py --workdir=runs/quickstart --saved_model=export/quickstart/1 [--repeats=200]

Prints median and p95 milliseconds per call at batch 1 and 32 for: the Keras model called directly, the
SavedModel's serving signature, onnxruntime fp32 and onnxruntime int8 (CPU execution provider).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def timed(fn, repeats: int, warmup: int = 10) -> tuple[float, float]:
    """(median, p95) wall milliseconds of `fn()` over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times)), float(np.percentile(times, 95))


def runtimes(workdir: Path, version: Path) -> tuple[dict, tuple[int, ...], object]:
    """(name -> callable(images), image shape, keep-alive handle) for every runtime the export has."""
    import keras
    import onnxruntime as ort
    import tensorflow as tf

    import mtl_keras.models  # noqa: F401  (registers custom layers for loading)

    model = keras.saving.load_model(workdir / "model.keras")
    loaded = tf.saved_model.load(str(version))  # the handle owns the signature's variables
    serving = loaded.signatures["serving_default"]
    fns = {
        "keras (direct call)": lambda x: {k: np.asarray(v) for k, v in model(x, training=False).items()},
        "saved_model signature": lambda x: {k: v.numpy() for k, v in serving(image=tf.constant(x)).items()},
    }
    for name, file in (("onnxruntime fp32", "model.onnx"), ("onnxruntime int8", "model.int8.onnx")):
        if (version / file).is_file():
            session = ort.InferenceSession(str(version / file), providers=["CPUExecutionProvider"])
            fns[name] = lambda x, s=session: s.run(None, {"image": x})
    return fns, tuple(model.input_shape[1:]), loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, type=Path, help="training run with model.keras")
    parser.add_argument("--saved_model", required=True, type=Path, help="export version folder")
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per cell")
    args = parser.parse_args()

    fns, image_shape, _keep = runtimes(args.workdir, args.saved_model)
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}, {args.saved_model}")
    print(f"{'runtime':<24} {'batch':>5} {'median ms':>10} {'p95 ms':>8} {'img/s':>8}")
    rng = np.random.default_rng(0)
    for batch in (1, 32):
        x = rng.integers(0, 256, (batch, *image_shape)).astype(np.float32)  # the same inputs for every runtime
        for name, fn in fns.items():
            median, p95 = timed(lambda: fn(x), args.repeats)
            print(f"{name:<24} {batch:>5} {median:>10.2f} {p95:>8.2f} {batch / median * 1e3:>8.0f}")


if __name__ == "__main__":
    main()
