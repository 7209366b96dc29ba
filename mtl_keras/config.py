"""Every setting of a training run, in one section per stage, and every choice list.

    DataConfig     which dataset, its splits, training augmentation        -> data.datasets.prepare, pipeline
    ModelConfig    task, trunk, its size, heads                              -> modeling.build, models.build_model
    OptimConfig    recipe, loss weighting, precision, distribution           -> modeling.build_and_compile, fit
    RunConfig      seed and run folder                                       -> train
    ServingConfig  export and its checks                                     -> serving.runs.export_run

Field names are the flag names (flags.py), unique across sections, so a run's flags.txt and config.json stay
flat. What identifies a run (checkpoint resume, finished experiment runs, MTL/STL pairing) is derived here
from each field's `role`, in `identity`. Imports no TensorFlow and no Keras.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from mtl_keras.errors import ConfigError

# Choice lists. Each registry (data/sources, models, ...) asserts it implements exactly its list. Loss weightings
# are listed by their registry alone (mtl_keras.weightings, Keras-free); their settings' defaults are fields here.
DATASETS = ("shapes", "cifar10", "cifar100", "fashion_mnist", "folder", "csv")
TASKS = ("mtl", "fine", "coarse")
# Policies apply in this order. alt_flip_crop: flip_crop whose flip alternates per image by epoch (airbench).
AUGMENTS = ("none", "flip_crop", "alt_flip_crop", "randaugment", "mixup", "cutmix")
TRUNKS = ("vit", "seed_vit", "resnet152", "cct")
HEAD_KINDS = ("light", "seed")
COARSE_HEADS = ("learned", "marginal", "both")  # models/hierarchy.py
STEMS = ("conv", "patch")
STEM_INITS = ("default", "whitened")  # models/whiten.py
OPTIMIZERS = ("adamw", "adam", "muon")
LR_SCHEDULES = ("cosine", "constant")
# Input pipelines (data/feeds.py): auto is tf_data where TensorFlow is installed, else host (numpy, no TensorFlow).
INPUT_PIPELINES = ("auto", "tf_data", "host")
DISTRIBUTIONS = ("auto", "none", "mirrored", "multi_worker")
ONNX_CONVERTERS = ("tf2onnx", "keras")  # serving/onnx_convert.py
PRECISION_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}

# Roles: what a field means for a run's identity (see `identity`).
TRAINING = "training"  # changes what is trained: a checkpoint or finished run with another value is another run
TASK = "task"  # the task and its loss: differs between an MTL run and its STL pair, else like TRAINING
SEED = "seed"  # like TASK: runs are paired seed by seed
EVALUATION = "evaluation"  # how the trained model is evaluated and exported: a checkpoint may resume under another
PLACE = "place"  # where inputs and outputs live, how they are checked, compile speed: never identifies a run
# Where the images are read from: identifies a run when the dataset is that folder or file (FILE_DATASETS, by its
# real path; a resumed folder run on another --data_dir re-scored the old model on new data), else like PLACE
# (CIFAR's archive or tfds folder: every CIFAR source holds the same images).
DATA = "data"
FILE_DATASETS = ("folder", "csv")


# A setting added after runs were first recorded (checkpoints' state.json, config.json) is absent from older
# records. `before` is the value that reproduces what versions without the setting did; an older record that
# lacks a setting reads as that value. An identifying setting with no such value (ABSENT) makes an older record
# that lacks it another run: refused, never guessed from today's default.
ABSENT = "<absent>"


def _field(default, role: str = TRAINING, before=ABSENT):
    return dataclasses.field(default=default, metadata={"role": role, "before": before})


def parse_policies(spec: str) -> tuple[str, ...]:
    """"flip_crop,mixup" -> ("flip_crop", "mixup") in application order; "none" or "" -> ()."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in AUGMENTS]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown[0]!r}; use a comma-separated list of "
                         f"{', '.join(AUGMENTS[1:])}, or none")
    if "none" in names and len(names) > 1:
        raise ValueError(f"augmentation 'none' cannot be combined with others (got {spec!r})")
    if {"flip_crop", "alt_flip_crop"} <= set(names):
        raise ValueError(f"flip_crop and alt_flip_crop are two ways to flip: choose one (got {spec!r})")
    return tuple(n for n in AUGMENTS[1:] if n in names)


