"""Model registry: `build_model` joins preprocessing, a shared trunk and one head per task.

Trunks (`--model`): vit (conv or patch stem, variants NAME/PATCH), seed_vit (the seed study's ViT),
resnet152 (the seed study's ResNet-152), cct (Compact Convolutional Transformer, variants LAYERS/KxN).
Importing this package needs Keras only (no TensorFlow), so trunks build on the JAX backend too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
from keras import layers

from mtl_keras import losses
from mtl_keras.models import cct, resnet, seed_vit, tta, vit  # noqa: F401  (tta: registers its layer)
from mtl_keras.models.heads import HEADS, light_head, seed_head
from mtl_keras.models.preprocess import Normalize, Resize, channel_stats  # noqa: F401  (channel_stats: re-exported)

TRUNKS = ("vit", "seed_vit", "resnet152", "cct")
# Trunks that normalise with per-channel statistics of the training images (Keras Normalization layer).
ADAPTED_NORM = ("seed_vit",)


def check_variant(trunk: str, variant: str) -> None:
    """Raises ValueError (one line) when `variant` is not a size of `trunk`; fixed-shape trunks take any."""
    if trunk == "vit":
        vit.parse_variant(variant)
    elif trunk == "cct":
        cct.parse_variant(variant)


def _preprocess(x, trunk: str, channels: int, norm_stats: tuple[Sequence[float], Sequence[float]] | None):
    """Deterministic pixel preprocessing of each trunk, inside the model so exports take raw 0-255 pixels."""
    if trunk == "resnet152":
        return resnet.CaffePreprocess(name="caffe_preprocess")(x)
    if trunk in ADAPTED_NORM:
        # Statistics passed in rather than adapt(): saved in the layer config, plain Sub/Mul in ONNX.
        mean, variance = norm_stats or ([127.5] * channels, [127.5 ** 2] * channels)
        return Normalize(mean, variance, name="normalize")(x)
    return layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(x)


def _trunk(trunk: str, shape: tuple[int, int, int], variant: str, stem: str, dropout: float,
           stochastic_depth: float) -> keras.Model:
    if trunk == "vit":
        return vit.vit_trunk(shape, variant, stem=stem, dropout=dropout)
    if trunk == "seed_vit":
        return seed_vit.seed_vit_trunk(shape, dropout=dropout)
    if trunk == "resnet152":
        return resnet.resnet152_trunk(shape, dropout=dropout)
    return cct.cct_trunk(shape, variant, dropout=dropout, stochastic_depth=stochastic_depth)


def build_model(trunk: str, input_shape: tuple[int, int, int], heads: Mapping[str, int], *,
                variant: str = "Mu/4", stem: str = "conv", image_size: int | None = None, dropout: float = 0.0,
                head: str = "light", head_dropout: float = 0.0, stochastic_depth: float = 0.1,
                norm_stats: tuple[Sequence[float], Sequence[float]] | None = None,
                loss_weighting: str = "fixed") -> keras.Model:
    """Returns a model from raw pixels (0-255, float32) named `image` to a dict of probabilities.

    `heads` maps task name to class count, e.g. {"fine": 10, "coarse": 3}; a single-task model has one.
    `variant` and `stem` apply to vit / cct; seed_vit and resnet152 have the seed's fixed shapes.
    `norm_stats` = (per-channel mean, variance) of the training pixels, for seed_vit's Normalization.
    `stochastic_depth` is cct's top drop-path rate. A dynamic `loss_weighting` adds the layer holding its
    state (see mtl_keras.losses).
    """
    if trunk not in TRUNKS:
        raise ValueError(f"unknown model {trunk!r}; choose one of {', '.join(TRUNKS)}")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    if not heads:
        raise ValueError("build_model needs at least one head")
    losses.check_weighting(loss_weighting, list(heads))
    check_variant(trunk, variant)
    inputs = keras.Input(input_shape, name="image")
    x = _preprocess(inputs, trunk, input_shape[2], norm_stats)
    size = image_size or {"seed_vit": seed_vit.IMAGE_SIZE}.get(trunk, input_shape[0])
    if trunk == "resnet152":
        size = max(size, resnet.MIN_SIZE)
    if (size, size) != tuple(input_shape[:2]):
        x = Resize(size, name="resize")(x)
    body = _trunk(trunk, (size, size, input_shape[2]), variant, stem, dropout, stochastic_depth)
    features = body(x)
    if loss_weighting in losses.DYNAMIC:
        features = losses.TaskWeights(list(heads), loss_weighting, name=losses.LAYER_NAME)(features)
    if head == "seed":
        activation = "relu" if trunk == "resnet152" else vit.gelu_tanh  # the seed: ReLU for ResNet, GELU for ViT
        outputs = {name: seed_head(features, n, name, head_dropout, activation) for name, n in heads.items()}
    else:
        outputs = {name: light_head(features, n, name, head_dropout) for name, n in heads.items()}
    return keras.Model(inputs, outputs, name=f"mtl_{trunk}")
