"""Flipped-view test-time averaging: the model's probabilities on an image and on its mirror image, averaged.

Deterministic, so it lives inside the evaluated and exported model (SavedModel, ONNX) and every runtime gives the
same answer; it doubles inference cost and changes nothing in training.
"""

from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="mtl_keras")
class FlipLeftRight(layers.Layer):
    """Mirrors [batch, height, width, channels] images left to right."""

    def call(self, x):
        return ops.flip(x, axis=2)

    def get_config(self):
        return super().get_config()


def with_flip_average(model: keras.Model) -> keras.Model:
    """A model with `model`'s input and output names whose outputs average `model` on x and on flip(x)."""
    inputs = keras.Input(model.input_shape[1:], name=model.inputs[0].name)
    plain, mirrored = model(inputs), model(FlipLeftRight(name="flip")(inputs))
    # Average per head, named after the head, so outputs keep their names (fine / coarse) in every export.
    outputs = {head: layers.Average(name=head)([plain[head], mirrored[head]]) for head in plain}
    return keras.Model(inputs, outputs, name=f"{model.name}_flip_tta")
