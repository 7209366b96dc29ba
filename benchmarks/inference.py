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


def runtimes(workdir: Path, version: Path) -> tuple[dict, tuple[int, ...]]:
    """(name -> callable(images), image shape) for every artifact the run and its export have, each opened by
    the package's one loader (`mtl_keras.serving.runtime.load`), called on one batch as a server would."""
    from mtl_keras.serving import runtime

    paths = {"keras (predict_on_batch)": workdir / "model.keras", "saved_model signature": version,
             "onnxruntime fp32": version / "model.onnx", "onnxruntime int8": version / "model.int8.onnx"}
    loaded = {name: runtime.load(path) for name, path in paths.items() if path.exists()}
    return {name: r.run_batch for name, r in loaded.items()}, loaded["saved_model signature"].shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, type=Path, help="training run with model.keras")
    parser.add_argument("--saved_model", required=True, type=Path, help="export version folder")
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per cell")
    args = parser.parse_args()

    fns, image_shape = runtimes(args.workdir, args.saved_model)
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
