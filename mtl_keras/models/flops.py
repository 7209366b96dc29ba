"""Forward FLOPs of a Keras model per image: 2 x the multiply-accumulates of its convolutions, dense layers and
attention (the convention of MFU figures; norms, activations, pooling and softmax are left out, a few %).

Works from the layers' configs and output shapes, so it needs no backend profiler and counts the same on
TensorFlow and JAX. A training step costs about 3x the forward pass (forward + two backward matmuls).
"""

from __future__ import annotations

import math

import keras
from keras import layers


def _tokens(shape) -> int:
    """Positions a per-position layer is applied at: every axis but batch and the last."""
    return math.prod(int(d) for d in shape[1:-1])


def _layer_flops(layer) -> int:
    if isinstance(layer, keras.Model):
        return sum(_layer_flops(inner) for inner in layer.layers)
    if isinstance(layer, layers.Conv2D):
        kh, kw = layer.kernel_size
        cin = int(layer.input.shape[-1]) // layer.groups
        return 2 * kh * kw * cin * layer.filters * _tokens(layer.output.shape)
    if isinstance(layer, layers.Dense):
        return 2 * int(layer.input.shape[-1]) * layer.units * _tokens(layer.output.shape)
    if isinstance(layer, layers.MultiHeadAttention):
        # Self-attention over the output's T tokens (every model here calls mha(y, y)).
        config = layer.get_config()
        heads, key, value = config["num_heads"], config["key_dim"], config["value_dim"] or config["key_dim"]
        tokens, width = _tokens(layer.output.shape), int(layer.output.shape[-1])
        projections = 2 * tokens * width * heads * (2 * key + value) + 2 * tokens * heads * value * width
        return projections + 2 * tokens * tokens * heads * (key + value)
    if isinstance(layer, layers.Dot):  # CCT's sequence pooling: [T, 1] x [T, width]
        a, b = (s.shape for s in layer.input)
        return 2 * _tokens(a) * int(a[-1]) * int(b[-1])
    return 0


def forward_flops(model: keras.Model) -> int:
    """FLOPs of one image's forward pass through `model` (a built functional model)."""
    return _layer_flops(model)
