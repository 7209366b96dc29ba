"""dwa: Dynamic Weight Average, Liu, Johns & Davison 2019 (MTAN): w_k = K * softmax_k(r_k / T),
r_k = L_k(epoch - 1) / L_k(epoch - 2), T = 2; w_k = 1 for the first two epochs. The weights are a non-trainable
variable of the model that `DWACallback` sets between epochs."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


def build(layer, n: int) -> None:
    layer.task_weight = layer.add_weight(name="task_weight", shape=(n,), initializer="ones", trainable=False)


def loss(layer, i: int, ce):
    return ce * ops.cast(layer.task_weight[i], ce.dtype)


def weights(layer) -> np.ndarray:
    return ops.convert_to_numpy(layer.task_weight)


def gradient_weight(layer, i: int, level: float) -> float:
    return float(weights(layer)[i])


def callbacks(layer) -> list:
    return [DWACallback(layer)]


class DWACallback(keras.callbacks.Callback):
    """Sets DWA weights at each epoch start from the last two epochs' mean training losses per task."""

    def __init__(self, weights, temperature: float = 2.0):
        super().__init__()
        self.weights = weights  # the TaskWeights layer
        self.temperature = temperature
        self.history: list[np.ndarray] = []

    def on_epoch_begin(self, epoch, logs=None):
        if len(self.history) < 2:
            return
        ratio = self.history[-1] / np.maximum(self.history[-2], 1e-12)
        w = np.exp((ratio - ratio.max()) / self.temperature)
        # On JAX, fit re-reads model variables at the first step after on_epoch_begin, so this assignment lands.
        self.weights.task_weight.assign((len(w) * w / w.sum()).astype("float32"))

    def on_epoch_end(self, epoch, logs=None):
        # The logged per-head loss is the weighted one; the weights were constant through the epoch.
        now = self.weights.current()
        self.history.append(np.array([logs[f"{t}_loss"] / now[t] for t in self.weights.tasks]))
