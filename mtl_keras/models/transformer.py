"""The one pre-norm transformer encoder block every transformer trunk uses (vit, cct, seed_vit), and the
layers they share: tanh GELU, a learned position embedding, stochastic depth. `keras.ops` only.

The trunks differ only in arguments: CCT adds stochastic depth and LayerNorm eps 1e-5; the seed study's
ViT (keras-io layout) has a fixed key_dim, GELU on every MLP layer and its own layer numbering. Layer
names are part of the contract: checkpoints and .keras files of earlier versions load by them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="mtl_keras")
def gelu_tanh(x):
    """GELU, tanh approximation: the exact form lowers to TF `Erfc`, which ONNX converters lack."""
    return keras.activations.gelu(x, approximate=True)


@keras.saving.register_keras_serializable(package="mtl_keras")
class AddPositionEmbedding(layers.Layer):
    """Adds a learned position embedding to a [batch, tokens, width] sequence.

    On a sequence of another length than it was built for (a square token grid of another side: the same trunk
    on smaller images, `modeling.at_resolution`), the embedding is read as its square grid and resized
    bilinearly to the new grid (as FlexiViT and DeiT resize position embeddings), so the one weight trains at
    both sizes.
    """

    def __init__(self, initializer_stddev: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.initializer_stddev = initializer_stddev

    def build(self, input_shape):
        self.embedding = self.add_weight(
            name="embedding", shape=(1, input_shape[1], input_shape[2]),
            initializer=keras.initializers.TruncatedNormal(stddev=self.initializer_stddev))

    def call(self, x):
        embedding = self.embedding
        if x.shape[1] is not None and x.shape[1] != embedding.shape[1]:
            embedding = resized_grid(embedding, x.shape[1])
        return x + ops.cast(embedding, x.dtype)

    def get_config(self):
        return {**super().get_config(), "initializer_stddev": self.initializer_stddev}


def resized_grid(embedding, tokens: int):
    """A [1, side * side, width] embedding of a square token grid, resized bilinearly to `tokens` (a square)."""
    side, new = math.isqrt(embedding.shape[1]), math.isqrt(tokens)
    if side * side != embedding.shape[1] or new * new != tokens:
        raise ValueError(f"a position embedding of {embedding.shape[1]} tokens cannot be resized to {tokens}: both "
                         "must be square token grids")
    width = embedding.shape[2]
    grid = ops.reshape(embedding, (1, side, side, width))
    grid = ops.image.resize(grid, (new, new), interpolation="bilinear", antialias=False)
    return ops.reshape(grid, (1, tokens, width))


@keras.saving.register_keras_serializable(package="mtl_keras")
class DropPath(layers.Layer):
    """Stochastic depth: drops a residual branch for whole examples while training, rescaling the rest."""

    def __init__(self, rate: float = 0.0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training or self.rate == 0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        mask = ops.floor(keep + keras.random.uniform(shape, seed=self.seed_generator))
        return x * ops.cast(mask / keep, x.dtype)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


def mlp(x, dims: Sequence[int], dropout: float, name: str, *, activate_last: bool = False, first_index: int = 1):
    """Dense layers of `dims`, each followed by dropout; tanh GELU on all but the last (all with
    `activate_last`). Layers are numbered from `first_index` (`{name}_dense{i}`, `{name}_drop{i}`)."""
    for i, units in enumerate(dims):
        active = i < len(dims) - 1 or activate_last
        x = layers.Dense(units, activation=gelu_tanh if active else None, name=f"{name}_dense{i + first_index}")(x)
        x = layers.Dropout(dropout, name=f"{name}_drop{i + first_index}")(x)
    return x


def _residual(x, y, drop_path: float | None, name: str, index: int):
    if drop_path is not None:
        y = DropPath(drop_path, name=f"{name}_droppath{index}")(y)
    return layers.Add(name=f"{name}_add{index}")([x, y])


def encoder_block(x, *, heads: int, mlp_dims: Sequence[int], name: str, key_dim: int | None = None,
                  dropout: float = 0.0, attention_dropout: float = 0.0, attention_output_dropout: bool = True,
                  drop_path: float | None = None, epsilon: float = 1e-6, mlp_activate_last: bool = False,
                  mlp_first_index: int = 1):
    """Pre-norm block: x + MHA(LN(x)), then x + MLP(LN(x)).

    `key_dim` defaults to width / heads; `attention_output_dropout` adds Dropout(`dropout`) after attention
    (ViT); `drop_path` (not None) sends both residual branches through stochastic depth (CCT); `mlp_dims`,
    `mlp_activate_last` and `mlp_first_index` shape the MLP (see `mlp`).
    """
    width = x.shape[-1]
    y = layers.LayerNormalization(epsilon=epsilon, name=f"{name}_ln1")(x)
    y = layers.MultiHeadAttention(heads, key_dim or width // heads, dropout=attention_dropout,
                                  name=f"{name}_mha")(y, y)
    if attention_output_dropout:
        y = layers.Dropout(dropout, name=f"{name}_drop")(y)
    x = _residual(x, y, drop_path, name, 1)
    y = layers.LayerNormalization(epsilon=epsilon, name=f"{name}_ln2")(x)
    y = mlp(y, mlp_dims, dropout, f"{name}_mlp", activate_last=mlp_activate_last, first_index=mlp_first_index)
    return _residual(x, y, drop_path, name, 2)
