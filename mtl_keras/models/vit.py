"""Vision Transformer trunk: patch embedding, learned position embedding, pre-norm blocks, mean pool.

Sizes are variant strings "NAME/PATCH" (big_vision style), e.g. "Mu/4" = width 64, depth 3, patch 4.
Code uses `keras.ops` only, so the trunk runs on any Keras backend.
"""

from __future__ import annotations

import keras
from keras import layers, ops

# name: (width, depth, mlp_dim, heads)
VARIANTS: dict[str, tuple[int, int, int, int]] = {
    "Pico": (32, 2, 64, 2),  # tests and smoke runs
    "Mu": (64, 3, 128, 4),  # the quick start
    "Mi": (96, 4, 192, 3),  # CPU-sized CIFAR steps between Mu and Ti (the CIFAR-10 scaling study)
    "XS": (128, 6, 256, 4),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "B": (768, 12, 3072, 12),
}


def parse_variant(variant: str) -> tuple[int, int, int, int, int]:
    """Decodes "NAME/PATCH" into (width, depth, mlp_dim, heads, patch)."""
    name, _, patch = variant.partition("/")
    if name not in VARIANTS or not patch.isdigit() or int(patch) < 1:
        raise ValueError(
            f"unknown ViT variant {variant!r}: use NAME/PATCH with NAME in {sorted(VARIANTS)}, e.g. 'Mu/4'")
    return (*VARIANTS[name], int(patch))


@keras.saving.register_keras_serializable(package="mtl_keras")
def gelu_tanh(x):
    """GELU, tanh approximation: the exact form lowers to TF `Erfc`, which ONNX converters lack."""
    return keras.activations.gelu(x, approximate=True)


@keras.saving.register_keras_serializable(package="mtl_keras")
class AddPositionEmbedding(layers.Layer):
    """Adds a learned position embedding to a [batch, tokens, width] sequence."""

    def __init__(self, initializer_stddev: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.initializer_stddev = initializer_stddev

    def build(self, input_shape):
        self.embedding = self.add_weight(
            name="embedding", shape=(1, input_shape[1], input_shape[2]),
            initializer=keras.initializers.TruncatedNormal(stddev=self.initializer_stddev))

    def call(self, x):
        return x + ops.cast(self.embedding, x.dtype)

    def get_config(self):
        return {**super().get_config(), "initializer_stddev": self.initializer_stddev}


def mlp(x, hidden: int, out: int, dropout: float, name: str):
    """Two dense layers with tanh-GELU in between."""
    x = layers.Dense(hidden, activation=gelu_tanh, name=f"{name}_dense1")(x)
    x = layers.Dropout(dropout, name=f"{name}_drop1")(x)
    x = layers.Dense(out, name=f"{name}_dense2")(x)
    return layers.Dropout(dropout, name=f"{name}_drop2")(x)


def encoder_block(x, heads: int, mlp_dim: int, dropout: float, attention_dropout: float,
                  name: str, epsilon: float = 1e-6):
    """Pre-norm transformer block: x + MHA(LN(x)), then x + MLP(LN(x))."""
    width = x.shape[-1]
    y = layers.LayerNormalization(epsilon=epsilon, name=f"{name}_ln1")(x)
    y = layers.MultiHeadAttention(heads, width // heads, dropout=attention_dropout, name=f"{name}_mha")(y, y)
    y = layers.Dropout(dropout, name=f"{name}_drop")(y)
    x = layers.Add(name=f"{name}_add1")([x, y])
    y = layers.LayerNormalization(epsilon=epsilon, name=f"{name}_ln2")(x)
    y = mlp(y, mlp_dim, width, dropout, name=f"{name}_mlp")
    return layers.Add(name=f"{name}_add2")([x, y])


def conv_stem(x, width: int, patch: int):
    """Tokenizer of stride-2 3x3 convolutions (BN + GELU) down to 1/patch, then a 1x1 projection.

    Xiao et al. 2021 ("Early convolutions help transformers see better"): replacing the linear patch
    embedding by a few convolutions makes ViTs train faster and more stably, most of all on small data.
    """
    steps = patch.bit_length() - 1
    for i in range(steps):
        x = layers.Conv2D(width // 2 ** (steps - 1 - i), 3, strides=2, padding="same", use_bias=False,
                          name=f"stem_conv{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"stem_bn{i}")(x)
        x = layers.Activation(gelu_tanh, name=f"stem_act{i}")(x)
    return layers.Conv2D(width, 1, name="patch_embed")(x)


STEMS = ("conv", "patch")


def vit_trunk(input_shape: tuple[int, int, int], variant: str = "Mu/4", stem: str = "conv",
              dropout: float = 0.0, attention_dropout: float = 0.0) -> keras.Model:
    """ViT trunk on preprocessed images of `input_shape`; returns a model giving [batch, width] features.

    `stem="patch"` is the classic linear patch embedding; `stem="conv"` a convolutional tokenizer
    (patch size a power of two) with the same token grid.
    """
    width, depth, mlp_dim, heads, patch = parse_variant(variant)
    if input_shape[0] % patch or input_shape[1] % patch:
        raise ValueError(f"image size {input_shape[:2]} is not divisible by patch size {patch} ({variant})")
    if stem not in STEMS or (stem == "conv" and patch & (patch - 1)):
        raise ValueError(f"stem {stem!r} needs to be one of {STEMS}; 'conv' needs a power-of-two patch")
    inputs = keras.Input(input_shape, name="pixels")
    if stem == "conv":
        x = conv_stem(inputs, width, patch)
    else:  # a strided convolution is a linear projection of non-overlapping patches
        x = layers.Conv2D(width, patch, strides=patch, name="patch_embed")(inputs)
    x = layers.Reshape((-1, width), name="tokens")(x)
    x = AddPositionEmbedding(name="pos_embed")(x)
    x = layers.Dropout(dropout, name="embed_drop")(x)
    for i in range(depth):
        x = encoder_block(x, heads, mlp_dim, dropout, attention_dropout, name=f"block{i}")
    x = layers.LayerNormalization(epsilon=1e-6, name="encoder_norm")(x)
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(inputs, x, name=f"vit_{variant.replace('/', '_')}")
