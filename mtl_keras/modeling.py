"""Model construction for a run: build from the config, compile with the recipe, float32 copies for export.

Backend-agnostic (no TensorFlow import), so the same code builds and compiles on JAX.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras

from mtl_keras import losses
from mtl_keras.config import PRECISION_POLICIES, TrainConfig
from mtl_keras.models import build_model

if TYPE_CHECKING:
    from mtl_keras.data.types import DatasetInfo



def heads_for(config: TrainConfig, info: DatasetInfo) -> dict[str, int]:
    """Task name -> class count of the heads `config.task` trains."""
    return {name: n for name, n in info.num_classes.items() if config.task in ("mtl", name)}


def build(config: TrainConfig, info: DatasetInfo, input_shape, norm_stats=None) -> keras.Model:
    """The uncompiled model for `config` (under the current Keras dtype policy).

    `norm_stats` = per-channel (mean, variance) of the training pixels, used by trunks in ADAPTED_NORM.
    """
    return build_model(config.model, input_shape, heads_for(config, info), variant=config.variant,
                       stem=config.stem, image_size=config.image_size, dropout=config.dropout, head=config.head,
                       head_dropout=config.head_dropout, stochastic_depth=config.stochastic_depth,
                       norm_stats=norm_stats, loss_weighting=config.loss_weighting)


def plain_copy(model: keras.Model, config: TrainConfig, info: DatasetInfo, norm_stats=None, *,
               force: bool = False) -> keras.Model:
    """The same weights in a float32 model built outside any distribution scope (`model` itself when it
    already is one and not `force`): what is evaluated, saved and exported, whatever trained it."""
    if model.dtype_policy.name == "float32" and not force:
        return model
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        copy = build(config, info, model.input_shape[1:], norm_stats)
    finally:
        keras.config.set_dtype_policy(previous)
    copy.set_weights(model.get_weights())
    return copy


def build_and_compile(config: TrainConfig, info: DatasetInfo, input_shape, steps_per_epoch: int,
                      norm_stats=None) -> keras.Model:
    """The model for `config.task`, compiled with its optimizer, LR schedule, per-head losses and metrics.

    Mixed precision (`config.mixed_precision`) applies to this model only; its outputs stay float32, and
    Keras wraps the optimizer in a LossScaleOptimizer for float16.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(PRECISION_POLICIES[config.mixed_precision])
    try:
        model = build(config, info, input_shape, norm_stats)
    finally:
        keras.config.set_dtype_policy(previous)
    heads = heads_for(config, info)
    total = config.epochs * steps_per_epoch
    warmup = min(int(config.warmup_epochs * steps_per_epoch), total - 1)
    schedule = config.learning_rate if config.lr_schedule == "constant" else keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=total - warmup, warmup_target=config.learning_rate, warmup_steps=warmup)
    extra = {"global_clipnorm": config.grad_clip_norm or None}
    if config.ema:  # EMA weights replace the trained ones at the end of fit (Keras finalize_variable_values)
        extra |= {"use_ema": True, "ema_momentum": config.ema_momentum}
    if config.optimizer == "adam":
        optimizer = keras.optimizers.Adam(schedule, **extra)
    else:
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay, **extra)
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "embedding", "log_var"])
    loss, loss_weights = losses.compile_losses(model, list(heads), config.loss_weighting, gamma=config.gamma,
                                               label_smoothing=config.label_smoothing)
    # Top-5 where top-1 is a hard target (CIFAR-100's 100 fine classes); names log as fine_top5_accuracy.
    metrics = {h: ["accuracy"] + ([keras.metrics.TopKCategoricalAccuracy(5, name="top5_accuracy")] if n >= 100
                                  else []) for h, n in heads.items()}
    model.compile(optimizer=optimizer, loss=loss, loss_weights=loss_weights, metrics=metrics,
                  jit_compile=config.jit_compile)
    return model
