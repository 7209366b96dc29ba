"""Dataset sources, one module per source, found by name: `get(name)` returns the source's
`load(settings: config.DataConfig) -> types.Source`.

The registry names modules rather than importing them, so listing or validating a dataset name imports no
TensorFlow; a source is imported when it is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from mtl_keras import config
from mtl_keras.errors import DatasetError

# dataset name -> module in this package whose `load` reads it
REGISTRY = {"shapes": "shapes", "cifar10": "cifar", "cifar100": "cifar", "fashion_mnist": "fashion_mnist",
            "folder": "files", "csv": "files"}
assert tuple(REGISTRY) == config.DATASETS, "config.DATASETS and the source registry must name the same datasets"


def get(name: str) -> Callable:
    """The `load` function of dataset `name`; DatasetError (one line with the choices) for another name."""
    if name not in REGISTRY:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(config.DATASETS)}")
    return importlib.import_module(f"{__name__}.{REGISTRY[name]}").load
