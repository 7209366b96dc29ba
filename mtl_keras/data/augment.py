"""Random augmentation for tf.data, applied to whole batches; none of it ever enters a model.

Policies (`--augment`, comma-separated) run in a fixed order whatever order they are given in:
flip_crop (random flip + translate-by-crop) or alt_flip_crop (the same, but each image flipped on alternate
epochs: see alternate_flips) -> randaugment -> mixup / cutmix (both given: each batch
picks one). MixUp and CutMix mix the fine and coarse one-hot labels concatenated into one vector, so
both heads always see the same lambda and the same box.

flip_crop, mixup and cutmix are stateless: they take a [2] int64 seed per batch, so a pipeline is
reproducible and they give the same result eagerly and inside tf.data. RandAugment is Keras's layer, which
keeps its own seed state: reproducible from a seed when called in order, not bit-for-bit under parallel maps.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from mtl_keras.config import parse_policies

def _reflect(index: tf.Tensor, size: int) -> tf.Tensor:
    """Maps indices in [-size + 1, 2 * size - 2] into [0, size) as REFLECT padding does (no edge repeat)."""
    return (size - 1) - tf.abs((size - 1) - tf.abs(index))


def random_flip_crop(images: tf.Tensor, seed: tf.Tensor, pad: int = 4, flip: tf.Tensor | None = None) -> tf.Tensor:
    """Batched random horizontal flip and translate-by-crop (reflect padding by `pad` pixels); `flip` [B] bool,
    when given, decides the flips instead of a coin (alternating flip).

    Same result as flip, `tf.pad(mode="REFLECT")`, crop, but done as two index gathers: the padding and the
    flip copy whole batches and were ~6x slower than the gathers themselves.
    """
    b, h, w = tf.shape(images)[0], images.shape[1], images.shape[2]
    seeds = tf.random.experimental.stateless_split(seed, 3)
    if flip is None:
        flip = tf.random.stateless_uniform([b], seeds[0]) < 0.5
    oy = tf.random.stateless_uniform([b], seeds[1], 0, 2 * pad + 1, tf.int32)
    ox = tf.random.stateless_uniform([b], seeds[2], 0, 2 * pad + 1, tf.int32)
    rows = _reflect(oy[:, None] - pad + tf.range(h)[None], h)  # [b, h]
    cols = _reflect(ox[:, None] - pad + tf.range(w)[None], w)  # [b, w], in the flipped image's frame
    cols = tf.where(flip[:, None], (w - 1) - cols, cols)
    return tf.gather(tf.gather(images, rows, batch_dims=1), cols, axis=2, batch_dims=1)


def alternate_flips(index: tf.Tensor, epoch: tf.Tensor, seed: int, size: int) -> tf.Tensor:
    """Alternating flip (airbench): image `index` of a split of `size` is flipped in epoch `epoch` when the epoch's
    parity differs from a fixed random bit of the image, so over any two consecutive epochs it is seen once each
    way (a coin per epoch leaves a quarter of the images unflipped, or flipped, twice)."""
    bits = tf.random.stateless_uniform([size], tf.constant([seed, 0x5F11], tf.int64), 0, 2, tf.int64)
    return tf.not_equal(tf.gather(bits, index), epoch % 2)


def _beta(shape, alpha: float, seed: tf.Tensor) -> tf.Tensor:
    """Stateless Beta(alpha, alpha) samples, as X / (X + Y) of two gamma draws."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    x = tf.random.stateless_gamma(shape, seeds[0], alpha)
    y = tf.random.stateless_gamma(shape, seeds[1], alpha)
    return x / tf.maximum(x + y, 1e-12)


def _partners(batch: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """A stateless random permutation of range(batch): who each example is mixed with."""
    return tf.argsort(tf.random.stateless_uniform([batch], seed))


def mixup(images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor, alpha: float = 0.2):
    """MixUp: each example blended with a random partner, lam ~ Beta(alpha, alpha) per example.

    `labels` is one float vector per example (concatenated heads); returns float32 images and labels.
    """
    b = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 2)
    lam = _beta([b], alpha, seeds[0])
    partner = _partners(b, seeds[1])
    x = tf.cast(images, tf.float32)
    other = tf.gather(x, partner)
    x = other + lam[:, None, None, None] * (x - other)  # this form never rounds outside [min, max] of the pair
    return x, lam[:, None] * labels + (1.0 - lam[:, None]) * tf.gather(labels, partner)


