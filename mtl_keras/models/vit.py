"""Vision Transformer trunk: patch embedding, learned position embedding, pre-norm blocks, mean pool.

Sizes are variant strings "NAME/PATCH" (big_vision style), e.g. "Mu/4" = width 64, depth 3, patch 4.
Blocks are the shared `transformer.encoder_block`; Keras layers only, so the trunk runs on any backend.
"""

from __future__ import annotations

import keras
from keras import layers

from mtl_keras import variants
from mtl_keras.config import STEMS
from mtl_keras.models.spec import TrunkSpec
from mtl_keras.models.transformer import AddPositionEmbedding, encoder_block, gelu_tanh

# The size table and its parser live in mtl_keras/variants.py (Keras-free, for the flag checks).
VARIANTS = variants.VIT
parse_variant = variants.parse_vit


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
        x = encoder_block(x, heads=heads, mlp_dims=(mlp_dim, width), dropout=dropout,
                          attention_dropout=attention_dropout, name=f"block{i}")
    x = layers.LayerNormalization(epsilon=1e-6, name="encoder_norm")(x)
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(inputs, x, name=f"vit_{variant.replace('/', '_')}")


def _build(input_shape, *, variant: str, stem: str = "conv", dropout: float = 0.0, **unused) -> keras.Model:
    return vit_trunk(input_shape, variant, stem=stem, dropout=dropout)


SPEC = TrunkSpec(build=_build, variants=VARIANTS, smallest_variant="Pico/4", seed_head_activation=gelu_tanh)
