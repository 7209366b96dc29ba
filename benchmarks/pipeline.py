"""tf.data training-pipeline throughput: images/second per augmentation policy, on all cores and on one.

    PYTHONPATH=. python benchmarks/pipeline.py            # in-memory datasets, then image folders
    PYTHONPATH=. python benchmarks/pipeline.py folders    # image folders only (or: memory)
    PYTHONPATH=. python benchmarks/pipeline.py feed [--dataset=folder --data_dir=ROOT]   # tf_data vs host

`feed` compares the two input pipelines (--input_pipeline=tf_data and host) feeding the CPU config's model
(its AdamW recipe, cifar10_study/b_vit_mu4_e18_tta; default data: the built-in shapes set, any train flag
overrides): images/s of `model.fit` steps after a warm-up epoch, so the model's step time is included, as in training.

Data: the built-in `shapes` set (CIFAR-shaped, 32x32x3) and Fashion-MNIST (28x28x1, skipped when the
Debian package is absent). "1 core" runs the same pipeline with tf.data's thread pool and intra-op
parallelism at one thread, so it is a per-core figure that does not depend on the machine's core count;
"all cores" is the default pipeline, also shown divided by the core count. The consumer is a Python loop
pulling batches, as `model.fit` does, so its overhead is included. Target: >= 8,000 CIFAR-sized images/s
per core with flip_crop.

Image folders (`--dataset=folder`): generated trees of JPEG files (shapes drawings, 32x32 as they are and
upscaled to 224x224 and 1024x1024 with sensor-like noise, quality 90) in a temporary folder, so the files sit in the
page cache and the figures are decode + resize + crop + flip, not disk reads. "decode once" is the
load-time pass that fills the in-memory cache (--folder_cache_mb); "cached" is the training pipeline
reading that cache; "streamed" decodes and resizes every file every epoch (--folder_cache_mb=0).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from mtl_keras.data import datasets, images, pipeline  # noqa: E402
from mtl_keras.data.sources import fashion_mnist, shapes  # noqa: E402

BATCH = 128
MIN_SECONDS, MIN_BATCHES, WARMUP = 3.0, 40, 10
# (JPEG side, --folder_image_size, files): CIFAR-sized, ImageNet-sized, and photo-sized bound for small inputs
FOLDER_CASES = ((32, 32, 6000), (224, 224, 1200), (224, 32, 1200), (1024, 224, 300), (1024, 32, 300))
POLICIES = ("none", "flip_crop", "flip_crop,mixup", "flip_crop,cutmix", "flip_crop,randaugment",
            "flip_crop,randaugment,mixup,cutmix")


def images_per_second(ds: tf.data.Dataset) -> float:
    """Batches pulled for at least MIN_SECONDS (after a warm-up), as images per second."""
    it = iter(ds)
    for _ in range(WARMUP):
        next(it)
    n, start = 0, time.perf_counter()
    while n < MIN_BATCHES or time.perf_counter() - start < MIN_SECONDS:
        next(it)
        n += 1
    return n * BATCH / (time.perf_counter() - start)


def one_thread(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


def write_jpeg_tree(root: Path, side: int, n: int) -> None:
    """ROOT/COARSE/FINE/NNNNN.jpg: `n` shapes drawings as side x side JPEGs (quality 90)."""
    images, fine, _ = shapes.generate(n, seed=2)
    rng = np.random.default_rng(0)
    for coarse, name in {(shapes.COARSE_NAMES[c], shapes.FINE_NAMES[f]) for f, c in enumerate(shapes.FINE_TO_COARSE)}:
        (root / coarse / name).mkdir(parents=True)
    for start in range(0, n, 50):
        x = tf.constant(images[start:start + 50])
        if side != x.shape[1]:  # upscaled drawings are smooth; noise gives them a photo's JPEG size
            x = tf.image.resize(tf.cast(x, tf.float32), (side, side)) + rng.normal(0, 6, (len(x), side, side, 3))
            x = tf.cast(tf.clip_by_value(x, 0, 255), tf.uint8)
        for i, image in enumerate(x, start):
            k = int(fine[i])
            path = root / shapes.COARSE_NAMES[shapes.FINE_TO_COARSE[k]] / shapes.FINE_NAMES[k] / f"{i:05d}.jpg"
            path.write_bytes(tf.io.encode_jpeg(image, quality=90).numpy())


def decode_once_per_second(paths, size: int, single: bool) -> float:
    """Images/s of the load-time decode pass that fills the cache (images.decode_files' dataset)."""
    ds = tf.data.Dataset.from_tensor_slices(paths).map(lambda p: images.decode(p, size),
                                                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = ds.batch(256).prefetch(2)
    ds = one_thread(ds) if single else ds
    start = time.perf_counter()
    for _ in ds:
        pass
    return len(paths) / (time.perf_counter() - start)


def folder_benchmarks(cores: int) -> None:
    header = (f"{'JPEG tree -> --folder_image_size':<36} {'mode (flip_crop)':<16} {'all cores':>10} {'/ core':>8} "
              f"{'1 core':>8}   images/s")
    print("\n" + header + "\n" + "-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        trees = {}
        for side, size, n in FOLDER_CASES:
            root = Path(tmp) / f"jpeg{side}"
            if side not in trees:
                write_jpeg_tree(root, side, n)
                kb = sum(f.stat().st_size for f in root.glob("*/*/*.jpg")) / n / 1024
                trees[side] = kb
            label = f"{n} x {side}x{side} ({trees[side]:.0f} KB) -> {size}"
            common = dict(folder_image_size=size, validation_fraction=0.0, folder_test_fraction=0.0)
            cached = datasets.load("folder", data_dir=str(root), **common)
            streamed = datasets.load("folder", data_dir=str(root), folder_cache_mb=0, **common)
            paths = streamed.train.images.paths.astype(str)
            rates = [decode_once_per_second(paths, size, single) for single in (False, True)]
            print(f"{label:<36} {'decode once':<16} {rates[0]:>10,.0f} {rates[0] / cores:>8,.0f} {rates[1]:>8,.0f}",
                  flush=True)
            for mode, splits in (("cached", cached), ("streamed", streamed)):
                build = lambda: pipeline.pipeline(  # noqa: E731
                    splits.train, splits.info, training=True, augment="flip_crop", batch_size=BATCH)
                all_cores, single = images_per_second(build()), images_per_second(one_thread(build()))
                print(f"{label:<36} {mode:<16} {all_cores:>10,.0f} {all_cores / cores:>8,.0f} {single:>8,.0f}",
                      flush=True)


FEED_STEPS = 60


def feed_benchmarks(argv: list[str]) -> None:
    """images/s of fit on the CPU config's model, fed by each input pipeline (same splits, same settings)."""
    import dataclasses

    import keras

    from mtl_keras import flags as mtl_flags
    from mtl_keras.data import feeds
    from mtl_keras.modeling import build_and_compile

    config = mtl_flags.config_from_args(["--config=cifar10_study/b_vit_mu4_e18_tta", "--dataset=shapes", *argv])
    splits = datasets.prepare(config.data, config.run.seed)
    bs = config.optim.batch_size
    print(f"model.fit fed by each input pipeline: {config.model.model} {config.model.variant}, batch {bs}, augment "
          f"{config.data.augment}, {config.data.dataset} ({len(splits.train)} train), Keras on "
          f"{keras.backend.backend()}; {FEED_STEPS} steps after a warm-up epoch of {FEED_STEPS}")
    for kind in ("tf_data", "host"):
        data = dataclasses.replace(config.data, input_pipeline=kind)
        train, _ = feeds.fit_feeds(data, splits, task=config.model.task, batch_size=bs, seed=config.run.seed)
        keras.utils.set_random_seed(0)
        model = build_and_compile(config.model, config.optim, splits.info.num_classes, splits.train.images.shape[1:],
                                  FEED_STEPS, fine_to_coarse=splits.info.fine_to_coarse)
        model.fit(train, steps_per_epoch=FEED_STEPS, epochs=1, verbose=0, shuffle=False)  # compiles
        start = time.perf_counter()
        model.fit(train, steps_per_epoch=FEED_STEPS, epochs=1, verbose=0, shuffle=False)
        rate = FEED_STEPS * bs / (time.perf_counter() - start)
        print(f"  --input_pipeline={kind:<8} {rate:>10,.0f} images/s", flush=True)


def main() -> None:
    if sys.argv[1:2] == ["feed"]:
        return feed_benchmarks(sys.argv[2:])
    cores = len(os.sched_getaffinity(0))
    print(f"tf.data pipeline throughput, batch {BATCH}, {cores} CPU cores, TensorFlow {tf.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")
    if sys.argv[1:] == ["folders"]:
        return folder_benchmarks(cores)
    sets = [("shapes", {})]
    if os.path.isfile(os.path.join(fashion_mnist.DEFAULT_DIR, fashion_mnist.FILES["train"][0])):
        sets.append(("fashion_mnist", {"fashion_mnist_dir": fashion_mnist.DEFAULT_DIR}))
    else:
        print(f"(Fashion-MNIST skipped: not installed in {fashion_mnist.DEFAULT_DIR})")
    header = f"{'dataset':<26} {'augment':<36} {'all cores':>10} {'/ core':>8} {'1 core':>8}   images/s"
    print(header + "\n" + "-" * len(header))
    for name, kwargs in sets:
        splits = datasets.load(name, **kwargs)
        train, info = splits.train, splits.info
        label = f"{name} {'x'.join(map(str, train.images.shape[1:]))} ({len(train)})"
        for policy in POLICIES:
            build = lambda: pipeline.pipeline(train, info, training=True, augment=policy, batch_size=BATCH)  # noqa: E731
            all_cores = images_per_second(build())
            single = images_per_second(one_thread(build()))
            print(f"{label:<26} {policy:<36} {all_cores:>10,.0f} {all_cores / cores:>8,.0f} {single:>8,.0f}",
                  flush=True)
    if sys.argv[1:] != ["memory"]:
        folder_benchmarks(cores)


if __name__ == "__main__":
    main()
