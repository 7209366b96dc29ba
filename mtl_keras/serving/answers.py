"""The answer served for an image's probabilities, in numpy: what predict prints and evaluation scores.

    pair     (fine, coarse) class ids: with `--coarse_head=marginal|both` the consistent pair (the most probable
             superclass, then the best fine class inside it: models.hierarchy.consistent_pair), with `learned`
             each head's argmax (which may contradict the hierarchy: `contradicts`)
    hedged   `label` and `level`: the pair's fine class when its probability reaches the export's
             `hedge_threshold`, else its superclass ("superclass only when unsure")

The SavedModel's serving_bytes signature computes the same in its graph (signatures.py); the ONNX model answers
probabilities only, and a client applies this post-processing with the metadata that travels with every
export (`Decoding`: classes.json, the ONNX metadata, the SavedModel's `decoding` signature). No TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

CONSISTENT_HEADS = ("marginal", "both")  # --coarse_head values whose served pair never contradicts the hierarchy
NEVER = 2.0  # a hedge threshold no probability reaches: no validation threshold met the target, answer coarse
KEYS = ("fine_to_coarse", "coarse_head", "hedge_threshold", "hedge_target", "temperature")


@dataclasses.dataclass
class Decoding:
    """How an export's probabilities become answers; its fields are classes.json's keys besides the names."""
    fine_to_coarse: list[int] | None = None
    coarse_head: str = "learned"
    hedge_threshold: float | None = None  # None: no validation images chose one; every answer is fine-level
    hedge_target: float | None = None  # the validation fine-level precision the threshold was chosen for
    temperature: dict[str, float] | None = None  # inside the model already; recorded for people

    @property
    def consistent(self) -> bool:
        return self.coarse_head in CONSISTENT_HEADS and self.fine_to_coarse is not None

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, values: dict) -> Decoding:
        return cls(**{k: values[k] for k in KEYS if values.get(k) is not None})

    def metadata(self) -> dict[str, str]:
        """ONNX metadata_props: every value a string (JSON for lists and dicts)."""
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in self.to_dict().items()}

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> Decoding:
        return cls.from_dict({k: meta[k] if k == "coarse_head" else json.loads(meta[k]) for k in KEYS if k in meta})


def pair(probs: dict[str, np.ndarray], fine_to_coarse, consistent: bool) -> dict[str, np.ndarray]:
    """Class ids per head: the consistent pair (`consistent`, two heads), else each head's argmax."""
    if consistent and set(probs) == {"fine", "coarse"}:
        from mtl_keras.models.hierarchy import consistent_pair

        fine, coarse = consistent_pair(probs["fine"], probs["coarse"], fine_to_coarse)
        return {"fine": fine, "coarse": coarse}
    return {name: np.asarray(p).argmax(-1) for name, p in probs.items()}


def contradicts(ids: dict[str, np.ndarray], fine_to_coarse) -> np.ndarray:
    """Whether each (fine, coarse) pair lies outside the hierarchy (the fine class's parent is not the coarse)."""
    return np.asarray(fine_to_coarse)[ids["fine"]] != ids["coarse"]


def fine_confidence(probs: dict[str, np.ndarray], ids: dict[str, np.ndarray]) -> np.ndarray:
    """The probability of each answer's fine class (what the hedge threshold compares)."""
    return np.take_along_axis(np.asarray(probs["fine"]), ids["fine"][:, None], -1)[:, 0]


def at_fine_level(probs: dict[str, np.ndarray], ids: dict[str, np.ndarray], threshold: float | None) -> np.ndarray:
    """True where the hedged answer is the fine class: its probability reaches `threshold` (None: always)."""
    if threshold is None:
        return np.ones(len(ids["fine"]), bool)
    return fine_confidence(probs, ids) >= np.float32(threshold)


def choose_threshold(confidence: np.ndarray, correct: np.ndarray, target: float) -> float:
    """The lowest threshold whose fine-level answers (confidence >= threshold) reach precision `target` on these
    images, so that as many images as possible are answered at the fine level; NEVER when none does."""
    order = np.argsort(-confidence, kind="stable")
    conf, hits = np.asarray(confidence, np.float32)[order], np.asarray(correct, bool)[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    # Only cut where the next image has a lower confidence: a threshold takes all tied images or none.
    ends = np.flatnonzero(np.append(conf[1:] < conf[:-1], True))
    ok = ends[precision[ends] >= target]
    return float(conf[ok.max()]) if len(ok) else NEVER


def ranked(probs: np.ndarray, first: np.ndarray, k: int) -> np.ndarray:
    """Class ids [N, k] of each row: the answered class `first` leads, then the others by probability (stable
    on ties: lower id first); serving_bytes orders its top-k lists the same way."""
    lead = np.asarray(probs, np.float64) + 2.0 * np.eye(probs.shape[-1])[np.asarray(first)]
    return np.argsort(-lead, axis=-1, kind="stable")[:, :k]


def answers(probs: dict[str, np.ndarray], names: dict[str, list[str]], decoding: Decoding) -> list[dict]:
    """One JSON-ready answer per image: the pair (names, ids, probabilities), the hedged `label` / `level`
    and, for a `learned` export with a fine-to-coarse map, whether the pair contradicts the hierarchy."""
    ids = pair(probs, decoding.fine_to_coarse, decoding.consistent)
    out = []
    fine_level = at_fine_level(probs, ids, decoding.hedge_threshold) if "fine" in ids and "coarse" in ids else None
    bad = contradicts(ids, decoding.fine_to_coarse) if fine_level is not None and decoding.fine_to_coarse else None
    for i in range(len(next(iter(ids.values())))):
        answer = {}
        for head, chosen in ids.items():
            c = int(chosen[i])
            answer[head] = {"class": names[head][c] if names.get(head) else str(c), "id": c,
                            "probability": float(probs[head][i, c])}
        if fine_level is not None:
            level = "fine" if fine_level[i] else "coarse"
            answer |= {"label": answer[level]["class"], "level": level}
            if bad is not None and not decoding.consistent:
                answer["contradicts_hierarchy"] = bool(bad[i])
        out.append(answer)
    return out
