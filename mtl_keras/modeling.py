"""Model construction for a run: build from the model section, compile with the optimisation section, float32
copies for export.

Backend-agnostic (no TensorFlow import), so the same code builds and compiles on JAX:

    from mtl_keras import config, modeling
    cfg = config.make(model="cct", variant="7/3x1", epochs=20)
    model = modeling.build_and_compile(cfg.model, cfg.optim, {"fine": 10, "coarse": 2}, (32, 32, 3), steps)
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import keras

from mtl_keras import losses, weightings
from mtl_keras.config import PRECISION_POLICIES, ModelConfig, OptimConfig
from mtl_keras.models import build_model

NO_WEIGHT_DECAY = ["bias", "gamma", "beta", "embedding", "log_var"]  # variable-name parts exempt from weight decay
# --optimizer=muon: variable paths that take the AdamW step though 2-D (the heads' output layers; attention biases
# are [heads, key_dim]); Keras's Muon already sends every variable that is not 2-D there.
MUON_EXCLUDED = r"(fine|coarse)_logits/|/bias$"


def heads_for(model_config: ModelConfig, num_classes: Mapping[str, int]) -> dict[str, int]:
    """Task name -> class count of the heads `model_config.task` trains (`num_classes`: DatasetInfo's)."""
    return {name: n for name, n in num_classes.items() if model_config.task in ("mtl", name)}


def build(model_config: ModelConfig, num_classes: Mapping[str, int], input_shape, norm_stats=None, *,
          optim: OptimConfig | None = None, fine_to_coarse=None, stem_sample=None, seed: int = 0) -> keras.Model:
    """The uncompiled model (under the current Keras dtype policy). `norm_stats` = per-channel (mean,
    variance) of the training pixels, used by trunks in models.ADAPTED_NORM; a stateful loss weighting of the
    optimisation section `optim` adds the layer that holds its state, with the section's settings for it;
    `fine_to_coarse` (DatasetInfo's) is needed by the hierarchy-aware coarse heads; `stem_sample` (training
    images, whiten.sample) sets the first conv's filters under --stem_init=whitened (without it, e.g. when
    weights are copied in next, Keras's init)."""
    m = model_config
    optim = optim or OptimConfig()
    return build_model(m.model, input_shape, heads_for(m, num_classes), variant=m.variant, stem=m.stem,
                       image_size=m.image_size, dropout=m.dropout, head=m.head, head_dropout=m.head_dropout,
                       stochastic_depth=m.stochastic_depth, norm_stats=norm_stats,
                       loss_weighting=optim.loss_weighting, weighting_settings=vars(optim), coarse_head=m.coarse_head,
                       fine_to_coarse=fine_to_coarse, consistency_weight=m.consistency_weight,
                       whiten_images=stem_sample if m.stem_init == "whitened" else None, seed=seed)


def plain_copy(model: keras.Model, model_config: ModelConfig, num_classes: Mapping[str, int], norm_stats=None, *,
               optim: OptimConfig | None = None, fine_to_coarse=None, force: bool = False) -> keras.Model:
    """The same weights in a float32 model built outside any distribution scope (`model` itself when it
    already is one and not `force`): what is evaluated, saved and exported, whatever trained it."""
    if model.dtype_policy.name == "float32" and not force:
        return model
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        copy = build(model_config, num_classes, model.input_shape[1:], norm_stats, optim=optim,
                     fine_to_coarse=fine_to_coarse)
    finally:
        keras.config.set_dtype_policy(previous)
    copy.set_weights(model.get_weights())
    return copy


def build_and_compile(model_config: ModelConfig, optim: OptimConfig, num_classes: Mapping[str, int], input_shape,
                      steps_per_epoch: int, norm_stats=None, fine_to_coarse=None, stem_sample=None) -> keras.Model:
    """The model for `model_config.task`, compiled with its optimizer, LR schedule, per-head losses and metrics.

    Mixed precision (`optim.mixed_precision`) applies to this model only; its outputs stay float32, and
    Keras wraps the optimizer in a LossScaleOptimizer for float16.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(PRECISION_POLICIES[optim.mixed_precision])
    try:
        model = build(model_config, num_classes, input_shape, norm_stats, optim=optim, fine_to_coarse=fine_to_coarse,
                      stem_sample=stem_sample)
    finally:
        keras.config.set_dtype_policy(previous)
    compile_model(model, model_config, optim, num_classes, make_optimizer(optim, steps_per_epoch))
    return model


def make_optimizer(optim: OptimConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The optimisation section's optimizer with its learning-rate schedule."""
    total = optim.epochs * steps_per_epoch
    warmup = min(int(optim.warmup_epochs * steps_per_epoch), total - 1)
    if optim.time_budget:  # a plain rate that budget.TimeBudget sets before each step from the elapsed time
        schedule = 0.0 if optim.warmup_epochs else float(optim.learning_rate)
    elif optim.lr_schedule == "constant":
        schedule = optim.learning_rate
    else:
        schedule = keras.optimizers.schedules.CosineDecay(0.0, decay_steps=total - warmup,
                                                          warmup_target=optim.learning_rate, warmup_steps=warmup)
    extra = {"global_clipnorm": optim.grad_clip_norm or None}
    if optim.ema:  # EMA weights replace the trained ones at the end of fit (Keras finalize_variable_values)
        extra |= {"use_ema": True, "ema_momentum": optim.ema_momentum}
    if optim.optimizer == "adam":
        optimizer = keras.optimizers.Adam(schedule, **extra)
    elif optim.optimizer == "muon":
        # Muon on the 2-D Dense kernels (the transformer MLPs, not the 3-D attention kernels or the 4-D convs),
        # AdamW on the rest; the output layers stay on AdamW, as Muon's authors advise for the last layer.
        optimizer = keras.optimizers.Muon(schedule, weight_decay=optim.weight_decay,
                                          adam_weight_decay=optim.weight_decay, exclude_layers=[MUON_EXCLUDED],
                                          **extra)
        optimizer.exclude_from_weight_decay(var_names=NO_WEIGHT_DECAY)
    else:
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=optim.weight_decay, **extra)
        optimizer.exclude_from_weight_decay(var_names=NO_WEIGHT_DECAY)
    return optimizer


