"""Task losses and multi-task loss weighting, Keras-native and backend-agnostic (keras.ops only).

    fixed        gamma * L_fine + (1 - gamma) * L_coarse (the seed study), through compile's loss_weights.
    uncertainty  Kendall, Gal & Cipolla 2018: sum_k exp(-s_k) * L_k + s_k / 2 with learned s_k = log sigma_k^2
                 (their classification form, 1/sigma^2 * L + log sigma).
    dwa          Dynamic Weight Average, Liu, Johns & Davison 2019 (MTAN): w_k = K * softmax_k(r_k / T),
                 r_k = L_k(epoch - 1) / L_k(epoch - 2), T = 2; w_k = 1 for the first two epochs.
    famo         Fast Adaptive Multitask Optimization, Liu et al. (NeurIPS 2023): task logits xi, z = softmax(xi);
                 the model descends sum_k z_k log L_k, normalised (task k's gradient weight is
                 (z_k / L_k) / sum_j (z_j / L_j), so the weights sum to 1 like gamma / 1 - gamma); after each step
                 xi takes one Adam step (lr famo_lr, L2 famo_decay) along J_softmax(xi)^T delta, delta_k =
                 log L_k(before) - log L_k(after): a task whose loss fell faster than the others' loses weight.
                 O(1) per step and no second forward pass: "before" and "after" are consecutive batches' losses
                 (the reference code recomputes the loss of the same batch after the step), so delta carries
                 batch noise that Adam's moments average out.

The weighting state (log-variances or DWA weights) lives in a pass-through `TaskWeights` layer inside the
model, not in the loss: a model's variables are what every backend's train step differentiates and carries
(JAX's stateless step sees a variable only if the model owns it), and they are saved with the model. The
per-head losses read that layer's variables; DWA's weights are set between epochs by `DWACallback`.
No custom train step, so outputs, losses and compiled metrics keep the keys `fine` / `coarse`.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import layers, ops

from mtl_keras.config import DYNAMIC_WEIGHTINGS as DYNAMIC
from mtl_keras.config import WEIGHTINGS

LAYER_NAME = "loss_weighting"
FAMO_EPSILON = 1e-8


@keras.saving.register_keras_serializable(package="mtl_keras")
class TaskWeights(layers.Layer):
    """Holds per-task loss-weighting variables; passes its input through unchanged (identity at serving)."""

    def __init__(self, tasks: Sequence[str] = ("fine", "coarse"), method: str = "uncertainty",
                 famo_lr: float = 0.025, famo_decay: float = 0.01, **kwargs):
        super().__init__(**kwargs)
        if method not in DYNAMIC:
            raise ValueError(f"TaskWeights method must be one of {DYNAMIC}, got {method!r}")
        self.tasks = list(tasks)
        self.method = method
        self.famo_lr = float(famo_lr)
        self.famo_decay = float(famo_decay)

    def build(self, input_shape):
        n = len(self.tasks)
        if self.method == "uncertainty":  # s_k = log sigma_k^2 = 0: equal weights to start
            self.log_var = self.add_weight(name="log_var", shape=(n,), initializer="zeros", trainable=True)
        elif self.method == "famo":
            def state(name, shape=(n,)):
                return self.add_weight(name=name, shape=shape, initializer="zeros", trainable=False,
                                       autocast=False, aggregation="mean")
            self.famo_logits = state("famo_logits")  # xi: equal weights to start
            self.famo_m, self.famo_v = state("famo_adam_m"), state("famo_adam_v")
            self.famo_last = state("famo_last_loss")  # each task's latest batch loss
            self.famo_prev = state("famo_prev_loss")  # the losses when xi was last updated
            self.famo_fresh = state("famo_fresh")  # 1 for the tasks whose loss this step has recorded
            self.famo_steps = state("famo_steps", ())  # xi updates so far (+1: the first step only records)
        else:
            self.task_weight = self.add_weight(name="task_weight", shape=(n,), initializer="ones",
                                               trainable=False)

    def call(self, x):
        return x

    def scale_and_offset(self, task: str):
        """(multiplier, additive term) of task `task`'s loss, as backend tensors."""
        i = self.tasks.index(task)
        if self.method == "uncertainty":
            s = self.log_var[i]
            return ops.exp(-s), 0.5 * s
        return self.task_weight[i], 0.0

    def famo_loss(self, task: str, ce):
        """FAMO: per-example loss of `task` whose value is `ce` and whose gradient is w_task * grad(ce). Records
        the task's batch loss; the call that completes a step's set of losses (whichever task Keras computes
        last) updates xi."""
        i = self.tasks.index(task)
        mine = ops.arange(len(self.tasks)) == i
        level = ops.cast(ops.stop_gradient(ops.mean(ce)), "float32") + FAMO_EPSILON
        last = ops.where(mine, level, self.famo_last.value)
        fresh = ops.where(mine, 1.0, self.famo_fresh.value)
        self.famo_last.assign(last)
        # Before the first step the other tasks have no loss yet (0): weigh by z alone until they do.
        inverse = ops.softmax(self.famo_logits.value) / ops.where(last > 0, last, 1.0)
        weight = ops.cast(ops.stop_gradient(inverse[i] / ops.sum(inverse)), ce.dtype)
        ready = ops.all(fresh > 0)
        self.famo_update(last, ready)
        self.famo_fresh.assign(ops.where(ready, 0.0, fresh))
        return ce * weight + ops.stop_gradient(ce - ce * weight)  # logs the plain loss, descends the weighted

    def famo_update(self, losses, ready):
        """When `ready`, one FAMO step of the task logits from the losses at the last update to `losses`
        (Adam with L2 decay, as the reference code); the first one only records the losses."""
        steps = self.famo_steps.value
        started = ops.logical_and(ready, steps > 0)
        xi = self.famo_logits.value
        z = ops.softmax(xi)
        delta = ops.log(self.famo_prev.value + FAMO_EPSILON) - ops.log(losses + FAMO_EPSILON)
        grad = z * (delta - ops.sum(z * delta)) + self.famo_decay * xi  # J_softmax^T delta + L2
        m = 0.9 * self.famo_m.value + 0.1 * grad
        v = 0.999 * self.famo_v.value + 0.001 * grad * grad
        t = ops.maximum(steps, 1.0)
        step = self.famo_lr * (m / (1.0 - 0.9 ** t)) / (ops.sqrt(v / (1.0 - 0.999 ** t)) + 1e-8)
        self.famo_logits.assign(ops.where(started, xi - step, xi))
        self.famo_m.assign(ops.where(started, m, self.famo_m.value))
        self.famo_v.assign(ops.where(started, v, self.famo_v.value))
        self.famo_prev.assign(ops.where(ready, losses, self.famo_prev.value))
        self.famo_steps.assign(ops.where(ready, steps + 1.0, steps))

    def current(self) -> dict[str, float]:
        """The loss multiplier of each task now, as floats (for logs); FAMO's z = softmax(xi)."""
        if self.method == "uncertainty":
            return {t: float(np.exp(-v)) for t, v in zip(self.tasks, ops.convert_to_numpy(self.log_var))}
        if self.method == "famo":
            z = ops.convert_to_numpy(ops.softmax(self.famo_logits))
            return {t: float(v) for t, v in zip(self.tasks, z)}
        return {t: float(v) for t, v in zip(self.tasks, ops.convert_to_numpy(self.task_weight))}

    def get_config(self):
        return {**super().get_config(), "tasks": self.tasks, "method": self.method, "famo_lr": self.famo_lr,
                "famo_decay": self.famo_decay}


