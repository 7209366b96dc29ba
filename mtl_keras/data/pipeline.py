"""The tf.data pipelines that feed `model.fit`: a split -> batches of `(image float32 0-255, {"fine": one-hot,
"coarse": one-hot})`, with random augmentation (augment.py) for training. A split with partial labels (class
id -1 for a head) gets all-zero label vectors there and a third element, per-head sample weights
`{"fine": 0 or 1, "coarse": 0 or 1}`, so that head has no loss and its metrics skip the image.

Images keep their native shape (Fashion-MNIST: 28x28x1) and the model is built for it; a model that asks for
another shape gets it from `images.fit_images`. In-memory splits gather whole batches by index; splits of
`FileImages` decode each file in a parallel map first; both then go through the same `prepare`.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mtl_keras.config import TASKS, parse_policies
from mtl_keras.data import augment as augment_lib
from mtl_keras.data.host_augment import refuse_mixing_partial
from mtl_keras.data.host_images import FileImages
from mtl_keras.data.images import decode, fit_images, without_autotune_thread
from mtl_keras.data.types import DatasetInfo, Split


def traced(fn):
    """`fn` for a tf.data map, traced as written. Its conditions test Python values only (tf.cond / tf.switch_case
    where a tensor decides), so autograph's rewrite of the source (about 1 CPU-second per training run) would
    change nothing in the graph: the batches are bit-identical."""
    return tf.autograph.experimental.do_not_convert(fn)


def split_heads(labels: tf.Tensor, info: DatasetInfo, task: str) -> dict[str, tf.Tensor]:
    """Concatenated [fine | coarse] label vectors as the label dict for `task` (one head unless "mtl")."""
    n_fine = info.num_classes["fine"]
    heads = {"fine": labels[:, :n_fine], "coarse": labels[:, n_fine:]}
    return heads if task == "mtl" else {task: heads[task]}


def _batches(split: Split, batch_size: int, training: bool, seed: int, shard: tuple[int, int] = (0, 1),
             start_step: int = 0) -> tf.data.Dataset:
    """(images uint8 [B, H, W, C], example indices [B], epochs [B]) batches, shuffled and repeated for training
