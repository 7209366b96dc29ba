"""The seed study's ResNet-152 trunk: keras.applications.ResNet152 (random init) + Flatten + Dense 2048 ReLU."""

from __future__ import annotations

import keras
from keras import layers, ops

from mtl_keras.models.spec import TrunkSpec

# ImageNet channel means in BGR order, as keras.applications.imagenet_utils uses for "caffe" mode.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
MIN_SIZE = 32  # keras.applications refuses smaller inputs
FEATURES = 2048


@keras.saving.register_keras_serializable(package="mtl_keras")
class CaffePreprocess(layers.Layer):
    """`keras.applications.resnet.preprocess_input` as a layer: RGB -> BGR, minus the ImageNet means.

    Written with keras.ops (a channel gather and a subtraction) so it is saved with the model, runs on any
    backend and converts to ONNX as Gather + Sub. One-channel input subtracts the mean of the three means.
    """

    def __init__(self, mean_bgr: tuple[float, ...] = CAFFE_MEAN_BGR, **kwargs):
        super().__init__(**kwargs)
        self.mean_bgr = tuple(float(m) for m in mean_bgr)

    def call(self, x):
        if x.shape[-1] == 3:
            x = ops.take(x, [2, 1, 0], axis=-1)
            return x - ops.cast(ops.convert_to_tensor(self.mean_bgr), x.dtype)
        return x - ops.cast(sum(self.mean_bgr) / len(self.mean_bgr), x.dtype)

    def get_config(self):
        return {**super().get_config(), "mean_bgr": list(self.mean_bgr)}


def resnet152_trunk(input_shape: tuple[int, int, int] = (32, 32, 3), dropout: float = 0.0) -> keras.Model:
    """ResNet-152 v1 (no top, random init) on caffe-preprocessed images; returns [batch, 2048] features.

    At 32x32 the backbone ends in a 1x1x2048 map, so Flatten keeps the seed's 2048-wide Dense input.
    """
    if min(input_shape[:2]) < MIN_SIZE:
        raise ValueError(f"resnet152 needs images of at least {MIN_SIZE}x{MIN_SIZE}, got {input_shape[:2]}; "
                         f"set --image_size={MIN_SIZE}")
    inputs = keras.Input(input_shape, name="pixels")
    backbone = keras.applications.ResNet152(weights=None, include_top=False, input_shape=input_shape)
    x = layers.Flatten(name="flatten")(backbone(inputs))
    if dropout:
        x = layers.Dropout(dropout, name="flatten_drop")(x)
    x = layers.Dense(FEATURES, activation="relu", name="features")(x)
    return keras.Model(inputs, x, name="resnet152")


def _build(input_shape, *, dropout: float = 0.0, **unused) -> keras.Model:
    return resnet152_trunk(input_shape, dropout=dropout)


def caffe_preprocess(x, channels: int, norm_stats=None):
    return CaffePreprocess(name="caffe_preprocess")(x)


# The seed: ReLU in the ResNet's head MLPs (GELU for its ViT).
SPEC = TrunkSpec(build=_build, preprocess=caffe_preprocess, min_image_size=MIN_SIZE, seed_head_activation="relu")
