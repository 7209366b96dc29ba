"""Models: `build_model` joins preprocessing, a shared trunk and one head per task.

Trunks (`--model`) are registered by name in `REGISTRY`, one `TrunkSpec` each (builder, variant table and
parser, preprocessing, image size): vit (conv or patch stem, variants NAME/PATCH), seed_vit (the seed study's
ViT), resnet152 (the seed study's ResNet-152), cct (Compact Convolutional Transformer, variants LAYERS/KxN).
Importing this package needs Keras only (no TensorFlow), so trunks build on the JAX backend too.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import numpy as np

from mtl_keras import losses, variants, weightings
from mtl_keras.config import HEAD_KINDS, TRUNKS
from mtl_keras.models import cct, hierarchy, resnet, seed_vit, tta, vit, whiten  # noqa: F401  (tta: its layer)
from mtl_keras.models.heads import light_head, seed_head
from mtl_keras.models.preprocess import Resize
from mtl_keras.models.spec import NormStats, TrunkSpec

REGISTRY: dict[str, TrunkSpec] = {"vit": vit.SPEC, "seed_vit": seed_vit.SPEC, "resnet152": resnet.SPEC,
                                  "cct": cct.SPEC}
assert tuple(REGISTRY) == TRUNKS, "config.TRUNKS and the trunk registry must name the same trunks"
# Trunks that normalise with per-channel statistics of the training images (train computes them).
ADAPTED_NORM = tuple(name for name, spec in REGISTRY.items() if spec.adapted_norm)
# Trunks whose first convolution reads the images, which --stem_init=whitened sets from training patches (kept in
# mtl_keras.variants with the size parsers, so the flag checks read them without Keras).
WHITENABLE = variants.WHITENABLE


def spec(trunk: str) -> TrunkSpec:
    """The registered `TrunkSpec` of `trunk`; ValueError (one line with the choices) for another name."""
    if trunk not in REGISTRY:
        raise ValueError(f"unknown model {trunk!r}; choose one of {', '.join(TRUNKS)}")
    return REGISTRY[trunk]


def check_variant(trunk: str, variant: str) -> None:
    """Raises ValueError (one line) for an unknown `trunk`, or a `variant` that is not one of its sizes;
    fixed-shape trunks take any."""
    spec(trunk)
    variants.check(trunk, variant)


def build_model(trunk: str, input_shape: tuple[int, int, int], heads: Mapping[str, int], *,
                variant: str = "Mu/4", stem: str = "conv", image_size: int | None = None, dropout: float = 0.0,
                head: str = "light", head_dropout: float = 0.0, stochastic_depth: float = 0.1,
                norm_stats: NormStats | None = None, loss_weighting: str = "fixed", coarse_head: str = "learned",
                fine_to_coarse=None, consistency_weight: float = 1.0,
                weighting_settings: Mapping | None = None, whiten_images=None, seed: int = 0) -> keras.Model:
    """Returns a model from raw pixels (0-255, float32) named `image` to a dict of probabilities.

    `heads` maps task name to class count, e.g. {"fine": 10, "coarse": 3}; a single-task model has one.
    `variant` and `stem` apply to vit / cct; seed_vit and resnet152 have the seed's fixed shapes.
    `norm_stats` = (per-channel mean, variance) of the training pixels, for trunks in ADAPTED_NORM.
    `stochastic_depth` is cct's top drop-path rate. A stateful `loss_weighting` (mtl_keras.weightings) adds the
    layer holding its state, given its `weighting_settings` (by config name; config.py's defaults otherwise).
    `coarse_head` (learned, marginal, both; models/hierarchy.py) ties the coarse output to the fine one through
    `fine_to_coarse`; `consistency_weight` weighs `both`'s consistency loss.
    `whiten_images` (raw training images, trunks in WHITENABLE): the first conv starts as their patches'
    whitening filters (models/whiten.py).
    """
    trunk_spec = spec(trunk)
    if head not in HEAD_KINDS:
        raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEAD_KINDS)}")
    if not heads:
        raise ValueError("build_model needs at least one head")
    losses.check_weighting(loss_weighting, list(heads))
    check_variant(trunk, variant)
    inputs = keras.Input(input_shape, name="image")
    # Deterministic preprocessing inside the model, so exports take raw 0-255 pixels.
    x = trunk_spec.preprocess(inputs, input_shape[2], norm_stats)
    size = max(image_size or trunk_spec.image_size or input_shape[0], trunk_spec.min_image_size)
    if (size, size) != tuple(input_shape[:2]):
        x = Resize(size, name="resize")(x)
    body = trunk_spec.build((size, size, input_shape[2]), variant=variant, stem=stem, dropout=dropout,
                            stochastic_depth=stochastic_depth)
    if whiten_images is not None:
        if trunk not in WHITENABLE:
            raise ValueError(f"--stem_init=whitened needs --model={' or '.join(WHITENABLE)} (a first convolution on "
                             f"the images); {trunk} has none")
        to_pixels = keras.Model(inputs, x)
        pixels = np.concatenate([keras.ops.convert_to_numpy(to_pixels(np.asarray(whiten_images[i:i + 256],
                                                                                 "float32")))
                                 for i in range(0, len(whiten_images), 256)])
        whiten.whiten_first_conv(body, pixels.astype("float32"), seed)
    features = body(x)
    if weightings.get(loss_weighting).stateful:
        settings = weightings.settings(loss_weighting, weighting_settings)
        features = losses.TaskWeights(list(heads), loss_weighting, name=losses.LAYER_NAME, **settings)(features)
    if head == "seed":
        def make_head(x, n, name):  # the branch shape follows the task, whatever the layer's name
            return seed_head(x, n, name, head_dropout, trunk_spec.seed_head_activation, branch=name.split("_")[0])
    else:
        def make_head(x, n, name):
            return light_head(x, n, name, head_dropout)
    outputs = hierarchy.heads(features, dict(heads), make_head, coarse_head, fine_to_coarse, consistency_weight)
    return keras.Model(inputs, outputs, name=f"mtl_{trunk}")