(an example's epoch is its pass through the split, counted over the repeated stream; 0 for evaluation).
Training batches start at global batch `start_step` of that stream (a resumed run goes on where it stopped).

    `shard` (k, n): every process draws the same global batches of `batch_size` indices and keeps the k-th of n
    equal slices, so n processes together train on the batches one process would (and decode only their own
    images); a last partial batch is dropped, since the slices must be equal.
    """
    size = len(split)
    if training:
        # Each pass is a permutation drawn from (seed, pass) alone, so every iterator yields the same batches:
        # Keras iterates once to build the model and again to fit, and a shuffle buffer reshuffling per
        # iterator made one process train on other batches than a process group did.
        def one_pass(epoch):
            order = tf.random.experimental.stateless_shuffle(
                tf.range(size, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
            return tf.data.Dataset.from_tensor_slices((order, tf.fill([size], epoch)))

        first_pass, offset = divmod(start_step * batch_size, size)
        # Each pass holds every index once.
        ds = tf.data.Dataset.counter(first_pass).flat_map(traced(one_pass)).skip(offset)
    else:
        ds = tf.data.Dataset.range(size).map(traced(lambda i: (i, tf.constant(0, tf.int64))))
    k, n = shard
    if n > 1:
        per = batch_size // n
        ds = ds.batch(batch_size, drop_remainder=True).map(
            traced(lambda index, epoch: (index[k * per:(k + 1) * per], epoch[k * per:(k + 1) * per]))).unbatch()
        batch_size, training = per, True  # drop_remainder below
    if isinstance(split.images, FileImages):
        paths, size = tf.constant(split.images.paths.astype(str)), split.images.image_size
        # Deterministic order (as in memory): the same --seed gives the same batches.
        ds = ds.map(traced(lambda i, epoch: (decode(tf.gather(paths, i), size), i, epoch)),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        # A file that breaks after the load-time check is dropped, not allowed to end the epoch.
        return ds.ignore_errors(log_warning=True).batch(batch_size, drop_remainder=training)
    # Arrays live in memory once; shuffling and batching indices (not images) and gathering a whole batch
    # per map call is faster than slicing examples, and each pass's permutation holds 8-byte indices only.
    images = tf.constant(np.asarray(split.images))
    return ds.batch(batch_size, drop_remainder=training).map(
        traced(lambda index, epoch: (tf.gather(images, index), index, epoch)), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True)


def pipeline(split: Split, info: DatasetInfo, *, task: str = "mtl", batch_size: int = 128,
             training: bool = False, augment: str = "none", seed: int = 0,
             image_shape: tuple[int, int, int] | None = None, randaugment_ops: int = 2,
             randaugment_magnitude: float = 0.5, mixup_alpha: float = 0.2,
             cutmix_alpha: float = 1.0, shard: tuple[int, int] = (0, 1), start_step: int = 0) -> tf.data.Dataset:
    """Batches of (float32 images 0-255, one-hot label dict), graph-only from index to batch.

    Training pipelines shuffle, repeat forever (pass `steps_per_epoch` to fit) and apply the `augment`
    policies (see augment.py); evaluation pipelines never augment. Each batch's augmentation seed is
    [seed, batch number], so runs are reproducible. `image_shape` (H, W, C), when given, is the shape the
    model takes; `fit_images` adapts the images to it after augmentation. `shard` (k, n): this process's slice
    of every global batch of `batch_size` (see `_batches`); its augmentation seed is [seed, step * n + k].
    Training batches start at batch `start_step` (a run resumed after `start_step` steps gets the batches, and
    the augmentation, the uninterrupted run would have had).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    augmenter = augment_lib.batch_augmenter(
        augment, seed=seed, randaugment_ops=randaugment_ops, randaugment_magnitude=randaugment_magnitude,
        mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha) if training else None
    fine, coarse = tf.constant(split.fine), tf.constant(split.coarse)
    n = info.num_classes
    partial = bool((split.fine < 0).any() or (split.coarse < 0).any())
    if augmenter is not None:
        refuse_mixing_partial(split, augment)

    alternate = augmenter is not None and "alt_flip_crop" in parse_policies(augment)

    def prepare(x: tf.Tensor, index: tf.Tensor, epoch: tf.Tensor, step: tf.Tensor):
        # One label vector per example, so MixUp / CutMix mix both heads with the same weights.
        labels = tf.concat([tf.one_hot(tf.gather(fine, index), n["fine"]),
                            tf.one_hot(tf.gather(coarse, index), n["coarse"])], axis=-1)
        if augmenter is not None:
            flip = augment_lib.alternate_flips(index, epoch, seed, len(split)) if alternate else None
            x, labels = augmenter(x, labels, tf.stack([tf.cast(seed, tf.int64), step]), flip)
        if image_shape is not None:
            x = fit_images(x, tuple(image_shape))
        if partial:  # tf.one_hot(-1) is all zeros; the weight drops the head's loss and metric for the image
            weights = {"fine": tf.cast(tf.gather(fine, index) >= 0, tf.float32),
                       "coarse": tf.cast(tf.gather(coarse, index) >= 0, tf.float32)}
            heads = split_heads(labels, info, task)
            return tf.cast(x, tf.float32), heads, {h: weights[h] for h in heads}
        return tf.cast(x, tf.float32), split_heads(labels, info, task)

    slice_k, slices = shard  # distinct augmentation seeds per slice
    steps = tf.data.Dataset.counter(start=start_step * slices + slice_k, step=slices)
    ds = tf.data.Dataset.zip(_batches(split, batch_size, training, seed, shard, start_step), steps)
    return without_autotune_thread(ds.map(traced(lambda xi, step: prepare(*xi, step)),
                                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                                   .prefetch(tf.data.AUTOTUNE))
