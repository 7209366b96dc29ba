"""Task heads. Every output layer is named after its task (`fine`, `coarse`) and emits float32 probabilities."""

from __future__ import annotations

from keras import layers

# The seed study's branch MLPs, per task: the fine branch is one layer deeper.
SEED_BRANCHES: dict[str, tuple[int, ...]] = {"fine": (1024, 512, 256, 128), "coarse": (512, 256, 128)}


def _softmax(x, num_classes: int, name: str):
    x = layers.Dense(num_classes, name=f"{name}_logits")(x)
    # float32 softmax: under a mixed-precision policy float16 probabilities underflow and lose parity.
    return layers.Activation("softmax", dtype="float32", name=name)(x)


def light_head(features, num_classes: int, name: str, dropout: float = 0.0):
    """Dropout + Dense logits + a float32 softmax layer named `name` (the trunks end in a norm already)."""
    x = layers.Dropout(dropout, name=f"{name}_drop")(features) if dropout else features
    return _softmax(x, num_classes, name)


def seed_head(features, num_classes: int, name: str, dropout: float = 0.0, activation="relu", branch: str = ""):
    """The seed's branch: Dense layers of `SEED_BRANCHES[branch or name]` (each + activation + dropout), then
    softmax."""
    x = features
    for i, units in enumerate(SEED_BRANCHES[branch or name]):
        x = layers.Dense(units, activation=activation, name=f"{name}_dense{i}")(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"{name}_drop{i}")(x)
    return _softmax(x, num_classes, name)
