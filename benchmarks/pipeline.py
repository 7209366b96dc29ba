"""tf.data training-pipeline throughput: images/second per augmentation policy, on all cores and on one.

    PYTHONPATH=. python benchmarks/pipeline.py

Data: the built-in `shapes` set (CIFAR-shaped, 32x32x3) and Fashion-MNIST (28x28x1, skipped when the
Debian package is absent). "1 core" runs the same pipeline with tf.data's thread pool and intra-op
parallelism at one thread, so it is a per-core figure that does not depend on the machine's core count;
"all cores" is the default pipeline, also shown divided by the core count. The consumer is a Python loop
pulling batches, as `model.fit` does, so its overhead is included. Target: >= 8,000 CIFAR-sized images/s
per core with flip_crop.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from mtl_keras import data, fashion_mnist  # noqa: E402

BATCH = 128
MIN_SECONDS, MIN_BATCHES, WARMUP = 3.0, 40, 10
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


def main() -> None:
    cores = len(os.sched_getaffinity(0))
    print(f"tf.data pipeline throughput, batch {BATCH}, {cores} CPU cores, TensorFlow {tf.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")
    sets = [("shapes", {})]
    if os.path.isfile(os.path.join(fashion_mnist.DEFAULT_DIR, fashion_mnist.FILES["train"][0])):
        sets.append(("fashion_mnist", {"fashion_mnist_dir": fashion_mnist.DEFAULT_DIR}))
    else:
        print(f"(Fashion-MNIST skipped: not installed in {fashion_mnist.DEFAULT_DIR})")
    header = f"{'dataset':<26} {'augment':<36} {'all cores':>10} {'/ core':>8} {'1 core':>8}   images/s"
    print(header + "\n" + "-" * len(header))
    for name, kwargs in sets:
        splits = data.load(name, **kwargs)
        train, info = splits.train, splits.info
        label = f"{name} {'x'.join(map(str, train.images.shape[1:]))} ({len(train)})"
        for policy in POLICIES:
            build = lambda: data.pipeline(train, info, training=True, augment=policy, batch_size=BATCH)  # noqa: E731
            all_cores = images_per_second(build())
            single = images_per_second(one_thread(build()))
            print(f"{label:<26} {policy:<36} {all_cores:>10,.0f} {all_cores / cores:>8,.0f} {single:>8,.0f}",
                  flush=True)


if __name__ == "__main__":
    main()
