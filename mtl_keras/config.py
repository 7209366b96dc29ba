"""Every setting of a training run with the defaults the flags take, and every choice list.

Imports no TensorFlow and no Keras: flags, validators and the JAX-only tools read it. The registries that
implement a choice (data/sources, models, ...) are checked against these lists by their own modules.
"""

from __future__ import annotations

import dataclasses

# Choice lists. Each registry asserts it implements exactly its list.
DATASETS = ("shapes", "cifar10", "cifar100", "fashion_mnist", "folder", "csv")
TASKS = ("mtl", "fine", "coarse")
AUGMENTS = ("none", "flip_crop", "randaugment", "mixup", "cutmix")  # policies apply in this order
TRUNKS = ("vit", "seed_vit", "resnet152", "cct")
HEAD_KINDS = ("light", "seed")
STEMS = ("conv", "patch")
WEIGHTINGS = ("fixed", "uncertainty", "dwa")
DYNAMIC_WEIGHTINGS = ("uncertainty", "dwa")  # learned or updated during training
OPTIMIZERS = ("adamw", "adam")
LR_SCHEDULES = ("cosine", "constant")
DISTRIBUTIONS = ("auto", "none", "mirrored", "multi_worker")
PRECISION_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def parse_policies(spec: str) -> tuple[str, ...]:
    """"flip_crop,mixup" -> ("flip_crop", "mixup") in application order; "none" or "" -> ()."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in AUGMENTS]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown[0]!r}; use a comma-separated list of "
                         f"{', '.join(AUGMENTS[1:])}, or none")
    if "none" in names and len(names) > 1:
        raise ValueError(f"augmentation 'none' cannot be combined with others (got {spec!r})")
    return tuple(n for n in AUGMENTS[1:] if n in names)


@dataclasses.dataclass
class DataConfig:
    """Which dataset, how it is split, and the training augmentation (the data stage's settings)."""
    dataset: str = "shapes"
    data_dir: str | None = None  # tfds data_dir (CIFAR), image tree ROOT (folder) or label file (csv)
    download: bool = True
    validation_fraction: float = 0.15
    max_train_examples: int | None = None
    fashion_mnist_dir: str = "/usr/share/datasets/fashion-mnist"
    folder_image_size: int = 32
    folder_test_fraction: float = 0.15
    folder_cache_mb: float = 2048.0
    augment: str = "flip_crop"
    randaugment_ops: int = 2
    randaugment_magnitude: float = 0.5
    mixup_alpha: float = 0.2
    cutmix_alpha: float = 1.0


_DATA = DataConfig()


@dataclasses.dataclass
class TrainConfig:
    # data (defaults: DataConfig's)
    dataset: str = _DATA.dataset
    data_dir: str | None = _DATA.data_dir
    download: bool = _DATA.download
    validation_fraction: float = _DATA.validation_fraction
    max_train_examples: int | None = _DATA.max_train_examples
    fashion_mnist_dir: str = _DATA.fashion_mnist_dir
    folder_image_size: int = _DATA.folder_image_size
    folder_test_fraction: float = _DATA.folder_test_fraction
    folder_cache_mb: float = _DATA.folder_cache_mb
    augment: str = _DATA.augment
    randaugment_ops: int = _DATA.randaugment_ops
    randaugment_magnitude: float = _DATA.randaugment_magnitude
    mixup_alpha: float = _DATA.mixup_alpha
    cutmix_alpha: float = _DATA.cutmix_alpha
    # model
    task: str = "mtl"
    model: str = "vit"
    variant: str = "Mu/4"
    stem: str = "conv"
    image_size: int | None = None
    dropout: float = 0.0
    stochastic_depth: float = 0.1
    head: str = "light"
    head_dropout: float = 0.0
    # optimisation
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    gamma: float = 0.5
    loss_weighting: str = "fixed"
    optimizer: str = "adamw"
    lr_schedule: str = "cosine"
    grad_clip_norm: float = 0.0
    ema: bool = False
    ema_momentum: float = 0.999
    jit_compile: bool = True
    mixed_precision: str = "float32"
    distribution: str = "auto"
    cpu_devices: int = 1
    deterministic: bool = False
    # run and artifacts
    seed: int = 0
    workdir: str = "runs/default"
    export_dir: str = "export"
    model_name: str = "mtl_keras"
    export: bool = True
    int8: bool = True
    check: bool = True
    atol: float = 1e-5
    int8_max_drop: float = 1.0

    @property
    def data(self) -> DataConfig:
        """The data stage's section of this run."""
        return DataConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DataConfig)})


def read_json(path) -> TrainConfig:
    """The `TrainConfig` a run saved as WORKDIR/config.json; settings it lacks take today's defaults."""
    import json
    from pathlib import Path

    from mtl_keras.errors import ConfigError

    try:
        values = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} cannot be read ({e}); is it a run folder's config.json?") from None
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{path} holds settings this version does not know ({', '.join(unknown)}); "
                          f"use the mtl_keras version that wrote it")
    return TrainConfig(**values)
