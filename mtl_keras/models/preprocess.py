"""Deterministic preprocessing layers that live inside the model, so exports take raw 0-255 pixels.

Constants are built inside `call`, not in `build`: a tensor made in `build` is a capture of the traced
SavedModel function, and tf2onnx turns captures into extra graph inputs ("50063:0") that serving lacks.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import layers, ops


@keras.saving.register_keras_serializable(package="mtl_keras")
class Normalize(layers.Layer):
    """(x - mean) / sqrt(variance) per channel, like a Keras Normalization layer adapted on the training images."""

    def __init__(self, mean: Sequence[float], variance: Sequence[float], **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(m) for m in mean]
        self.variance = [float(v) for v in variance]

    def call(self, x):
        mean = ops.convert_to_tensor(np.asarray(self.mean, "float32"), x.dtype)
        std = np.sqrt(np.maximum(np.asarray(self.variance, "float64"), 1e-14)).astype("float32")
        return (x - mean) * ops.convert_to_tensor(1.0 / std, x.dtype)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "variance": self.variance}


@keras.saving.register_keras_serializable(package="mtl_keras")
class Resize(layers.Layer):
    """Bilinear resize to `size` x `size` (what layers.Resizing does, without its training side effect).

    keras.layers.Resizing's call defaults to training=True, and a model called with training=None then
    runs every later layer in training mode: dropout fired on plain `model(x)` calls (Keras 3.15).
    """

    def __init__(self, size: int, **kwargs):
        super().__init__(**kwargs)
        self.size = size

    def call(self, x):
        return ops.image.resize(x, (self.size, self.size), interpolation="bilinear")

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.size, self.size, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "size": self.size}


def channel_stats(images, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and variance of uint8/float images [N, H, W, C] (what Normalization.adapt computes)."""
    total = np.zeros(images.shape[-1]), np.zeros(images.shape[-1])
    for i in range(0, len(images), chunk):  # chunks: float64 of all CIFAR pixels would take ~1.5 GB
        x = images[i:i + chunk].astype(np.float64).reshape(-1, images.shape[-1])
        total = total[0] + x.sum(0), total[1] + (x * x).sum(0)
    n = images.size / images.shape[-1]
    mean = total[0] / n
    return mean.tolist(), (total[1] / n - mean ** 2).tolist()
