"""Model registry: `build_model` joins preprocessing, a shared trunk and one head per task."""

from __future__ import annotations

from collections.abc import Mapping

import keras
from keras import layers

from mtl_keras.models.heads import light_head
from mtl_keras.models.vit import vit_trunk

TRUNKS = ("vit",)


def build_model(trunk: str, input_shape: tuple[int, int, int], heads: Mapping[str, int], *,
                variant: str = "Mu/4", stem: str = "conv", image_size: int | None = None, dropout: float = 0.0,
                head_dropout: float = 0.0) -> keras.Model:
    """Returns a model from raw pixels (0-255, float32) named `image` to a dict of probabilities.

    `heads` maps task name to class count, e.g. {"fine": 10, "coarse": 3}; a single-task model has one.
    Preprocessing is deterministic and lives in the model, so exports take raw pixels.
    """
    if trunk not in TRUNKS:
        raise ValueError(f"unknown model {trunk!r}; choose one of {', '.join(TRUNKS)}")
    if not heads:
        raise ValueError("build_model needs at least one head")
    inputs = keras.Input(input_shape, name="image")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(inputs)
    size = image_size or input_shape[0]
    if (size, size) != tuple(input_shape[:2]):
        x = layers.Resizing(size, size, name="resize")(x)
    body = vit_trunk((size, size, input_shape[2]), variant, stem=stem, dropout=dropout)
    features = body(x)
    outputs = {name: light_head(features, n, name, head_dropout) for name, n in heads.items()}
    return keras.Model(inputs, outputs, name=f"mtl_{trunk}")
