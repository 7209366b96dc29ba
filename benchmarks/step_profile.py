"""Where one training step goes on this machine: the config's whole step against its parts, each part timed
alone (forward + backward, compiled the way the config compiles its step), with each part's FLOPs and GFLOP/s.

    python benchmarks/step_profile.py                                  # mtl_vit_c10_cpu, its batch (64)
    python benchmarks/step_profile.py --config=mtl_vit_c10_cpu --batch_size=128 --steps=200
    python benchmarks/step_profile.py --mixed_precision=bfloat16      # any other train flag goes to the config

TensorFlow backend (the parts use tf.GradientTape). The model and its compile are the config's own
(`flags.config_from_args` -> `modeling.build_and_compile`, 10 fine / 2 coarse classes at 32 x 32 x 3, CIFAR-10's
shape), fed a fixed batch of random pixels so that only the step is timed. Parts:
- stem: the trunk's first layer to its token embedding (for the conv stem: the strided convolutions, their
  norms and activations, and the 1 x 1 projection), gradients for its weights;
- attention: each block's pre-norm and multi-head attention, gradients for its weights and its input;
- mlp: each block's pre-norm and two Dense layers, the same;
- optimizer: the config's optimizer applying one update to every weight (gradients given);
- rest: the whole step less the parts above (output heads, losses, metrics, residual adds, the final norm and
  pool, and whatever the parts cost more or less inside the one compiled step).
The input pipeline is timed alone too: the config's augmentation and batching on 10,000 in-memory images (the
`shapes` set), batches per second through `data.pipeline`; it shares the CPU with the step while training.
FLOPs count the matmuls and convolutions (`models.flops.forward_flops`) x3 for forward + backward.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

CLASSES = {"fine": 10, "coarse": 2}
SHAPE = (32, 32, 3)


def _timed(fn, *args, steps: int) -> float:
    """Seconds per call of `fn(*args)` over `steps` calls, after two untimed ones (tracing and compiling)."""
    for _ in range(2):
        _sync(fn(*args))
    start = time.perf_counter()
    for _ in range(steps):
        out = fn(*args)
    _sync(out)
    return (time.perf_counter() - start) / steps


def _sync(out) -> None:
    import tensorflow as tf

    for t in tf.nest.flatten(out):
        if t is not None and hasattr(t, "numpy"):
            t.numpy()


def _forward_backward(sub, jit: bool, input_grad: bool):
    import tensorflow as tf

    @tf.function(jit_compile=jit)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = sub(x, training=True)
            loss = tf.reduce_mean(tf.square(tf.cast(y, "float32")))
        grads = tape.gradient(loss, list(sub.trainable_variables) + ([x] if input_grad else []))
        return [g for g in grads if g is not None]

    return step


def parts(trunk, depth: int) -> dict[str, tuple]:
    """name -> (sub-model, whether its input's gradient is part of the step) for the ViT / CCT trunk's parts."""
    import keras

    first = next(layer for layer in trunk.layers if isinstance(layer, keras.layers.Conv2D))
    embed = trunk.get_layer("tokens").input  # the stem's last output, before the reshape to tokens
    out = {"stem": (keras.Model(first.input, embed), False)}
    for i in range(depth):
        mha, ln1, ln2 = (trunk.get_layer(f"block{i}_{n}") for n in ("mha", "ln1", "ln2"))
        dense = [layer for layer in trunk.layers if layer.name.startswith(f"block{i}_mlp_dense")]
        out[f"attention {i}"] = (keras.Model(ln1.input, mha.output), True)
        out[f"mlp {i}"] = (keras.Model(ln2.input, dense[-1].output), True)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="mtl_vit_c10_cpu", help="a shipped config name or a flagfile")
    p.add_argument("--batch_size", type=int, default=None, help="default: the config's")
    p.add_argument("--steps", type=int, default=100, help="timed steps per part")
    args, train_flags = p.parse_known_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf

    from mtl_keras import modeling
    from mtl_keras.data import datasets, pipeline
    from mtl_keras.flags import config_from_args
    from mtl_keras.models.flops import forward_flops

    flags = [f"--config={args.config}", "--dataset=shapes"] + ([f"--batch_size={args.batch_size}"]
                                                               if args.batch_size else []) + train_flags
    cfg = config_from_args(flags)
    b, jit = cfg.optim.batch_size, cfg.optim.jit_compile
    keras.utils.set_random_seed(0)
    model = modeling.build_and_compile(cfg.model, cfg.optim, CLASSES, SHAPE, steps_per_epoch=1000)
    trunk = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (b, *SHAPE)).astype("float32")
    y = {h: np.eye(k, dtype="float32")[rng.integers(0, k, b)] for h, k in CLASSES.items()}
    data = tf.data.Dataset.from_tensors((x, y)).repeat()

    # The whole step: Keras's own train function, as fit runs it (one step per call).
    model.fit(data, steps_per_epoch=2, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=args.steps, epochs=1, verbose=0)
    whole = (time.perf_counter() - start) / args.steps
    rows = [("whole step", whole, 3 * forward_flops(model) * b)]

    depth = sum(1 for layer in trunk.layers if layer.name.endswith("_mha"))
    for name, (sub, input_grad) in parts(trunk, depth).items():
        shape = (b, *sub.input.shape[1:])
        xs = tf.constant(rng.standard_normal(shape).astype("float32"))
        seconds = _timed(_forward_backward(sub, jit, input_grad), xs, steps=args.steps)
        rows.append((name, seconds, 3 * forward_flops(sub) * b))

    variables = model.trainable_variables
    grads = [tf.constant(rng.standard_normal(v.shape).astype("float32") * 1e-3) for v in variables]
    apply = tf.function(lambda g: model.optimizer.apply(g, variables), jit_compile=jit)
    rows.append(("optimizer", _timed(apply, grads, steps=args.steps), 0))

    split = datasets.load("shapes", seed=0).train.take(slice(0, 10_000))
    info = datasets.load("shapes", seed=0).info
    batches = pipeline.pipeline(split, info, training=True, batch_size=b, augment=cfg.data.augment, seed=0)
    it = iter(batches)
    for _ in range(5):
        next(it)
    start = time.perf_counter()
    for _ in range(args.steps):
        next(it)
    feed = (time.perf_counter() - start) / args.steps

    timed = sum(s for name, s, _ in rows[1:])
    rows.append(("rest", whole - timed, rows[0][2] - sum(f for _, _, f in rows[1:])))
    print(f"{args.config}: {cfg.model.model} {cfg.model.variant}, batch {b}, "
          f"{'XLA' if jit else 'no XLA'}, {cfg.optim.optimizer}, {cfg.optim.mixed_precision}, "
          f"{model.count_params():,} parameters; "
          f"keras {keras.__version__}, TensorFlow {tf.__version__}")
    print(f"{'part':<14}{'ms/step':>9}{'share':>8}{'GFLOP':>9}{'GFLOP/s':>9}")
    for name, seconds, flops in rows:
        rate = f"{flops / seconds / 1e9:9.1f}" if name != "rest" and flops and seconds > 0 else f"{'':>9}"
        print(f"{name:<14}{1000 * seconds:9.2f}{seconds / whole:8.1%}{flops / 1e9:9.3f}{rate}")
    print(f"whole step: {b / whole:,.0f} images/s; the input pipeline alone: {b / feed:,.0f} images/s "
          f"({1000 * feed:.2f} ms a batch)")


if __name__ == "__main__":
    main()
