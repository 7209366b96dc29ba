"""The two ONNX converters (`--onnx_converter=tf2onnx|keras`) on every trunk: parity and conversion time.

    python benchmarks/onnx_converters.py [--trunks=vit,cct,seed_vit,resnet152] [--images=64] [--atol=1e-5]

Each trunk is built at the size its configs train (random weights, 32x32x3 inputs like CIFAR), exported once as
the SavedModel (both signatures), then converted by each converter and checked by the package's one checker
(`serving.verify.verify`: Keras <-> SavedModel <-> ONNX, and serving_bytes <-> serving_default) on random pixels.
Prints per trunk and converter: conversion seconds, ONNX nodes and size, then max |diff| and argmax agreement per
head for SavedModel vs ONNX, whether the whole check passed, and the process's peak resident memory so far. Each
trunk runs in a process of its own (ResNet-152's conversions took >11 GB after seed_vit's in one process, and the
kernel killed it on the 24 GB box).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# trunk -> build_model arguments: the size its configs train at (the quickstart config, the CCT recipe of
# the seed study's ViT and ResNet-152 with their branch heads, CIFAR-100 / CIFAR-10 class counts).
TRUNKS = {
    "vit": dict(heads={"fine": 10, "coarse": 3}, variant="Mu/4"),
    "cct": dict(heads={"fine": 10, "coarse": 2}, variant="7/3x1"),
    "seed_vit": dict(heads={"fine": 100, "coarse": 20}, head="seed",
                     norm_stats=([125.3, 123.0, 113.9], [3993.0, 3874.0, 4354.0])),
    "resnet152": dict(heads={"fine": 10, "coarse": 2}, head="seed"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trunks", default=",".join(TRUNKS), help="comma-separated trunks")
    parser.add_argument("--images", type=int, default=64, help="random-pixel images each check runs")
    parser.add_argument("--atol", type=float, default=1e-5, help="the checker's tolerance")
    parser.add_argument("--no_header", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    trunks = args.trunks.split(",")
    if len(trunks) > 1:  # one process per trunk, so one trunk's memory is not the next one's
        for i, trunk in enumerate(trunks):
            subprocess.run([sys.executable, __file__, f"--trunks={trunk}", f"--images={args.images}",
                            f"--atol={args.atol}", *(["--no_header"] if i else [])], check=False)
        return

    import keras
    import onnx

    from mtl_keras.config import ONNX_CONVERTERS
    from mtl_keras.models import build_model
    from mtl_keras.serving import export, verify

    shape = (32, 32, 3)
    if not args.no_header:
        print(f"# {platform.machine()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}, keras {keras.__version__}, "
              f"{args.images} random images, atol {args.atol:g}")
        print(f"{'trunk':<10} {'converter':<8} {'params':>7} {'convert s':>9} {'nodes':>6} {'MB':>6} "
              f"{'fine max|d|':>11} {'fine arg':>8} {'coarse max|d|':>13} {'coarse arg':>10} {'peak GB':>7}  check",
              flush=True)
    for trunk in trunks:
        keras.utils.set_random_seed(0)
        model = build_model(trunk, shape, **TRUNKS[trunk])
        images = verify.random_pixels(shape, args.images, seed=1)
        with tempfile.TemporaryDirectory() as tmp:
            version = export.export(model, tmp, trunk, onnx=False)
            for converter in ONNX_CONVERTERS:
                path = Path(tmp) / f"{converter}.onnx"
                start = time.perf_counter()
                try:
                    export.write_onnx(version, path, {}, converter, model)
                except Exception as e:  # a converter that fails is a row of the table, not the end of it
                    print(f"{trunk:<10} {converter:<8} FAILED: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
                    continue
                seconds = time.perf_counter() - start
                nodes = len(onnx.load(str(path)).graph.node)
                result = verify.verify(version, path, images, keras_model=model, atol=args.atol)
                onnx_pair = {o.name: o for o in next(r for r in result.comparisons
                                                     if r.pair == "saved_model vs onnx").outputs}
                cells = [f"{onnx_pair[h].max_abs_diff:>{w}.2g} {onnx_pair[h].argmax_agreement:>{a}.1%}"
                         for h, w, a in (("fine", 11, 8), ("coarse", 13, 10))]
                print(f"{trunk:<10} {converter:<8} {model.count_params() / 1e6:>6.2f}M {seconds:>9.1f} {nodes:>6} "
                      f"{path.stat().st_size / 2**20:>6.1f} {' '.join(cells)} "
                      f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:>7.1f}  "
                      f"{'PASS' if result.ok else 'FAIL: ' + '; '.join(result.problems)}", flush=True)
                del result
                gc.collect()  # the loaded SavedModel and sessions of this converter's check
        keras.backend.clear_session()


if __name__ == "__main__":
    main()
