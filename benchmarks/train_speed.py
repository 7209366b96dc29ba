"""Training speed of a trunk + heads on synthetic data: images/s, step time and model FLOP utilisation.

    KERAS_BACKEND=jax python benchmarks/train_speed.py --model=cct --variant=7/3x1 --batch_size=256 \
        --precision=mixed_bfloat16 --peak_tflops=989
    python benchmarks/train_speed.py --model=vit --variant=Mu/4 --batch_size=64 --steps=20   # CPU smoke

Runs on any Keras backend and never imports TensorFlow itself (numpy input, `mtl_keras.models` is
Keras-only), so it works where only `jax[cuda12]` and `keras` are installed. Arguments are argparse, not
mtl_keras.flags: that module pulls in the TensorFlow data pipeline.

MFU = analytic training FLOP/s / --peak_tflops. Analytic FLOPs count the matmuls and convolutions
(Dense, Conv, attention) of one forward pass, x3 for forward + backward; element-wise ops are left out
(a few per cent), so MFU is slightly understated. Peak: the accelerator's dense figure for the chosen
precision (e.g. H100 SXM: 989 TFLOP/s bf16/fp16, 495 tf32, 67 fp32).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import keras  # noqa: E402

from mtl_keras.config import TRUNKS  # noqa: E402
from mtl_keras.models import build_model  # noqa: E402
from mtl_keras.models.flops import forward_flops  # noqa: E402

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def synthetic(n: int, shape: tuple[int, ...], heads: dict[str, int], seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (n, *shape)).astype("float32")
    y = {h: np.eye(k, dtype="float32")[rng.integers(0, k, n)] for h, k in heads.items()}
    return x, y


def measure(args: argparse.Namespace) -> dict[str, float]:
    """Builds and compiles the model, runs `warmup_steps` untimed (compilation), then times `steps`."""
    keras.mixed_precision.set_global_policy(args.precision)
    heads = {"fine": args.fine_classes, "coarse": args.coarse_classes}
    shape = (args.input_size, args.input_size, args.channels)
    model = build_model(args.model, shape, heads, variant=args.variant, head=args.head,
                        image_size=args.image_size)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="categorical_crossentropy",
                  jit_compile=args.jit_compile, steps_per_execution=args.steps_per_execution)
    b = args.batch_size
    x, y = synthetic(b * max(args.warmup_steps, args.steps_per_execution), shape, heads)
    model.fit(x, y, batch_size=b, epochs=1, verbose=0)  # compiles the train step
    x, y = synthetic(b * args.steps, shape, heads, seed=1)
    start = time.perf_counter()
    model.fit(x, y, batch_size=b, epochs=1, verbose=0)  # fit returns after the last step has finished
    seconds = time.perf_counter() - start
    flops = 3 * forward_flops(model)
    result = {"images_per_s": b * args.steps / seconds, "step_ms": 1000 * seconds / args.steps,
              "gflops_per_image": flops / 1e9, "params_m": model.count_params() / 1e6}
    result["tflops_per_s"] = result["images_per_s"] * flops / 1e12
    if args.peak_tflops:
        result["mfu"] = result["tflops_per_s"] / args.peak_tflops
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=TRUNKS, default="vit")
    p.add_argument("--variant", default="Mu/4", help="vit NAME/PATCH or cct LAYERS/KxN")
    p.add_argument("--head", choices=("light", "seed"), default="light")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--precision", choices=PRECISIONS, default="float32", help="keras.mixed_precision policy")
    p.add_argument("--steps", type=int, default=50, help="timed training steps")
    p.add_argument("--warmup_steps", type=int, default=3, help="untimed steps first (XLA compilation)")
    p.add_argument("--steps_per_execution", type=int, default=1)
    p.add_argument("--input_size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--image_size", type=int, default=None, help="resize inside the model (default: native)")
    p.add_argument("--fine_classes", type=int, default=10)
    p.add_argument("--coarse_classes", type=int, default=2)
    p.add_argument("--peak_tflops", type=float, default=None, help="device peak for --precision, for MFU")
    p.add_argument("--no_jit", dest="jit_compile", action="store_false", help="TF backend: no XLA")
    args = p.parse_args(argv)
    try:
        r = measure(args)
    except ValueError as e:  # bad variant / size: one line
        sys.exit(f"train_speed: error: {e}")
    mfu = f"{r['mfu']:.1%}" if "mfu" in r else "n/a (pass --peak_tflops)"
    print(f"{keras.backend.backend()} {args.model} {args.variant if args.model in ('vit', 'cct') else ''} "
          f"batch {args.batch_size} {args.precision}: {r['images_per_s']:.1f} images/s, "
          f"step {r['step_ms']:.1f} ms, {r['params_m']:.2f} M params, {r['gflops_per_image']:.3f} GFLOP/image "
          f"(train), {r['tflops_per_s']:.3f} TFLOP/s, MFU {mfu}")


if __name__ == "__main__":
    main()
