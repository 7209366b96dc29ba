"""Hierarchy-aware heads: coarse probabilities that agree with the fine ones (`--coarse_head`).

    learned   two independent softmax heads (the seed study's hard parameter sharing)
    marginal  no coarse head: P(coarse = c) = sum of P(fine = f) over the fine classes f of superclass c, so the
              two distributions can never disagree; the coarse loss trains the fine head through that sum
    both      a learned coarse head too, pulled towards the fine head's marginal by a consistency loss
              (symmetric KL, weight `consistency_weight`) during training; at inference the two heads are
              combined into one joint distribution over consistent (fine, coarse) pairs,
              q(f) ~ P_fine(f) * P_coarse(parent(f)), and both outputs are read from it (fine = q, coarse = its
              marginal)

With `marginal` and `both` the outputs are one distribution seen at two levels, but the argmax of a marginal can
still fall outside the superclass of the fine argmax (fine 0.4 / 0.3 / 0.3 with the last two in one superclass);
`consistent_pair` is the decision rule that never contradicts the hierarchy (the superclass first, then the
best fine class inside it), used by evaluation and every served answer for these heads (serving/answers.py).
`with_temperature` puts a `--calibrate` temperature inside a model (`Tempered`).

Constants (the fine -> coarse matrix) are built inside `call`, like models.preprocess, so tf2onnx sees no
captured tensors. Only keras.ops: runs on every backend.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import layers, ops

from mtl_keras.config import COARSE_HEADS
EPSILON = 1e-7


def membership(fine_to_coarse: Sequence[int]) -> np.ndarray:
    """[fine, coarse] 0/1 float32 matrix: row f has a 1 in column parent(f)."""
    parents = np.asarray(fine_to_coarse, np.int64)
    m = np.zeros((len(parents), int(parents.max()) + 1), np.float32)
    m[np.arange(len(parents)), parents] = 1.0
    return m


@keras.saving.register_keras_serializable(package="mtl_keras")
class Marginalize(layers.Layer):
    """Fine probabilities [batch, fine] -> coarse probabilities [batch, coarse]: the sum over each superclass."""

    def __init__(self, fine_to_coarse: Sequence[int], **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.fine_to_coarse = [int(c) for c in fine_to_coarse]

    def call(self, fine):
        return ops.matmul(fine, ops.convert_to_tensor(membership(self.fine_to_coarse), fine.dtype))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], max(self.fine_to_coarse) + 1)

    def get_config(self):
        return {**super().get_config(), "fine_to_coarse": self.fine_to_coarse}


@keras.saving.register_keras_serializable(package="mtl_keras")
class JointHeads(layers.Layer):
    """`--coarse_head=both`: (fine, learned coarse) probabilities -> (fine, coarse).

    Training: passes both through and adds `weight` * symmetric KL(marginal(fine) || coarse) as a model loss.
    Inference: the product of the two heads over consistent pairs, normalised; coarse is its marginal.
    """

    def __init__(self, fine_to_coarse: Sequence[int], weight: float = 1.0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.fine_to_coarse = [int(c) for c in fine_to_coarse]
        self.weight = float(weight)

    def call(self, inputs, training=False):
        fine, coarse = inputs
        m = ops.convert_to_tensor(membership(self.fine_to_coarse), fine.dtype)
        if training:
            if self.weight:
                marginal = ops.clip(ops.matmul(fine, m), EPSILON, 1.0)
                learned = ops.clip(coarse, EPSILON, 1.0)
                log_ratio = ops.log(marginal) - ops.log(learned)
                kl = ops.sum((marginal - learned) * log_ratio, axis=-1)  # KL(p||q) + KL(q||p)
                self.add_loss(self.weight * 0.5 * ops.mean(kl))
            return fine, coarse
        joint = fine * ops.matmul(coarse, ops.transpose(m))  # P_fine(f) * P_coarse(parent(f))
        joint = joint / ops.maximum(ops.sum(joint, axis=-1, keepdims=True), EPSILON)
        return joint, ops.matmul(joint, m)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "fine_to_coarse": self.fine_to_coarse, "weight": self.weight}


def consistent_pair(fine_probs: np.ndarray, coarse_probs: np.ndarray, fine_to_coarse) -> tuple[np.ndarray, np.ndarray]:
    """(fine, coarse) class ids that never contradict the hierarchy: the most probable superclass, then the most
    probable fine class inside it."""
    m = membership(fine_to_coarse)
    coarse = np.asarray(coarse_probs).argmax(-1)
    inside = np.where(m[:, coarse].T > 0, np.asarray(fine_probs), -np.inf)
    return inside.argmax(-1), coarse


def heads(features, num_classes: dict[str, int], make_head, coarse_head: str, fine_to_coarse=None,
          consistency_weight: float = 1.0) -> dict:
    """The output dict {"fine": ..., "coarse": ...} for `coarse_head`; `make_head(features, n, name)` builds one
    softmax head (models.heads). Single-task models and `learned` get one independent head per task."""
    if coarse_head not in COARSE_HEADS:
        raise ValueError(f"unknown coarse head {coarse_head!r}; choose one of {', '.join(COARSE_HEADS)}")
    if coarse_head == "learned" or set(num_classes) != {"fine", "coarse"}:
        if coarse_head != "learned":
            raise ValueError(f"--coarse_head={coarse_head} needs both heads (--task=mtl), got {', '.join(num_classes)}")
        return {name: make_head(features, n, name) for name, n in num_classes.items()}
    if fine_to_coarse is None or len(fine_to_coarse) != num_classes["fine"] \
            or max(fine_to_coarse) + 1 != num_classes["coarse"]:
        raise ValueError(f"--coarse_head={coarse_head} needs the fine -> coarse map of the "
                         f"{num_classes['fine']} fine classes")
    if coarse_head == "marginal":
        fine = make_head(features, num_classes["fine"], "fine")
        return {"fine": fine, "coarse": Marginalize(fine_to_coarse, name="coarse")(fine)}
    fine_p = make_head(features, num_classes["fine"], "fine_head")
    coarse_p = make_head(features, num_classes["coarse"], "coarse_head")
    fine, coarse = JointHeads(fine_to_coarse, consistency_weight, name="joint")([fine_p, coarse_p])
    # Identity layers carry the task names, so every export names its outputs fine / coarse.
    return {"fine": layers.Identity(name="fine", dtype="float32")(fine),
            "coarse": layers.Identity(name="coarse", dtype="float32")(coarse)}


@keras.saving.register_keras_serializable(package="mtl_keras")
class Tempered(layers.Layer):
    """Probabilities at a temperature, softmax(log p / t): `--calibrate`'s temperature inside the exported model
    (confidence.temper is the same in numpy)."""

    def __init__(self, temperature: float, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.temperature = float(temperature)

    def call(self, p):
        return ops.softmax(ops.log(ops.clip(p, EPSILON, 1.0)) / self.temperature, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


def with_temperature(model: keras.Model, temperature: dict[str, float], fine_to_coarse=None) -> keras.Model:
    """`model` with its heads at the given temperatures, output names kept; with `fine_to_coarse` (a coarse
    output tied to the fine one) the coarse output is the marginal of the tempered fine output."""
    inputs = keras.Input(model.input_shape[1:], name=model.inputs[0].name)
    raw = model(inputs)
    out = {h: Tempered(temperature[h], name=f"{h}_tempered")(p) if h in temperature else p for h, p in raw.items()}
    if fine_to_coarse is not None and "fine" in temperature and "coarse" in out:
        out["coarse"] = Marginalize(fine_to_coarse, name="coarse_marginal")(out["fine"])
    outputs = {h: layers.Identity(name=h, dtype="float32")(p) for h, p in out.items()}
    return keras.Model(inputs, outputs, name=f"{model.name}_calibrated")
