"""Data parallelism on the existing engines: tf.distribute on TensorFlow, keras.distribution on JAX.

`--batch_size` is the global batch: it is split evenly across replicas, and `--learning_rate` is the rate
for that global batch (nothing is rescaled behind your back). Scaling out by k replicas at a fixed
per-replica batch multiplies the global batch by k: raise the learning rate with it (linear rule for
SGD-like optimisers; for AdamW start with sqrt(k) and keep warmup).
"""

from __future__ import annotations

import contextlib

from mtl_keras.config import DISTRIBUTIONS


def use_logical_cpus(n: int) -> None:
    """Splits the CPU into `n` logical devices (TensorFlow), to test data parallelism without GPUs.

    Must run before TensorFlow initialises its devices, i.e. before the first op.
    """
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)


def _jax(name: str, optim):
    import jax
    import keras

    from mtl_keras import processes

    if name == "multi_worker":
        group = processes.resolve(optim)
        # Refused before joining: a process that refused after it would leave its peers to report it lost.
        if optim.batch_size % group.num_processes:
            raise ValueError(f"--batch_size={optim.batch_size} does not divide by the {group.num_processes} "
                             "processes of --distribution=multi_worker (each takes an equal slice of every batch)")
        processes.initialize(group)  # before JAX lists its devices: they span the group
        # Each process feeds its own slice of every global batch (pipeline's `shard`), so Keras must not shard.
        mesh = keras.distribution.DataParallel(devices=jax.devices(), auto_shard_dataset=False)
        keras.distribution.set_distribution(mesh)
        return contextlib.nullcontext(), len(jax.devices())
    devices = jax.devices()
    if name == "none" or (name == "auto" and len(devices) == 1):
        return contextlib.nullcontext(), 1
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
    else:  # multi_worker: refused in strategy_scope before TensorFlow is touched
        raise AssertionError(name)
    return strategy.scope(), strategy.num_replicas_in_sync


# Keras 3 does not run tf.distribute.MultiWorkerMirroredStrategy (its collectives must be configured before
# TensorFlow's first op, and Keras's fit does not support the strategy); several processes train on JAX.
TF_MULTI_WORKER = ("--distribution=multi_worker runs on the JAX backend only (Keras 3 does not support "
                   "TensorFlow's multi-worker strategy): run every process with KERAS_BACKEND=jax; see 'Scaling out'")


def strategy_scope(name: str, optim=None):
    """(context manager to build and compile the model in, number of replicas) for `--distribution`;
    `optim` (an OptimConfig) gives the process group of multi_worker."""
    import keras

    if name not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {name!r}; choose one of {', '.join(DISTRIBUTIONS)}")
    if keras.backend.backend() == "jax":
        return _jax(name, optim)
    if name == "multi_worker":
        raise ValueError(TF_MULTI_WORKER)
    return _tensorflow(name)
