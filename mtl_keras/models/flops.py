"""Forward FLOPs of a Keras model per image: 2 x the multiply-accumulates of its convolutions, dense layers and
attention (the convention of MFU figures; norms, activations, pooling and softmax are left out, a few %).

Works from the layers' weights and output shapes, so it needs no backend profiler and counts the same on
TensorFlow and JAX (XLA's cost analysis agrees within 4 %: Mu/4 0.0198 vs 0.0191 GFLOP, CCT-7/3x1 2.392 vs 2.363,
BUILD_NOTES.md). A training step costs about 3x the forward pass (forward + two backward matmuls).
"""

from __future__ import annotations

import math

import keras


def _layers(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _layers(layer)
        else:
            yield layer


def forward_flops(model: keras.Model) -> int:
    """FLOPs of one image's forward pass through a built functional `model`: Dense, Conv, attention, Dot."""
    total = 0
    for layer in _layers(model):
        if not hasattr(layer.output, "shape"):  # several outputs (hierarchy.JointHeads): no kernel, no FLOPs counted
            continue
        out = layer.output.shape
        if isinstance(layer, keras.layers.MultiHeadAttention):  # self-attention over the output's tokens
            tokens, width = math.prod(out[1:-1]), out[-1]
            h, kd, vd = layer.num_heads, layer.key_dim, layer.value_dim or layer.key_dim
            projections = tokens * width * h * (2 * kd + vd) + tokens * h * vd * width
            total += 2 * (projections + tokens * tokens * h * (kd + vd))
        elif getattr(layer, "kernel", None) is not None:  # Dense (per token) and Conv (per output pixel)
            total += 2 * math.prod(out[1:-1]) * math.prod(layer.kernel.shape)
        elif isinstance(layer, keras.layers.Dot):  # CCT's sequence pooling: [T, 1] x [T, width]
            a, b = (t.shape for t in layer.input)
            total += 2 * math.prod(a[1:]) * b[-1]
    return int(total)
