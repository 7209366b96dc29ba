"""Task heads. Every output layer is named after its task (`fine`, `coarse`) and emits probabilities."""

from __future__ import annotations

from keras import layers


def light_head(features, num_classes: int, name: str, dropout: float = 0.0):
    """Dropout + Dense logits + a float32 softmax layer named `name`."""
    x = layers.Dropout(dropout, name=f"{name}_drop")(features) if dropout else features
    x = layers.Dense(num_classes, name=f"{name}_logits")(x)
    return layers.Activation("softmax", dtype="float32", name=name)(x)