def compile_model(model: keras.Model, model_config: ModelConfig, optim: OptimConfig, num_classes: Mapping[str, int],
                  optimizer: keras.optimizers.Optimizer) -> None:
    """Compiles `model` with `optimizer`, the per-head losses of `optim.loss_weighting` and the metrics."""
    heads = heads_for(model_config, num_classes)
    loss, loss_weights = losses.compile_losses(model, list(heads), optim.loss_weighting,
                                               label_smoothing=optim.label_smoothing,
                                               **weightings.settings(optim.loss_weighting, vars(optim)))
    # Top-5 where top-1 is a hard target (CIFAR-100's 100 fine classes); names log as fine_top5_accuracy.
    metrics = {h: ["accuracy"] + ([keras.metrics.TopKCategoricalAccuracy(5, name="top5_accuracy")] if n >= 100
                                  else []) for h, n in heads.items()}
    # weighted_metrics: the same metrics, but they honour the per-head sample weights of partial labels (an image
    # without a head's label does not count for it); without sample weights they are the plain ones.
    model.compile(optimizer=optimizer, loss=loss, loss_weights=loss_weights, weighted_metrics=metrics,
                  jit_compile=optim.jit_compile)


def at_resolution(model: keras.Model, size: int) -> keras.Model:
    """`model`'s layers, every weight shared, on its input images resized to `size` x `size` inside the model
    (bilinear): progressive resolution trains this first, then `model` itself. The input is `model`'s, so the
    input pipeline is the same at both sizes; a ViT's position embedding is resized to the smaller token grid
    (transformer.AddPositionEmbedding). Run it inside `free_input_shapes(model)`: Keras checks each call of a
    functional model against the image size it was built for."""
    [image] = model.inputs
    inputs = keras.Input(image.shape[1:], dtype=image.dtype, name=image.name)
    resized = keras.layers.Resizing(size, size, name=f"resize_{size}")(inputs)
    with free_input_shapes(model):
        outputs = model(resized)
    return keras.Model(inputs, outputs, name=f"{model.name}_{size}px")


@contextlib.contextmanager
def free_input_shapes(model: keras.Model):
    """Inside the block, `model` and the functional models in it accept inputs of any image size."""
    nested = [model, *(layer for layer in model._flatten_layers(include_self=False)
                       if isinstance(layer, keras.Model))]
    saved = [m.__dict__.get("_manual_input_spec", _UNSET) for m in nested]
    for m in nested:
        m.input_spec = None
    try:
        yield
    finally:
        for m, spec in zip(nested, saved):
            if spec is _UNSET:
                del m._manual_input_spec
            else:
                m.input_spec = spec


_UNSET = object()
