"""uncertainty: Kendall, Gal & Cipolla 2018, sum_k exp(-s_k) * L_k + s_k / 2 with learned s_k = log sigma_k^2
(their classification form, 1/sigma^2 * L + log sigma). The s_k are trainable weights of the model, so the
optimizer learns them with the rest."""

from __future__ import annotations

import numpy as np
from keras import ops


def build(layer, n: int) -> None:
    # s_k = log sigma_k^2 = 0: equal weights to start
    layer.log_var = layer.add_weight(name="log_var", shape=(n,), initializer="zeros", trainable=True)


def loss(layer, i: int, ce):
    s = layer.log_var[i]
    return ce * ops.cast(ops.exp(-s), ce.dtype) + ops.cast(0.5 * s, ce.dtype)


def weights(layer) -> np.ndarray:
    return np.exp(-ops.convert_to_numpy(layer.log_var))


def gradient_weight(layer, i: int, level: float) -> float:
    return float(weights(layer)[i])


def callbacks(layer) -> list:
    return []
