"""`TrunkSpec`: everything the model builder needs to know about one trunk, so no code elsewhere tests a
trunk's name. Each trunk module defines its `SPEC`; models/__init__.py registers them by name."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from keras import layers

NormStats = tuple[Sequence[float], Sequence[float]]  # per-channel (mean, variance) of the training pixels


def rescale(x, channels: int, norm_stats: NormStats | None = None):
    """The default preprocessing: raw 0-255 pixels -> [-1, 1]."""
    return layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(x)


@dataclasses.dataclass(frozen=True)
class TrunkSpec:
    build: Callable[..., object]  # (input_shape, *, variant, stem, dropout, stochastic_depth) -> keras.Model
    # the size table that `--variant` names (from mtl_keras/variants.py, which also parses it); None: fixed shapes
    variants: dict | None = None
    smallest_variant: str | None = None  # the variant tests and smoke runs build (with `variants`)
    preprocess: Callable = rescale  # (x, channels, norm_stats) -> x, deterministic, inside the model
    image_size: int | None = None  # the size the trunk runs at (None: the input's)
    min_image_size: int = 1
    adapted_norm: bool = False  # preprocess needs `norm_stats` of the training images
    seed_head_activation: object = "relu"  # activation of the seed study's head MLPs on this trunk
