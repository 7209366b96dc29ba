"""augment.py's policies in numpy for the host pipeline (no TensorFlow), in the same order and with the same
semantics: flip_crop -> mixup / cutmix (both given: a fair coin per batch), labels = the fine and coarse one-hot
vectors concatenated, so both heads see the same lambda and box.

Randomness comes from a numpy Generator seeded per batch, so a run is reproducible but draws other numbers than
TensorFlow's stateless ops: the two pipelines agree in distribution, and bit for bit once the draws are fixed
(tests/test_host_pipeline.py feeds both the same offsets, lambdas and partners). RandAugment is a Keras layer that
runs in tf.data; the host pipeline refuses it, and alt_flip_crop, by name (feeds.check).
"""

from __future__ import annotations

import numpy as np

from mtl_keras.config import parse_policies
from mtl_keras.errors import ConfigError

HOST_POLICIES = ("flip_crop", "mixup", "cutmix")


def _reflect(index: np.ndarray, size: int) -> np.ndarray:
    """augment._reflect: indices in [-size + 1, 2 * size - 2] mapped into [0, size) as REFLECT padding does."""
    return (size - 1) - np.abs((size - 1) - np.abs(index))


def flip_crop_with(images: np.ndarray, flip: np.ndarray, oy: np.ndarray, ox: np.ndarray, pad: int = 4) -> np.ndarray:
    """augment.random_flip_crop for given draws: flip [B] bool, offsets oy / ox [B] in 0..2*pad."""
    b, h, w = images.shape[:3]
    rows = _reflect(oy[:, None] - pad + np.arange(h), h)
    cols = _reflect(ox[:, None] - pad + np.arange(w), w)
    cols = np.where(flip[:, None], (w - 1) - cols, cols)
    return images[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def flip_crop(images: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    b = len(images)
    return flip_crop_with(images, rng.random(b) < 0.5, rng.integers(0, 2 * pad + 1, b),
                          rng.integers(0, 2 * pad + 1, b), pad)


def mixup_with(images: np.ndarray, labels: np.ndarray, lam: np.ndarray, partner: np.ndarray):
    """augment.mixup for given draws: lam [B] float32, partner [B] a permutation."""
    x = images.astype(np.float32)
    other = x[partner]
    x = other + lam[:, None, None, None] * (x - other)  # augment.mixup's form: never outside the pair's range
    return x, lam[:, None] * labels + (1.0 - lam[:, None]) * labels[partner]


def mixup(images, labels, rng: np.random.Generator, alpha: float = 0.2):
    return mixup_with(images, labels, rng.beta(alpha, alpha, len(images)).astype(np.float32),
                      rng.permutation(len(images)))


def cutmix_with(images: np.ndarray, labels: np.ndarray, cut: np.ndarray, cy: np.ndarray, cx: np.ndarray,
                partner: np.ndarray):
    """augment.cutmix for given draws: cut = sqrt(1 - lam) [B], box centre cy, cx [B], partner [B]; float32
    arithmetic as TensorFlow does it, so the same draws paste the same boxes."""
    h, w = images.shape[1:3]
    cut, cy, cx = (np.asarray(v, np.float32) for v in (cut, cy, cx))
    y0, y1 = (np.clip(np.round(cy + s * (cut * np.float32(h) / np.float32(2))), 0, h).astype(np.float32)
              for s in (-1, 1))
    x0, x1 = (np.clip(np.round(cx + s * (cut * np.float32(w) / np.float32(2))), 0, w).astype(np.float32)
              for s in (-1, 1))
    ys, xs = np.arange(h, dtype=np.float32)[None], np.arange(w, dtype=np.float32)[None]
    in_rows = (ys >= y0[:, None]) & (ys < y1[:, None])
    in_cols = (xs >= x0[:, None]) & (xs < x1[:, None])
    box = in_rows[:, :, None, None] & in_cols[:, None, :, None]
    x = images.astype(np.float32)
    x = np.where(box, x[partner], x)
    lam = (np.float32(1) - (y1 - y0) * (x1 - x0) / np.float32(h * w)).astype(np.float32)
    return x, lam[:, None] * labels + (1.0 - lam[:, None]) * labels[partner]


def cutmix(images, labels, rng: np.random.Generator, alpha: float = 1.0):
    b, h, w = images.shape[:3]
    cut = np.sqrt(1.0 - rng.beta(alpha, alpha, b))
    return cutmix_with(images, labels, cut, rng.uniform(0.0, h, b), rng.uniform(0.0, w, b), rng.permutation(b))


def augment_batch(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator, policies: tuple[str, ...],
                  mixup_alpha: float = 0.2, cutmix_alpha: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """augment.batch_augmenter's order on one batch: (uint8 images, float32 labels) -> float32 0-255, labels."""
    if "flip_crop" in policies:
        images = flip_crop(images, rng)
    mixers = [(mixup, mixup_alpha)] * ("mixup" in policies) + [(cutmix, cutmix_alpha)] * ("cutmix" in policies)
    if mixers:
        fn, alpha = mixers[0] if len(mixers) == 1 or rng.random() < 0.5 else mixers[1]
        return fn(images, labels, rng, alpha)
    return images.astype(np.float32), labels


def refuse_mixing_partial(split, augment: str) -> None:
    """MixUp / CutMix on a split with partial labels would mix labelled and unlabelled heads: one ConfigError."""
    partial = bool((split.fine < 0).any() or (split.coarse < 0).any())
    if partial and {"mixup", "cutmix"} & set(parse_policies(augment)):
        raise ConfigError(f"--augment={augment}: MixUp / CutMix would mix labelled and unlabelled heads; the data "
                          f"has images with one label only, so drop mixup and cutmix")
