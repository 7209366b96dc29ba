"""Multi-task loss weightings, found by name: one `WeightingSpec` each in `REGISTRY`, its behaviour in the module
of this package with the weighting's name.

The registry holds what flags and config need (names, one-line descriptions, settings) and imports no Keras, so
`--help` and flag validation stay TensorFlow-free; a weighting's module is imported when a model uses it.

A weighting without state in the model (`stateful=False`) gives compile constant per-head multipliers:
    loss_weights(heads, settings) -> {head: multiplier}
A stateful one keeps its state in the model's `losses.TaskWeights` layer (`layer`, its task index `i`):
    build(layer, n)                  adds its variables to the layer (n tasks)
    loss(layer, i, ce)               task i's weighted per-example loss from its per-example cross-entropy
    weights(layer)                   each task's loss multiplier now, as numpy (logged as `<task>_weight`)
    gradient_weight(layer, i, level) the multiplier of task i's cross-entropy gradient in a loss call whose batch
                                     mean cross-entropy is `level`, from the state before that call (a float)
    callbacks(layer)                 the `model.fit` callbacks that update its state
Adding a weighting: its module and one entry here (and the defaults of its settings in config.OptimConfig).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from types import ModuleType

from mtl_keras import config


@dataclasses.dataclass(frozen=True)
class WeightingSpec:
    name: str  # --loss_weighting's value and the module holding the behaviour
    description: str  # one line, for --loss_weighting's help
    # State in the model (a TaskWeights layer) that training learns or updates; it weighs the task losses
    # against each other, so it needs two heads.
    stateful: bool
    settings: tuple[str, ...] = ()  # OptimConfig fields it takes (a stateful one's are given to its layer)

    @property
    def behaviour(self) -> ModuleType:
        return importlib.import_module(f"{__name__}.{self.name}")


REGISTRY: dict[str, WeightingSpec] = {s.name: s for s in (
    WeightingSpec("fixed", "gamma * fine + (1 - gamma) * coarse, constant (--gamma; the replicated study)",
                  stateful=False, settings=("gamma",)),
    WeightingSpec("uncertainty", "learned per-task uncertainty, exp(-s_k) * L_k + s_k / 2 (Kendall et al. 2018)",
                  stateful=True),
    WeightingSpec("dwa", "Dynamic Weight Average: weights from the last two epochs' loss ratios (Liu et al. 2019)",
                  stateful=True),
    WeightingSpec("famo", "Fast Adaptive Multitask Optimization (Liu et al. 2023; --famo_lr, --famo_decay)",
                  stateful=True, settings=("famo_lr", "famo_decay")),
)}
NAMES = tuple(REGISTRY)
STATEFUL = tuple(name for name, s in REGISTRY.items() if s.stateful)
_DEFAULTS = config.OptimConfig()
for _spec in REGISTRY.values():  # a setting's default lives in config.py
    for _name in _spec.settings:
        assert hasattr(_DEFAULTS, _name), f"weighting {_spec.name}: config.OptimConfig has no setting {_name}"


def get(name: str) -> WeightingSpec:
    """The registered spec of `name`; ValueError (one line with the choices) for another name."""
    if name not in REGISTRY:
        raise ValueError(f"unknown loss weighting {name!r}; choose one of {', '.join(NAMES)}")
    return REGISTRY[name]


def settings(name: str, values: Mapping | None = None) -> dict:
    """Weighting `name`'s settings by config name: from `values` (e.g. `vars(optim)`), else config.py's default."""
    values = values or {}
    return {key: values.get(key, getattr(_DEFAULTS, key)) for key in get(name).settings}


def help_text() -> str:
    """--loss_weighting's help: every registered weighting and its description."""
    return "MTL loss weighting: " + "; ".join(f"{s.name}: {s.description}" for s in REGISTRY.values()) + "."
