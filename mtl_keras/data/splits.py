"""How folder and CSV datasets (and the GPU runner's CIFAR-10 pack) carve validation, test and the
--max_train_examples subset: per fine class, with a fixed seed. numpy only, no TensorFlow."""

from __future__ import annotations

import numpy as np

SPLIT_SEED = 0  # fixed, not --seed: runs with different seeds are tested on the same images


def assign_splits(split: np.ndarray, fine: np.ndarray, validation_fraction: float,
                  test_fraction: float) -> np.ndarray:
    """Split ids (0 train, 1 val, 2 test) with val and test carved per fine class from train when absent."""
    split = split.copy()
    rng = np.random.default_rng(SPLIT_SEED)
    carve = [(1, 0.0 if (split == 1).any() else validation_fraction),
             (2, 0.0 if (split == 2).any() else test_fraction)]
    for c in np.unique(fine[split == 0]):
        members = rng.permutation(np.flatnonzero((split == 0) & (fine == c)))
        start = 0
        for target, fraction in carve:
            n = min(int(round(len(members) * fraction)), len(members) - start - 1)  # keep one to train on
            split[members[start:start + max(n, 0)]] = target
            start += max(n, 0)
    return split


def train_subset(split: np.ndarray, max_train_examples: int | None) -> np.ndarray:
    """Indices of the training examples in training order: a seeded shuffle, so a cap takes a random subset."""
    return np.random.default_rng(SPLIT_SEED).permutation(np.flatnonzero(split == 0))[:max_train_examples or None]
