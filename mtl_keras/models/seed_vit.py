"""The seed study's ViT, shape for shape (the keras-io "Image classification with ViT" layout).

72x72 input -> 6x6 patches (144) projected to 64 + learned position embedding -> 8 pre-norm blocks
(LayerNorm eps 1e-6, 4 heads of key_dim 64, attention dropout 0.1, MLP 128 -> 64 with GELU and dropout 0.1)
-> LayerNorm -> Flatten -> dropout -> Dense 2048 GELU. Input normalisation and resizing live in
`build_model`. GELU is the tanh form (`vit.gelu_tanh`): exact GELU lowers to TF Erfc, which ONNX lacks.
"""

from __future__ import annotations

import keras
from keras import layers

from mtl_keras.models.vit import AddPositionEmbedding, gelu_tanh

IMAGE_SIZE, PATCH, WIDTH, DEPTH, HEADS, KEY_DIM, MLP_UNITS, FEATURES = 72, 6, 64, 8, 4, 64, (128, 64), 2048


def seed_mlp(x, units: tuple[int, ...], dropout: float, name: str):
    """keras-io's `mlp`: every Dense has GELU and is followed by dropout (the last one too)."""
    for i, n in enumerate(units):
        x = layers.Dense(n, activation=gelu_tanh, name=f"{name}_dense{i}")(x)
        x = layers.Dropout(dropout, name=f"{name}_drop{i}")(x)
    return x


def seed_block(x, name: str, attention_dropout: float = 0.1, mlp_dropout: float = 0.1):
    """Pre-norm block with key_dim 64 per head (so attention is 4 x 64 wide on a 64-wide stream)."""
    y = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln1")(x)
    y = layers.MultiHeadAttention(HEADS, KEY_DIM, dropout=attention_dropout, name=f"{name}_mha")(y, y)
    x = layers.Add(name=f"{name}_add1")([y, x])
    y = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln2")(x)
    y = seed_mlp(y, MLP_UNITS, mlp_dropout, name=f"{name}_mlp")
    return layers.Add(name=f"{name}_add2")([y, x])


def seed_vit_trunk(input_shape: tuple[int, int, int] = (IMAGE_SIZE, IMAGE_SIZE, 3),
                   dropout: float = 0.5) -> keras.Model:
    """Seed ViT on normalised, resized images; returns [batch, 2048] features.

    `dropout` is the rate after Flatten (keras-io used 0.5). A strided 6x6 convolution is exactly the seed's
    "flatten each patch, Dense(64)" projection (same 6*6*C*64 + 64 parameters) without a TF-only patch op.
    """
    if input_shape[0] % PATCH or input_shape[1] % PATCH:
        raise ValueError(f"seed_vit needs an image size divisible by {PATCH}, got {input_shape[:2]}")
    inputs = keras.Input(input_shape, name="pixels")
    x = layers.Conv2D(WIDTH, PATCH, strides=PATCH, name="patch_embed")(inputs)
    x = layers.Reshape((-1, WIDTH), name="tokens")(x)
    x = AddPositionEmbedding(name="pos_embed")(x)
    for i in range(DEPTH):
        x = seed_block(x, name=f"block{i}")
    x = layers.LayerNormalization(epsilon=1e-6, name="encoder_norm")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(dropout, name="flatten_drop")(x)
    x = layers.Dense(FEATURES, activation=gelu_tanh, name="features")(x)
    return keras.Model(inputs, x, name="seed_vit")
