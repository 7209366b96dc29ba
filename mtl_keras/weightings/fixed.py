"""fixed: gamma * L_fine + (1 - gamma) * L_coarse (the replicated study), through compile's loss_weights; a
single-task model weighs its one loss by 1."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def loss_weights(heads: Sequence[str], settings: Mapping) -> dict[str, float]:
    gamma = settings["gamma"]
    return {"fine": gamma, "coarse": 1.0 - gamma} if len(heads) == 2 else {h: 1.0 for h in heads}