@dataclasses.dataclass
class DataConfig:
    dataset: str = _field("shapes")
    # CIFAR archive or tfds data_dir, image tree ROOT (folder), label file (csv)
    data_dir: str | None = _field(None, DATA)
    download: bool = _field(True, PLACE)
    validation_fraction: float = _field(0.15)
    max_train_examples: int | None = _field(None)
    fashion_mnist_dir: str = _field("/usr/share/datasets/fashion-mnist", PLACE)
    folder_image_size: int = _field(32)
    folder_test_fraction: float = _field(0.15)
    folder_cache_mb: float = _field(2048.0)
    # Decompression-bomb guard (data/headers.py): larger files are skipped like undecodable ones. 40 M pixels is
    # 120 MB as uint8 RGB; a 420 KB 12000 x 12000 PNG took 4.3 GB to decode.
    max_image_pixels: int = _field(40_000_000, PLACE)
    csv_allow_outside_paths: bool = _field(False, PLACE)  # csv: image paths outside the CSV's folder (off: refused)
    augment: str = _field("flip_crop")
    randaugment_ops: int = _field(2)
    randaugment_magnitude: float = _field(0.5)
    mixup_alpha: float = _field(0.2)
    cutmix_alpha: float = _field(1.0)
    input_pipeline: str = _field("auto", PLACE)  # how batches are made, not what they hold: never identifies a run


@dataclasses.dataclass
class ModelConfig:
    task: str = _field("mtl", TASK)
    model: str = _field("vit")  # the trunk
    variant: str = _field("Mu/4")
    stem: str = _field("conv")
    stem_init: str = _field("default", before="default")  # whitened: the first conv from training patches' PCA
    image_size: int | None = _field(None)
    dropout: float = _field(0.0)
    stochastic_depth: float = _field(0.1)
    head: str = _field("light")
    head_dropout: float = _field(0.0, TASK)
    # how the coarse output relates to the fine one (models/hierarchy.py)
    coarse_head: str = _field("learned", TASK, before="learned")
    consistency_weight: float = _field(1.0, TASK, before=1.0)  # coarse_head=both: weight of the consistency loss
    # average over the image and its mirror, inside the exported model
    tta_flip: bool = _field(False, EVALUATION, before=False)
    # validation fine-level precision the hedge threshold aims at (an answer older runs never gave)
    hedge_target: float = _field(0.95, EVALUATION, before=0.95)
    calibrate: bool = _field(False, EVALUATION, before=False)  # a validation-fitted temperature inside the model


@dataclasses.dataclass
class OptimConfig:
    epochs: int = _field(10)
    # Wall-clock seconds of training (budget.py): the schedule follows the elapsed share and --epochs is a cap.
    time_budget: float | None = _field(None, before=None)
    # Progressive resolution (modeling.at_resolution): the first progressive_share of training (of the time
    # budget, else of the epochs) on images resized to progressive_size inside the model, then at full size.
    progressive_size: int = _field(0, before=0)  # 0: off
    progressive_share: float = _field(0.5, before=0.5)
    batch_size: int = _field(128)
    learning_rate: float = _field(1e-3)
    weight_decay: float = _field(0.05)
    warmup_epochs: float = _field(1.0)
    label_smoothing: float = _field(0.0)
    gamma: float = _field(0.5, TASK)
    loss_weighting: str = _field("fixed", TASK)
    # loss_weighting=famo: step size of the task logits (Liu et al. 2023)
    famo_lr: float = _field(0.025, TASK, before=0.025)
    famo_decay: float = _field(0.01, TASK, before=0.01)  # loss_weighting=famo: weight decay of the task logits
    optimizer: str = _field("adamw")
    lr_schedule: str = _field("cosine")
    grad_clip_norm: float = _field(0.0)
    ema: bool = _field(False)
    ema_momentum: float = _field(0.999)
    jit_compile: bool = _field(True, PLACE)  # XLA or not: the same training, faster or slower
    mixed_precision: str = _field("float32")
    distribution: str = _field("auto")
    # --distribution=multi_worker (JAX): the process group, else the KERAS_DISTRIBUTION_* variables (processes.py)
    job_addresses: str | None = _field(None, PLACE)
    num_processes: int | None = _field(None, PLACE)
    process_id: int | None = _field(None, PLACE)
    # How long a process waits for all the others at start (a peer that never comes up), in seconds.
    peer_timeout: int = _field(300, PLACE)
    cpu_devices: int = _field(1)
    deterministic: bool = _field(False)


@dataclasses.dataclass
class RunConfig:
    seed: int = _field(0, SEED)
    workdir: str = _field("runs/default", PLACE)


