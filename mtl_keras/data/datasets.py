"""`prepare`: a dataset's train / validation / test splits for a run, from its `config.DataConfig`.

The source (sources/) gives train and test, and val when it defines one (folder / csv); otherwise validation
is a seeded random share of train. `--max_train_examples` then caps train.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mtl_keras.config import DataConfig
from mtl_keras.data import sources
from mtl_keras.data.types import Split, Splits


def carve_validation(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Splits off a seeded random `fraction` of train as validation (at least one example each)."""
    order = np.random.default_rng(seed).permutation(len(train))
    n_val = min(max(int(round(len(train) * fraction)), 1), len(train) - 1) if fraction > 0 else 0
    return train.take(np.sort(order[n_val:])), train.take(np.sort(order[:n_val]))


def prepare(settings: DataConfig, seed: int = 0) -> Splits:
    """Loads `settings.dataset` into train / validation / test splits (validation carved with `seed`)."""
    source = sources.get(settings.dataset)(settings)
    train, val = source.train, source.val
    if val is None:
        train, val = carve_validation(train, settings.validation_fraction, seed)
    if settings.max_train_examples:
        train = train.take(slice(0, settings.max_train_examples))
    return Splits(source.info, train, val, source.test)


def load(dataset: str, seed: int = 0, **settings) -> Splits:
    """`prepare` with keyword settings over the defaults, e.g. `load("cifar10", data_dir=DIR, download=False)`."""
    return prepare(dataclasses.replace(DataConfig(dataset=dataset), **settings), seed)
