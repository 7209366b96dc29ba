"""`TrainConfig`: every setting of a training run, with the defaults the flags take."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class TrainConfig:
    # data
    dataset: str = "shapes"
    data_dir: str | None = None
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
    tta_flip: bool = False
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