@dataclasses.dataclass
class ServingConfig:
    export_dir: str = _field("export", PLACE)
    model_name: str = _field("mtl_keras", PLACE)
    export: bool = _field(True, PLACE)
    int8: bool = _field(True, PLACE)
    check: bool = _field(True, PLACE)
    atol: float = _field(1e-5, PLACE)
    int8_max_drop: float = _field(1.0, PLACE)
    top_k: int = _field(5, PLACE)  # serving_bytes: class names and scores per head in each response
    onnx_converter: str = _field("tf2onnx", PLACE)  # model.onnx from the SavedModel signature or Keras's export


@dataclasses.dataclass
class TrainConfig:
    """A training run: one section per stage; each stage receives its own section."""
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    serving: ServingConfig = dataclasses.field(default_factory=ServingConfig)


SECTIONS = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
_SECTION_TYPES = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "run": RunConfig,
                  "serving": ServingConfig}
# flag / field name -> (section name, dataclass field), in flags.txt order
FIELDS = {f.name: (section, f) for section, cls in _SECTION_TYPES.items() for f in dataclasses.fields(cls)}


def make(**values) -> TrainConfig:
    """A `TrainConfig` from flat settings by flag name over the defaults, e.g. `make(model="cct", epochs=1)`."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown settings {', '.join(unknown)}")
    sections = {name: {} for name in _SECTION_TYPES}
    for name, value in values.items():
        sections[FIELDS[name][0]][name] = value
    return TrainConfig(**{name: _SECTION_TYPES[name](**kw) for name, kw in sections.items()})


def flat(config: TrainConfig) -> dict:
    """Every setting by flag name, in flags.txt order (what config.json holds)."""
    return {name: getattr(getattr(config, section), name) for name, (section, _) in FIELDS.items()}


def identity(config: TrainConfig, purpose: str = "run") -> dict:
    """The settings that make two runs the same run, by flag name.

    "run": everything but where things live (a finished run with other values is another run); the images'
    folder or CSV file of a folder / csv dataset is part of every identity, by its real path;
    "checkpoint": also without how the model is evaluated (a checkpoint with other values is refused);
    "pairing": without where things live, the task, its loss and the seed (what an MTL run shares with its STL pair).
    """
    ignored = {"run": {PLACE}, "checkpoint": {PLACE, EVALUATION}, "pairing": {PLACE, TASK, SEED}}[purpose]
    if config.data.dataset not in FILE_DATASETS:
        ignored = ignored | {DATA}
    roles = {name: FIELDS[name][1].metadata["role"] for name in FIELDS}
    # A data path by its real path: ./d, d, ~/d and a link to d are the same data.
    return {name: os.path.realpath(os.path.expanduser(value)) if roles[name] == DATA and value else value
            for name, value in flat(config).items() if roles[name] not in ignored}


def read_json(path) -> TrainConfig:
    """The `TrainConfig` a run saved as WORKDIR/config.json (flat); settings it lacks take today's defaults."""
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} cannot be read ({e}); is it a run folder's config.json?") from None
    return from_saved(values, path)


def from_saved(values: dict, path) -> TrainConfig:
    """The `TrainConfig` of a config.json's parsed `values` (read_json's second half, for a caller that already
    read the file); `path` names it in the error."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{path} holds settings this version does not know ({', '.join(unknown)}); "
                          f"use the mtl_keras version that wrote it")
    values = with_absent(values)
    lacking = sorted(k for k, v in values.items() if v == ABSENT)
    if lacking:
        raise ConfigError(f"{path} lacks settings that identify its run ({', '.join(lacking)}); "
                          f"use the mtl_keras version that wrote it")
    return make(**values)


def with_absent(saved: dict) -> dict:
    """An older run record's `saved` settings with each identifying setting it lacks filled with the value that
    reproduces the versions before that setting (`before`), or ABSENT where no value does; a missing
    PLACE setting (where things live, never part of a run's identity) is left to today's default."""
    out = dict(saved)
    for name, (_, field) in FIELDS.items():
        if name not in out and field.metadata["role"] != PLACE:
            out[name] = field.metadata["before"]
    return out


def flag_types() -> dict[str, object]:
    """Every setting's type annotation by flag name (for parsers that do not use absl, e.g. the GPU runner)."""
    import typing

    hints = {name: typing.get_type_hints(cls) for name, cls in _SECTION_TYPES.items()}
    return {name: hints[section][name] for name, (section, _) in FIELDS.items()}
