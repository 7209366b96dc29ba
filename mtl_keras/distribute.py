"""Data parallelism on the existing engines: tf.distribute on TensorFlow, keras.distribution on JAX.

`--batch_size` is the global batch: it is split evenly across replicas, and `--learning_rate` is the rate
for that global batch (nothing is rescaled behind your back). Scaling out by k replicas at a fixed
per-replica batch multiplies the global batch by k: raise the learning rate with it (linear rule for
SGD-like optimisers; for AdamW start with sqrt(k) and keep warmup).
"""

from __future__ import annotations

import contextlib
import os

from mtl_keras.config import DISTRIBUTIONS



def use_logical_cpus(n: int) -> None:
    """Splits the CPU into `n` logical devices (TensorFlow), to test data parallelism without GPUs.

    Must run before TensorFlow initialises its devices, i.e. before the first op.
    """
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)


def _jax(name: str):
    import jax
    import keras

    devices = jax.devices()
    if name == "none" or (name == "auto" and len(devices) == 1):
        return contextlib.nullcontext(), 1
    if name == "multi_worker":
        raise ValueError("--distribution=multi_worker runs on the TensorFlow backend; on JAX call "
                         "jax.distributed.initialize() and use --distribution=mirrored")
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return contextlib.nullcontext(), len(devices)


def _tensorflow(name: str):
    import tensorflow as tf

    if name == "none":
        return contextlib.nullcontext(), 1
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        if len(gpus) < 2:
            return contextlib.nullcontext(), 1
        strategy = tf.distribute.MirroredStrategy()
    elif name == "mirrored":
        devices = gpus or tf.config.list_logical_devices("CPU")
        strategy = tf.distribute.MirroredStrategy([d.name for d in devices])
    else:
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--distribution=multi_worker needs the TF_CONFIG environment variable "
                             "(cluster and task of this worker); see README 'Scaling out'")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    return strategy.scope(), strategy.num_replicas_in_sync


def strategy_scope(name: str):
    """(context manager to build and compile the model in, number of replicas) for `--distribution`."""
    import keras

    if name not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {name!r}; choose one of {', '.join(DISTRIBUTIONS)}")
    return _jax(name) if keras.backend.backend() == "jax" else _tensorflow(name)