@keras.saving.register_keras_serializable(package="mtl_keras")
class TaskLoss(keras.losses.Loss):
    """Categorical cross-entropy of one head, scaled (and offset) by a `TaskWeights` layer.

    A model reloaded from .keras compiles this loss without its layer (a config cannot hold a reference), so
    it falls back to plain cross-entropy; call `compile_losses` again on the reloaded model to keep weighting.
    """

    def __init__(self, task: str = "fine", label_smoothing: float = 0.0, weights: TaskWeights | None = None,
                 **kwargs):
        kwargs.setdefault("name", f"{task}_task_loss")
        super().__init__(**kwargs)
        self.task = task
        self.label_smoothing = label_smoothing
        self.weights = weights

    def call(self, y_true, y_pred):
        ce = keras.losses.categorical_crossentropy(y_true, y_pred, label_smoothing=self.label_smoothing)
        if self.weights is None:
            return ce
        if self.weights.method == "famo":
            return self.weights.famo_loss(self.task, ce)
        scale, offset = self.weights.scale_and_offset(self.task)
        return ce * ops.cast(scale, ce.dtype) + ops.cast(offset, ce.dtype)

    def get_config(self):
        config = super().get_config()
        return {**config, "task": self.task, "label_smoothing": self.label_smoothing}


