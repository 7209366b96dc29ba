"""The seed study's ViT, shape for shape (the keras-io "Image classification with ViT" layout).

72x72 input -> 6x6 patches (144) projected to 64 + learned position embedding -> 8 pre-norm blocks
(LayerNorm eps 1e-6, 4 heads of key_dim 64, attention dropout 0.1, MLP 128 -> 64 with GELU and dropout 0.1)
-> LayerNorm -> Flatten -> dropout -> Dense 2048 GELU. Input normalisation and resizing live in
`build_model`. GELU is the tanh form (`vit.gelu_tanh`): exact GELU lowers to TF Erfc, which ONNX lacks.
"""

from __future__ import annotations

import keras
from keras import layers

from mtl_keras.models.preprocess import Normalize
from mtl_keras.models.spec import TrunkSpec
from mtl_keras.models.transformer import AddPositionEmbedding, encoder_block, gelu_tanh

IMAGE_SIZE, PATCH, WIDTH, DEPTH, HEADS, KEY_DIM, MLP_UNITS, FEATURES = 72, 6, 64, 8, 4, 64, (128, 64), 2048


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
        # keras-io's block: key_dim 64 per head (4 x 64 wide attention on a 64-wide stream), GELU on both
        # MLP layers, dropout 0.1 in attention and after each MLP layer, none after attention.
        x = encoder_block(x, heads=HEADS, key_dim=KEY_DIM, mlp_dims=MLP_UNITS, dropout=0.1, attention_dropout=0.1,
                          attention_output_dropout=False, mlp_activate_last=True, mlp_first_index=0,
                          name=f"block{i}")
    x = layers.LayerNormalization(epsilon=1e-6, name="encoder_norm")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(dropout, name="flatten_drop")(x)
    x = layers.Dense(FEATURES, activation=gelu_tanh, name="features")(x)
    return keras.Model(inputs, x, name="seed_vit")


def normalize(x, channels: int, norm_stats=None):
    """Per-channel standardisation with statistics of the training images (passed in rather than adapt():
    saved in the layer config, plain Sub/Mul in ONNX); 127.5 +- 127.5 without statistics."""
    mean, variance = norm_stats or ([127.5] * channels, [127.5 ** 2] * channels)
    return Normalize(mean, variance, name="normalize")(x)


def _build(input_shape, *, dropout: float = 0.0, **unused) -> keras.Model:
    return seed_vit_trunk(input_shape, dropout=dropout)


SPEC = TrunkSpec(build=_build, preprocess=normalize, image_size=IMAGE_SIZE, adapted_norm=True,
                 seed_head_activation=gelu_tanh)
