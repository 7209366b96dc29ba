"""Compact Convolutional Transformer (Hassani et al. 2021, "Escaping the Big Data Paradigm with Compact
Transformers"): a small convolutional tokenizer, a pre-norm transformer with stochastic depth, and sequence
pooling (attention-weighted mean of the tokens) instead of a class token.

Sizes are variant strings "LAYERS/KxN" as in the paper, e.g. "7/3x1" = CCT-7 with one 3x3 conv in the
tokenizer (16x16 = 256 tokens at 32 px), "7/3x2" two convs (8x8 = 64 tokens, ~4x cheaper).
Blocks are the shared `transformer.encoder_block`; the trunk runs on any Keras backend.
"""

from __future__ import annotations

import keras
from keras import layers

from mtl_keras import variants
from mtl_keras.models.spec import TrunkSpec
from mtl_keras.models.transformer import AddPositionEmbedding, encoder_block, gelu_tanh

# The size table and its parser live in mtl_keras/variants.py (Keras-free, for the flag checks).
VARIANTS = variants.CCT
parse_variant = variants.parse_cct

TOKENIZER_PLANES = 64  # channels of the tokenizer's inner convolutions (paper's in_planes)


def tokenizer(x, width: int, kernel: int, conv_layers: int):
    """N x (conv KxK, ReLU, 3x3 max-pool stride 2): local features and a 2^N smaller token grid."""
    for i in range(conv_layers):
        filters = width if i == conv_layers - 1 else TOKENIZER_PLANES
        x = layers.Conv2D(filters, kernel, padding="same", use_bias=False, kernel_initializer="he_normal",
                          name=f"tokenizer_conv{i}")(x)
        x = layers.ReLU(name=f"tokenizer_relu{i}")(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"tokenizer_pool{i}")(x)
    return layers.Reshape((-1, width), name="tokens")(x)


def sequence_pool(x):
    """SeqPool: softmax(Dense(1)) over tokens, then the weighted sum of tokens -> [batch, width]."""
    weights = layers.Dense(1, name="seqpool_score")(x)
    weights = layers.Softmax(axis=1, name="seqpool_softmax")(weights)
    pooled = layers.Dot(axes=1, name="seqpool")([weights, x])  # [batch, 1, width]
    return layers.Flatten(name="pool")(pooled)


def cct_trunk(input_shape: tuple[int, int, int], variant: str = "7/3x1", dropout: float = 0.0,
              attention_dropout: float = 0.1, stochastic_depth: float = 0.1) -> keras.Model:
    """CCT trunk on preprocessed images; returns [batch, width] features.

    Paper settings: attention dropout 0.1, MLP dropout 0, stochastic depth rising linearly to 0.1.
    """
    depth, width, heads, mlp_ratio, kernel, conv_layers = parse_variant(variant)
    if min(input_shape[:2]) < 2 ** conv_layers:
        raise ValueError(f"image size {input_shape[:2]} is too small for {conv_layers} tokenizer convs ({variant})")
    inputs = keras.Input(input_shape, name="pixels")
    x = tokenizer(inputs, width, kernel, conv_layers)
    x = AddPositionEmbedding(initializer_stddev=0.2, name="pos_embed")(x)
    x = layers.Dropout(dropout, name="embed_drop")(x)
    for i in range(depth):
        rate = stochastic_depth * i / max(depth - 1, 1)
        # Pre-norm block; each residual branch goes through stochastic depth; no dropout after attention.
        x = encoder_block(x, heads=heads, mlp_dims=(width * mlp_ratio, width), dropout=dropout,
                          attention_dropout=attention_dropout, attention_output_dropout=False,
                          drop_path=rate, epsilon=1e-5, name=f"block{i}")
    x = layers.LayerNormalization(epsilon=1e-5, name="encoder_norm")(x)
    x = sequence_pool(x)
    return keras.Model(inputs, x, name=f"cct_{variant.replace('/', '_')}")


def _build(input_shape, *, variant: str, dropout: float = 0.0, stochastic_depth: float = 0.1, **unused) -> keras.Model:
    return cct_trunk(input_shape, variant, dropout=dropout, stochastic_depth=stochastic_depth)


SPEC = TrunkSpec(build=_build, variants=VARIANTS, smallest_variant="Pico/3x1", seed_head_activation=gelu_tanh)