def cutmix(images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor, alpha: float = 1.0):
    """CutMix: a random box of each image replaced by the same box of a random partner.

    The box has area (1 - lam) of the image with lam ~ Beta(alpha, alpha), a uniform random centre and
    is clipped at the border (as in the paper). Labels are mixed by the pixels actually pasted, so the
    label weight is exact after clipping and rounding to whole pixels.
    """
    b, h, w = tf.shape(images)[0], images.shape[1], images.shape[2]
    seeds = tf.random.experimental.stateless_split(seed, 4)
    cut = tf.sqrt(1.0 - _beta([b], alpha, seeds[0]))
    cy = tf.random.stateless_uniform([b], seeds[1], 0.0, float(h))
    cx = tf.random.stateless_uniform([b], seeds[2], 0.0, float(w))
    y0 = tf.clip_by_value(tf.round(cy - cut * h / 2), 0.0, float(h))
    y1 = tf.clip_by_value(tf.round(cy + cut * h / 2), 0.0, float(h))
    x0 = tf.clip_by_value(tf.round(cx - cut * w / 2), 0.0, float(w))
    x1 = tf.clip_by_value(tf.round(cx + cut * w / 2), 0.0, float(w))
    ys, xs = tf.range(h, dtype=tf.float32)[None, :], tf.range(w, dtype=tf.float32)[None, :]
    in_rows = (ys >= y0[:, None]) & (ys < y1[:, None])  # [b, h]
    in_cols = (xs >= x0[:, None]) & (xs < x1[:, None])  # [b, w]
    box = in_rows[:, :, None, None] & in_cols[:, None, :, None]
    partner = _partners(b, seeds[3])
    x = tf.cast(images, tf.float32)
    x = tf.where(box, tf.gather(x, partner), x)
    lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)  # share of the image left unchanged
    return x, lam[:, None] * labels + (1.0 - lam[:, None]) * tf.gather(labels, partner)


class SwitchRandAugment(keras.layers.RandAugment):
    """`keras.layers.RandAugment` that runs only the chosen op per step.

    Keras computes all 11 ops for every step and keeps one with `where`; a `tf.switch_case` on the same
    random draw gives identical output 7-16x faster (CIFAR-sized batches, BUILD_NOTES.md). TensorFlow only:
    it is meant for tf.data, which is TensorFlow whatever the Keras backend.
    """

    def transform_images(self, images, transformation, training=True):
        if not training:
            return super().transform_images(images, transformation, training)
        images = tf.cast(images, self.compute_dtype)
        ops = transformation["transforms"]

        def branch(name, x):
            return lambda: tf.cast(getattr(self, name).transform_images(x, ops[name]), self.compute_dtype)

        for i in range(self.num_ops):
            choice = tf.cast(transformation["layer_idxes"][i], tf.int32)
            images = tf.switch_case(choice, [branch(name, images) for name in ops])
        return images


Augmenter = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


def batch_augmenter(spec: str, *, seed: int = 0, randaugment_ops: int = 2, randaugment_magnitude: float = 0.5,
                    mixup_alpha: float = 0.2, cutmix_alpha: float = 1.0) -> Augmenter | None:
    """A graph-only fn (images [B,H,W,C], labels [B,K], seed [2], flip [B] bool for alt_flip_crop) ->
    (float32 images 0-255, labels).

    None when `spec` asks for no augmentation. The Keras layer is built here, outside any `Dataset.map`:
    building it inside fails (a tf.function may not create variables on a second trace).
    """
    policies = parse_policies(spec)
    if not policies:
        return None
    rand_augment = None
    if "randaugment" in policies:
        rand_augment = SwitchRandAugment(value_range=(0, 255), num_ops=randaugment_ops,
                                         factor=randaugment_magnitude, seed=seed)
    mixers = [(mixup, mixup_alpha)] if "mixup" in policies else []
    mixers += [(cutmix, cutmix_alpha)] if "cutmix" in policies else []

    def apply(images: tf.Tensor, labels: tf.Tensor, step_seed: tf.Tensor, flip: tf.Tensor | None = None):
        seeds = tf.random.experimental.stateless_split(step_seed, 3)
        if "flip_crop" in policies:
            images = random_flip_crop(images, seeds[0])
        if "alt_flip_crop" in policies:  # `flip`: the pipeline's alternate_flips
            images = random_flip_crop(images, seeds[0], flip=flip)
        images = tf.cast(images, tf.float32)
        if rand_augment is not None:
            images = tf.clip_by_value(rand_augment(images, training=True), 0.0, 255.0)
        if len(mixers) == 1:
            images, labels = mixers[0][0](images, labels, seeds[1], mixers[0][1])
        elif mixers:  # mixup and cutmix: a fair coin per batch, as timm does
            coin = tf.random.stateless_uniform([], seeds[2]) < 0.5
            (fn_a, alpha_a), (fn_b, alpha_b) = mixers
            images, labels = tf.cond(coin, lambda: fn_a(images, labels, seeds[1], alpha_a),
                                     lambda: fn_b(images, labels, seeds[1], alpha_b))
        return images, labels

    return apply
