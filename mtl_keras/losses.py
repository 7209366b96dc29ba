"""Task losses and multi-task loss weighting, Keras-native and backend-agnostic (keras.ops only).

The weightings (fixed, uncertainty, dwa, famo, ...) are registered in mtl_keras.weightings, one module each;
nothing here tests a weighting's name. A stateful weighting's state (log-variances, DWA weights, FAMO's task
logits) lives in a pass-through `TaskWeights` layer inside the model, not in the loss: a model's variables are
what every backend's train step differentiates and carries (JAX's stateless step sees a variable only if the
model owns it), and they are saved with the model. The per-head losses read that layer's variables.
No custom train step, so outputs, losses and compiled metrics keep the keys `fine` / `coarse`.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from mtl_keras import weightings

LAYER_NAME = "loss_weighting"
# Every stateful weighting's settings: a layer's config may hold another's (older versions saved FAMO's
# settings on every TaskWeights layer), which it ignores.
_LAYER_SETTINGS = {key for spec in weightings.REGISTRY.values() if spec.stateful for key in spec.settings}


@keras.saving.register_keras_serializable(package="mtl_keras")
class TaskWeights(layers.Layer):
    """Holds a stateful weighting's per-task variables; passes its input through unchanged (identity at serving).

    `settings` are the weighting's (e.g. famo_lr=0.1), by config name; those not given take config.py's defaults.
    """

    def __init__(self, tasks: Sequence[str] = ("fine", "coarse"), method: str = "uncertainty", **kwargs):
        given = {key: kwargs.pop(key) for key in list(kwargs) if key in _LAYER_SETTINGS}
        super().__init__(**kwargs)
        if method not in weightings.STATEFUL:
            raise ValueError(f"TaskWeights method must be one of {weightings.STATEFUL}, got {method!r}")
        self.tasks = list(tasks)
        self.method = method
        self.settings = weightings.settings(method, given)

    @property
    def behaviour(self):
        return weightings.REGISTRY[self.method].behaviour

    def build(self, input_shape):
        self.behaviour.build(self, len(self.tasks))

    def call(self, x):
        return x

    def loss(self, task: str, ce):
        """Task `task`'s weighted per-example loss from its per-example cross-entropy `ce`."""
        return self.behaviour.loss(self, self.tasks.index(task), ce)

    def gradient_weight(self, task: str, level: float) -> float:
        """The multiplier of `task`'s cross-entropy gradient in a loss call whose batch mean cross-entropy is
        `level`, from the state now."""
        return self.behaviour.gradient_weight(self, self.tasks.index(task), level)

    def current(self) -> dict[str, float]:
        """The loss multiplier of each task now, as floats (for logs); FAMO's z = softmax(xi)."""
        return {t: float(v) for t, v in zip(self.tasks, self.behaviour.weights(self))}

    def get_config(self):
        return {**super().get_config(), "tasks": self.tasks, "method": self.method, **self.settings}


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
        return ce if self.weights is None else self.weights.loss(self.task, ce)

    def get_config(self):
        config = super().get_config()
        return {**config, "task": self.task, "label_smoothing": self.label_smoothing}


class LogTaskWeights(keras.callbacks.Callback):
    """Adds `<task>_weight` (the loss multiplier) to each epoch's logs, so history.csv records it."""

    def __init__(self, weights: TaskWeights):
        super().__init__()
        self.weights = weights

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update({f"{t}_weight": w for t, w in self.weights.current().items()})


def check_weighting(method: str, heads: Sequence[str]) -> None:
    """Raises ValueError (one line) for an unknown method or a stateful method on a single-task model."""
    if weightings.get(method).stateful and len(heads) < 2:
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


def compile_losses(model: keras.Model, heads: Sequence[str], method: str = "fixed", *,
                   label_smoothing: float = 0.0, **settings) -> tuple[dict, dict | None]:
    """Returns (loss dict, loss_weights dict or None) for `model.compile`, keyed by head name.

    `settings`: the weighting's, by config name (fixed: gamma); those not given take config.py's defaults.
    A stateful method needs the model built with `loss_weighting=method` (it owns the `TaskWeights` layer, which
    was given its settings when built): settings given here must be the layer's.
    """
    check_weighting(method, heads)
    spec = weightings.get(method)
    unknown = sorted(set(settings) - set(spec.settings))
    if unknown:
        raise ValueError(f"loss weighting {method!r} has no setting {', '.join(unknown)}")
    if not spec.stateful:
        loss = {h: keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing) for h in heads}
        return loss, spec.behaviour.loss_weights(heads, weightings.settings(method, settings))
    layer = _weights_layer(model, method)
    differ = {k: v for k, v in settings.items() if layer.settings[k] != v}
    if differ:
        raise ValueError(f"the model's {method} layer was built with "
                         + ", ".join(f"{k}={layer.settings[k]}" for k in differ)
                         + f", not {', '.join(f'{k}={v}' for k, v in differ.items())}: build it with these")
    return {h: TaskLoss(h, label_smoothing, layer) for h in heads}, None


def weighting_callbacks(model: keras.Model, method: str = "fixed") -> list[keras.callbacks.Callback]:
    """Callbacks for `model.fit` that a weighting method needs (e.g. DWA's updates) and that log task weights."""
    if not weightings.get(method).stateful:
        return []
    layer = _weights_layer(model, method)
    return [*layer.behaviour.callbacks(layer), LogTaskWeights(layer)]
