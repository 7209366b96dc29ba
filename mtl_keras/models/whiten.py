"""--stem_init=whitened: the trunk's first convolution starts as a whitening (PCA) filter bank of image patches.

airbench (Keller Jordan's CIFAR-10 speed runs) sets its first conv, before training, to the eigenvectors of the
training patches' covariance scaled by 1 / sqrt(eigenvalue + eps), each with both signs, so the layer's outputs
start decorrelated with unit variance. Here the filters come in +/- pairs in order of decreasing variance: a
layer with fewer than 2 x (kh * kw * channels) filters keeps the leading directions (both signs), and one with
more keeps Keras's initialisation in the rest. The covariance is centred (the stem convs have no bias, and
their BatchNorm removes the mean anyway). Numpy only; the caller passes images already through the model's
preprocessing.
"""

from __future__ import annotations

import keras
import numpy as np

# airbench's eps on unit-variance pixels, here relative to the mean eigenvalue (the mean pixel variance), so the
# same setting works for [-1, 1] and normalised inputs.
EPS = 5e-4
SAMPLE_IMAGES = 1024  # training images the filters are computed from
MAX_PATCHES = 200_000  # enough for a stable covariance of up to a few hundred dimensions


def sample(images, seed: int, count: int = SAMPLE_IMAGES) -> np.ndarray:
    """Up to `count` training images [N, H, W, C] drawn at random by `seed` (decodes file datasets' sample only)."""
    n = len(images)
    index = np.sort(np.random.default_rng(seed).choice(n, min(n, count), replace=False))
    return np.asarray(images[index])


def whitening_filters(pixels: np.ndarray, kernel_size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Whitening filters [kh, kw, C, 2 * kh * kw * C] of the kh x kw patches of `pixels` [N, H, W, C]: the +/-
    pairs of eigenvectors / sqrt(eigenvalue + eps), largest eigenvalue first, in Keras's kernel layout."""
    kh, kw = kernel_size
    c = pixels.shape[-1]
    windows = np.lib.stride_tricks.sliding_window_view(pixels.astype(np.float32), (kh, kw), axis=(1, 2))
    patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, kh * kw * c)  # rows in (kh, kw, C) order
    if len(patches) > MAX_PATCHES:
        patches = patches[np.random.default_rng(seed).choice(len(patches), MAX_PATCHES, replace=False)]
    patches = patches.astype(np.float64)
    patches -= patches.mean(0)
    eigenvalues, eigenvectors = np.linalg.eigh(patches.T @ patches / len(patches))
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]  # largest first
    scaled = eigenvectors / np.sqrt(np.maximum(eigenvalues, 0) + EPS * eigenvalues.mean())
    pairs = np.stack([scaled, -scaled], axis=-1).reshape(len(scaled), -1)  # +v1, -v1, +v2, -v2, ...
    return pairs.reshape(kh, kw, c, -1).astype(np.float32)


def first_conv(trunk: keras.Model) -> keras.layers.Conv2D | None:
    """The trunk's first Conv2D when it reads the trunk's input directly, else None."""
    convs = [layer for layer in trunk.layers if isinstance(layer, keras.layers.Conv2D)]
    if convs and convs[0].input is trunk.inputs[0]:
        return convs[0]
    return None


def whiten_first_conv(trunk: keras.Model, pixels: np.ndarray, seed: int = 0) -> None:
    """Sets the trunk's first conv from `pixels` (preprocessed training images): as many filters as it has,
    up to the 2 x patch dimensions of whitening_filters."""
    conv = first_conv(trunk)
    if conv is None:
        raise ValueError(f"--stem_init=whitened needs a trunk whose first layer is a convolution; {trunk.name} "
                         "has none")
    kernel = keras.ops.convert_to_numpy(conv.kernel).copy()
    filters = whitening_filters(pixels, kernel.shape[:2], seed)
    fit = min(kernel.shape[-1], filters.shape[-1])
    kernel[..., :fit] = filters[..., :fit]
    conv.kernel.assign(kernel)
