"""Which input pipeline feeds a run (`--input_pipeline`), and its training, validation and evaluation batches.

    tf_data  pipeline.py: tf.data, graph-only (needs TensorFlow, whatever the Keras backend)
    host     host.py: numpy in threads, no TensorFlow (Keras on JAX where TensorFlow is not installed)
    auto     tf_data where TensorFlow is installed, else host

Both give the same splits, decoded pixels, labels, per-head sample weights and augmentation policies; what the
host pipeline does not implement (randaugment, TensorFlow-only datasets where TensorFlow is missing) is refused
by name before anything is written. Importing this module imports no TensorFlow.
"""

from __future__ import annotations

import importlib.util

from mtl_keras.config import INPUT_PIPELINES, TASKS, DataConfig, parse_policies
from mtl_keras.data.host_augment import HOST_POLICIES, refuse_mixing_partial
from mtl_keras.errors import ConfigError

TFDS_DATASETS = ("cifar10", "cifar100")  # read through tensorflow-datasets


def tensorflow_installed() -> bool:
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):  # a blocked import (sys.modules entry None) counts as absent
        return False


def resolve(input_pipeline: str) -> str:
    """"tf_data" or "host" for `--input_pipeline`; ConfigError for tf_data where TensorFlow is missing."""
    if input_pipeline not in INPUT_PIPELINES:
        raise ConfigError(f"--input_pipeline={input_pipeline}: choose one of {', '.join(INPUT_PIPELINES)}")
    if input_pipeline == "auto":
        return "tf_data" if tensorflow_installed() else "host"
    if input_pipeline == "tf_data" and not tensorflow_installed():
        raise ConfigError("--input_pipeline=tf_data needs TensorFlow, which is not installed here; use "
                          "--input_pipeline=host (or auto)")
    return input_pipeline


def check(data: DataConfig) -> str:
    """The resolved pipeline for `data`, after refusing by name what it cannot do; call before writing."""
    kind = resolve(data.input_pipeline)
    if kind == "host":
        policies = _policies(data.augment)
        refused = [p for p in policies if p not in HOST_POLICIES]
        if refused:
            raise ConfigError(f"--augment={data.augment}: the host input pipeline does not implement {refused[0]} "
                              f"(it has {', '.join(HOST_POLICIES)}); drop it, or use --input_pipeline=tf_data "
                              "where TensorFlow is installed")
        if data.dataset in TFDS_DATASETS and not tensorflow_installed():
            raise ConfigError(f"--dataset={data.dataset} is read through tensorflow-datasets, which needs TensorFlow "
                              "(not installed here); use --dataset=folder or csv with the images as files")
    return kind


def _policies(augment: str) -> tuple[str, ...]:
    try:
        return parse_policies(augment)
    except ValueError as e:
        raise ConfigError(f"--augment: {e}") from None


def fit_feeds(data: DataConfig, splits, *, task: str, batch_size: int, seed: int,
              shard: tuple[int, int] = (0, 1), start_step: int = 0):
    """(training batches, validation batches or None) for `model.fit` from the chosen pipeline: the data
    section's augmentation settings reach the training batches here and only here. `shard` (k, n): this
    process's slice of every global batch in a run of n processes (tf.data only). The training batches start at
    global batch `start_step`: a fit from epoch E of S steps each passes E * S."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    has_val = len(splits.val) > 0
    if check(data) == "tf_data":
        from mtl_keras.data import pipeline

        common = {"task": task, "batch_size": batch_size, "shard": shard}
        train = pipeline.pipeline(splits.train, splits.info, training=True, augment=data.augment, seed=seed,
                                  start_step=start_step,
                                  randaugment_ops=data.randaugment_ops,
                                  randaugment_magnitude=data.randaugment_magnitude, mixup_alpha=data.mixup_alpha,
                                  cutmix_alpha=data.cutmix_alpha, **common)
        return train, pipeline.pipeline(splits.val, splits.info, **common) if has_val else None
    from mtl_keras.data import host

    if shard[1] > 1:
        raise ConfigError("--distribution=multi_worker reads its slice of each batch through tf.data: run it where "
                          "TensorFlow is installed, with --input_pipeline=tf_data or auto")
    refuse_mixing_partial(splits.train, data.augment)
    train = host.train_batches(splits.train, splits.info, task=task, batch_size=batch_size, seed=seed,
                               policies=parse_policies(data.augment), mixup_alpha=data.mixup_alpha,
                               cutmix_alpha=data.cutmix_alpha, start_step=start_step)
    return train, host.eval_batches(splits.val, splits.info, task=task, batch_size=batch_size) if has_val else None


def eval_batches(split, info, batch_size: int, input_pipeline: str = DataConfig.input_pipeline):
    """A split's batches in order, never augmented: (images, labels[, weights]) with numpy-convertible values."""
    if resolve(input_pipeline) == "tf_data":
        from mtl_keras.data.pipeline import pipeline

        return pipeline(split, info, batch_size=batch_size)
    from mtl_keras.data import host

    return host.eval_batches(split, info, batch_size=batch_size)