class DWACallback(keras.callbacks.Callback):
    """Sets DWA weights at each epoch start from the last two epochs' mean training losses per task."""

    def __init__(self, weights: TaskWeights, temperature: float = 2.0):
        super().__init__()
        self.weights = weights
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


class LogTaskWeights(keras.callbacks.Callback):
    """Adds `<task>_weight` (the loss multiplier) to each epoch's logs, so history.csv records it."""

    def __init__(self, weights: TaskWeights):
        super().__init__()
        self.weights = weights

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update({f"{t}_weight": w for t, w in self.weights.current().items()})


def check_weighting(method: str, heads: Sequence[str]) -> None:
    """Raises ValueError (one line) for an unknown method or a dynamic method on a single-task model."""
    if method not in WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {method!r}; choose one of {', '.join(WEIGHTINGS)}")
    if method in DYNAMIC and len(heads) < 2:
        raise ValueError(f"loss weighting {method!r} weighs two task losses, but the model has one head "
                         f"({', '.join(heads)}); use 'fixed' for a single-task run")


def _weights_layer(model: keras.Model, method: str) -> TaskWeights:
    try:
        layer = model.get_layer(LAYER_NAME)
    except ValueError:
        raise ValueError(f"loss weighting {method!r} needs a model built with loss_weighting={method!r}") from None
    if layer.method != method:
        raise ValueError(f"the model was built for loss weighting {layer.method!r}, not {method!r}")
    return layer


def compile_losses(model: keras.Model, heads: Sequence[str], method: str = "fixed", *, gamma: float = 0.5,
                   label_smoothing: float = 0.0, famo_lr: float | None = None,
                   famo_decay: float | None = None) -> tuple[dict, dict | None]:
    """Returns (loss dict, loss_weights dict or None) for `model.compile`, keyed by head name.

    A dynamic method needs the model built with `loss_weighting=method` (it owns the `TaskWeights` layer);
    `famo_lr` / `famo_decay`, when given, set FAMO's logit step size and decay on that layer.
    """
    check_weighting(method, heads)
    if method == "fixed":
        loss = {h: keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing) for h in heads}
        weights = {"fine": gamma, "coarse": 1.0 - gamma} if len(heads) == 2 else {h: 1.0 for h in heads}
        return loss, weights
    layer = _weights_layer(model, method)
    if famo_lr is not None:
        layer.famo_lr = float(famo_lr)
    if famo_decay is not None:
        layer.famo_decay = float(famo_decay)
    return {h: TaskLoss(h, label_smoothing, layer) for h in heads}, None


def weighting_callbacks(model: keras.Model, method: str = "fixed") -> list[keras.callbacks.Callback]:
    """Callbacks for `model.fit` that a weighting method needs (DWA's updates) and that log task weights."""
    if method not in DYNAMIC:
        return []
    layer = _weights_layer(model, method)
    return ([DWACallback(layer)] if method == "dwa" else []) + [LogTaskWeights(layer)]
