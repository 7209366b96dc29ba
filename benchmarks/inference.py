"""Inference latency of one exported model in four runtimes, on the same inputs, in one run.

    python benchmarks/inference.py --workdir=runs/quickstart --saved_model=export/quickstart/1 [--repeats=200]
        [--int8=OTHER.int8.onnx]

Prints median and p95 milliseconds per call at batch 1 and 32 for: the Keras model called directly, the
SavedModel's serving signature, onnxruntime fp32 and onnxruntime int8 (CPU execution provider), then the int8 /
fp32 ratio. The runtimes take turns call by call, so load from other processes falls on all of them alike.
An export whose int8 model was slower than fp32 ships none (assets.extra/int8.json says why); `--int8` times
another int8 file in its place.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def timed(fns: dict, repeats: int, warmup: int = 10) -> dict[str, tuple[float, float]]:
    """name -> (median, p95) wall milliseconds of `fn()` over `repeats` calls after `warmup` calls, the
    functions called in turn (one call each per round)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: (float(np.median(t)), float(np.percentile(t, 95))) for name, t in times.items()}


def runtimes(workdir: Path, version: Path, int8: Path | None = None) -> tuple[dict, tuple[int, ...]]:
    """(name -> callable(images), image shape) for every artifact the run and its export have, each opened by
    the package's one loader (`mtl_keras.serving.runtime.load`), called on one batch as a server would."""
    from mtl_keras.serving import runtime

    paths = {"keras (predict_on_batch)": workdir / "model.keras", "saved_model signature": version,
             "onnxruntime fp32": version / "model.onnx", "onnxruntime int8": int8 or version / "model.int8.onnx"}
    loaded = {name: runtime.load(path) for name, path in paths.items() if path.exists()}
    return {name: r.run_batch for name, r in loaded.items()}, loaded["saved_model signature"].shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, type=Path, help="training run with model.keras")
    parser.add_argument("--saved_model", required=True, type=Path, help="export version folder")
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per cell")
    parser.add_argument("--int8", type=Path, default=None, help="int8 ONNX file (default: VERSION/model.int8.onnx)")
    args = parser.parse_args()

    fns, image_shape = runtimes(args.workdir, args.saved_model, args.int8)
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}, load average "
          f"{os.getloadavg()[0]:.1f}, {args.saved_model}")
    decision = args.saved_model / "assets.extra" / "int8.json"
    if "onnxruntime int8" not in fns and decision.is_file():
        print(f"# no int8 model: {json.loads(decision.read_text())['summary']}")
    print(f"{'runtime':<24} {'batch':>5} {'median ms':>10} {'p95 ms':>8} {'img/s':>8}")
    rng = np.random.default_rng(0)
    ratios = []
    for batch in (1, 32):
        x = rng.integers(0, 256, (batch, *image_shape)).astype(np.float32)  # the same inputs for every runtime
        results = timed({name: (lambda fn=fn: fn(x)) for name, fn in fns.items()}, args.repeats)
        for name, (median, p95) in results.items():
            print(f"{name:<24} {batch:>5} {median:>10.2f} {p95:>8.2f} {batch / median * 1e3:>8.0f}")
        if "onnxruntime int8" in results:
            ratios.append(f"batch {batch} {results['onnxruntime int8'][0] / results['onnxruntime fp32'][0]:.2f}x")
    if ratios:
        print("int8 / fp32 median latency: " + ", ".join(ratios))


if __name__ == "__main__":
    main()
