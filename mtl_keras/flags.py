"""Every command-line flag of mtl_keras, with help text and validation; nothing else reads sys.argv.

Override order: the defaults of `TrainConfig` -> `--flagfile=configs/X.flags` -> flags on the command line
(absl reads flags in order, so a flag after --flagfile wins).
"""

from __future__ import annotations

import dataclasses

from absl import flags

from mtl_keras import data
from mtl_keras.config import TrainConfig
from mtl_keras.distribute import DISTRIBUTIONS
from mtl_keras.modeling import PRECISION_POLICIES
from mtl_keras import losses
from mtl_keras.models import TRUNKS
from mtl_keras.models.heads import HEADS
from mtl_keras.models.vit import STEMS

FLAGS = flags.FLAGS
_D = TrainConfig()

# data
flags.DEFINE_enum("dataset", _D.dataset, data.DATASETS, "Dataset to train and evaluate on.")
flags.DEFINE_string("data_dir", _D.data_dir, "cifar10/cifar100: tensorflow-datasets data_dir with prepared data; "
                    "folder: the image tree ROOT (ROOT/COARSE/FINE/*.jpg); csv: the label file (path,fine,coarse).")
flags.DEFINE_boolean("download", _D.download, "Let tfds download a dataset that is not prepared in --data_dir.")
flags.DEFINE_float("validation_fraction", _D.validation_fraction,
                   "Share of the training split held out (seeded) for validation.", lower_bound=0.0, upper_bound=0.5)
flags.DEFINE_integer("max_train_examples", _D.max_train_examples,
                     "Cap on training examples after the validation split (unset: all).", lower_bound=1)
flags.DEFINE_string("fashion_mnist_dir", _D.fashion_mnist_dir,
                    "Folder with the Fashion-MNIST idx files (*-ubyte.gz), as `apt-get install "
                    "dataset-fashion-mnist` installs them.")
flags.DEFINE_integer("folder_image_size", _D.folder_image_size, "folder / csv: images are decoded and resized "
                     "to this square size (3 channels).", lower_bound=8)
flags.DEFINE_float("folder_test_fraction", _D.folder_test_fraction, "folder / csv without a test split: share of "
                   "each fine class held out (fixed seed) for testing.", lower_bound=0.0, upper_bound=0.5)
flags.DEFINE_float("folder_cache_mb", _D.folder_cache_mb, "folder / csv: decode all images once into memory when "
                   "their pixels fit in this many MB, else stream the files every epoch (0: always stream).",
                   lower_bound=0.0)
flags.DEFINE_string("augment", _D.augment,
                    f"Random augmentation in tf.data, never in the model: a comma-separated list of "
                    f"{', '.join(data.AUGMENTS[1:])}, or none. Applied in that order; mixup and cutmix "
                    f"together: each batch picks one.")
flags.DEFINE_integer("randaugment_ops", _D.randaugment_ops, "RandAugment: ops applied per image (with "
                     "--augment=...,randaugment).", lower_bound=1, upper_bound=11)
flags.DEFINE_float("randaugment_magnitude", _D.randaugment_magnitude, "RandAugment: op strength, 0-1 (Keras "
                   "`factor`).", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float("mixup_alpha", _D.mixup_alpha, "MixUp: Beta(alpha, alpha) mixing weights (> 0; with "
                   "--augment=...,mixup).", lower_bound=0.0)
flags.DEFINE_float("cutmix_alpha", _D.cutmix_alpha, "CutMix: Beta(alpha, alpha) box areas (> 0; with "
                   "--augment=...,cutmix).", lower_bound=0.0)
# model
flags.DEFINE_enum("task", _D.task, data.TASKS, "mtl: both heads; fine or coarse: a single-task baseline.")
flags.DEFINE_enum("model", _D.model, TRUNKS, "Shared trunk: vit, seed_vit and resnet152 (the seed study's, fixed shapes), cct (Compact Convolutional Transformer).")
flags.DEFINE_string("variant", _D.variant, "Trunk size: vit NAME/PATCH, e.g. Mu/4 (models/vit.py); cct LAYERS/KxN, e.g. 7/3x1 (models/cct.py). Ignored by seed_vit and resnet152.")
flags.DEFINE_enum("stem", _D.stem, STEMS, "ViT tokenizer: conv (convolutional stem) or patch (linear).")
flags.DEFINE_integer("image_size", _D.image_size, "Resize inputs to this size inside the model (unset: native).",
                     lower_bound=8)
flags.DEFINE_float("dropout", _D.dropout, "Dropout rate in the trunk (seed_vit: after Flatten).", lower_bound=0.0,
                   upper_bound=0.9)
flags.DEFINE_float("stochastic_depth", _D.stochastic_depth, "cct: drop-path rate of the last block (linear from 0).",
                   lower_bound=0.0, upper_bound=0.9)
flags.DEFINE_enum("head", _D.head, HEADS, "Task heads: light (Dense + softmax) or seed (the seed study's branch MLPs).")
flags.DEFINE_float("head_dropout", _D.head_dropout, "Dropout in the heads (seed: after each Dense).", lower_bound=0.0,
                   upper_bound=0.9)
flags.DEFINE_boolean("tta_flip", _D.tta_flip, "Evaluate and export the average of the model on each image and on "
                     "its mirror image (deterministic, inside the exported model; 2x inference cost, no training "
                     "change).")
# optimisation
flags.DEFINE_integer("epochs", _D.epochs, "Training epochs.", lower_bound=1)
flags.DEFINE_integer("batch_size", _D.batch_size, "Global batch size.", lower_bound=1)
flags.DEFINE_float("learning_rate", _D.learning_rate, "Peak learning rate (see --lr_schedule and --optimizer).",
                   lower_bound=0.0)
flags.DEFINE_float("weight_decay", _D.weight_decay, "AdamW decoupled weight decay (not used by --optimizer=adam).",
                   lower_bound=0.0)
flags.DEFINE_float("warmup_epochs", _D.warmup_epochs, "Linear warmup length in epochs.", lower_bound=0.0)
flags.DEFINE_float("label_smoothing", _D.label_smoothing, "Label smoothing for both heads.",
                   lower_bound=0.0, upper_bound=0.5)
flags.DEFINE_float("gamma", _D.gamma, "MTL weight of the fine loss; coarse gets 1 - gamma.",
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_enum("loss_weighting", _D.loss_weighting, losses.WEIGHTINGS, "MTL loss weighting: fixed (--gamma), "
                  "uncertainty (Kendall et al. 2018, learned) or dwa (Dynamic Weight Average, Liu et al. 2019).")
flags.DEFINE_enum("optimizer", _D.optimizer, ("adamw", "adam"), "adamw (decoupled --weight_decay) or adam (the "
                  "seed study; no weight decay).")
flags.DEFINE_enum("lr_schedule", _D.lr_schedule, ("cosine", "constant"), "cosine: linear warmup then cosine "
                  "to 0; constant: --learning_rate throughout (the seed study).")
flags.DEFINE_float("grad_clip_norm", _D.grad_clip_norm, "Clip gradients to this global norm (0: off).",
                   lower_bound=0.0)
flags.DEFINE_boolean("ema", _D.ema, "Keep an exponential moving average of the weights and use it at the end (no "
                     "EMA warmup in Keras: only for runs of many more than 1 / (1 - ema_momentum) steps).")
flags.DEFINE_float("ema_momentum", _D.ema_momentum, "EMA momentum (with --ema).", lower_bound=0.0,
                   upper_bound=1.0)
flags.DEFINE_boolean("jit_compile", _D.jit_compile, "Compile train and eval steps with XLA.")
flags.DEFINE_enum("mixed_precision", _D.mixed_precision, tuple(PRECISION_POLICIES),
                  "Compute dtype: float32, or bfloat16 / float16 mixed precision (weights, outputs and "
                  "exports stay float32; float16 gets loss scaling).")
flags.DEFINE_enum("distribution", _D.distribution, DISTRIBUTIONS,
                  "Data parallelism: auto (mirrored on 2+ GPUs), none, mirrored (all local devices), "
                  "multi_worker (TF_CONFIG). --batch_size is global and must divide by the replicas.")
flags.DEFINE_integer("cpu_devices", _D.cpu_devices, "Split the CPU into N logical devices (to try "
                     "--distribution=mirrored without GPUs; TensorFlow backend).", lower_bound=1)
flags.DEFINE_boolean("deterministic", _D.deterministic, "Enable TensorFlow's deterministic ops: the same --seed "
                     "gives the same metrics (slower; RandAugment stays non-deterministic).")
# run and artifacts
flags.DEFINE_integer("seed", _D.seed, "Seed for weights, data order, augmentation and the validation split.")
flags.DEFINE_string("workdir", _D.workdir, "Run directory: metrics.json, flags.txt, model.keras.")
flags.DEFINE_string("export_dir", _D.export_dir, "Export root (TF Serving base path): EXPORT_DIR/MODEL_NAME/N/.")
flags.DEFINE_string("model_name", _D.model_name, "Model name under --export_dir (TF Serving model name).")
flags.DEFINE_boolean("export", _D.export, "Export SavedModel + ONNX after training.")
flags.DEFINE_boolean("int8", _D.int8, "Also write model.int8.onnx (static int8, calibrated on training images).")
flags.DEFINE_boolean("check", _D.check, "Run the onnxruntime parity check after export.")

flags.register_validator("model_name", lambda v: bool(v) and v.replace("_", "").replace("-", "").isalnum(),
                         "--model_name must be letters, digits, '_' or '-'")
flags.register_validator("workdir", bool, "--workdir must not be empty")
flags.register_validator("mixup_alpha", lambda v: v > 0, "--mixup_alpha must be > 0")
flags.register_validator("cutmix_alpha", lambda v: v > 0, "--cutmix_alpha must be > 0")


def _valid_augment(spec: str) -> bool:
    try:
        data.augment_lib.parse_policies(spec)
    except ValueError as e:
        raise flags.ValidationError(f"--augment: {e}") from None
    return True


flags.register_validator("augment", _valid_augment)
flags.register_validator("export_dir", bool, "--export_dir must not be empty")


def _valid_variant(values: dict) -> bool:
    from mtl_keras.models import check_variant

    try:
        check_variant(values["model"], values["variant"])
    except ValueError as e:
        raise flags.ValidationError(f"--variant: {e}") from None
    return True


def _valid_loss_weighting(values: dict) -> bool:
    # A dynamic weighting balances two task losses; a single-task run has one.
    if values["loss_weighting"] in losses.DYNAMIC and values["task"] != "mtl":
        raise flags.ValidationError(f"--loss_weighting={values['loss_weighting']} needs --task=mtl "
                                    f"(got --task={values['task']}); use --loss_weighting=fixed")
    return True


flags.register_multi_flags_validator(["model", "variant"], _valid_variant)
flags.register_multi_flags_validator(["task", "loss_weighting"], _valid_loss_weighting)


def to_config() -> TrainConfig:
    """The parsed flags as a `TrainConfig`."""
    return TrainConfig(**{f.name: FLAGS[f.name].value for f in dataclasses.fields(TrainConfig)})


def flagfile_text(config: TrainConfig) -> str:
    """`config` as a flagfile that reproduces the run: `--flagfile=WORKDIR/flags.txt`."""
    lines = []
    for name, value in dataclasses.asdict(config).items():
        if value is None:
            continue
        if isinstance(value, bool):
            lines.append(f"--{name}" if value else f"--no{name}")
        else:
            lines.append(f"--{name}={value}")
    return "\n".join(lines) + "\n"

# parity check (python -m mtl_keras.check_onnx; train runs it after export with --atol)
flags.DEFINE_string("saved_model", None, "check_onnx: SavedModel version folder, e.g. export/mtl_keras/1.")
flags.DEFINE_string("onnx", None, "check_onnx: ONNX file, e.g. export/mtl_keras/1/model.onnx.")
flags.DEFINE_float("atol", 1e-5, "Parity tolerance: max absolute difference allowed per output.", lower_bound=0.0)
flags.DEFINE_integer("num_random", 32, "check_onnx: number of random-pixel images.", lower_bound=1)
flags.DEFINE_integer("num_real", 256, "check_onnx: number of real test images (with --check_dataset).",
                     lower_bound=0)
flags.DEFINE_enum("check_dataset", None, data.DATASETS, "check_onnx: also compare on this dataset's test images.")
flags.DEFINE_string("keras_model", None, "check_onnx: also compare this .keras model (e.g. WORKDIR/model.keras).")
flags.DEFINE_boolean("json", False, "check_onnx / predict: print JSON instead of a table.")
# export (python -m mtl_keras.export --workdir=DIR)
flags.DEFINE_integer("version", None, "export: version folder number (default: the next free integer).", lower_bound=1)
flags.DEFINE_float("int8_max_drop", 1.0, "check_onnx: most test-accuracy points int8 may lose per head.",
                   lower_bound=0.0)

# predict (python -m mtl_keras.predict): a flag set of its own, since its --model is a path, not a trunk.
PREDICT_FLAGS = flags.FlagValues()
flags.DEFINE_string("model", None, "SavedModel version folder (e.g. export/quickstart/1) or .onnx file.",
                    flag_values=PREDICT_FLAGS)
flags.DEFINE_integer("top_k", 1, "Classes to print per head.", lower_bound=1, flag_values=PREDICT_FLAGS)
flags.DEFINE_boolean("json", False, "Print one JSON document instead of lines.", flag_values=PREDICT_FLAGS)

# experiments (python -m mtl_keras.experiments): a grid of flagfiles x seeds. Any training flag on its command line
# (e.g. --epochs=1) is passed to every run after the flagfile, so it wins over the flagfile.
flags.DEFINE_string("grid", None, "experiments: comma-separated flagfiles or globs, e.g. 'configs/fmnist_*.flags'.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "experiments: seeds to train every flagfile with, e.g. 0,1,2.")
flags.DEFINE_string("results_dir", None, "experiments: output folder for results.md / results.csv / PNGs; each run "
                    "trains in RESULTS_DIR/runs/<flagfile stem>/seed<k> and is skipped once its metrics.json exists.")
flags.register_validator("seeds", lambda v: bool(v) and all(s.strip().isdigit() for s in v),
                         "--seeds must be a comma-separated list of non-negative integers, e.g. 0,1,2")


def given_train_flags(exclude: tuple[str, ...] = ()) -> list[str]:
    """The training flags set on the command line (not defaults), as `--name=value` arguments."""
    return [FLAGS[f.name].serialize() for f in dataclasses.fields(TrainConfig)
            if FLAGS[f.name].present and f.name not in exclude]


def config_from_args(args: list[str]) -> TrainConfig:
    """The `TrainConfig` that `python -m mtl_keras.train ARGS` would run; parsed on a copy, FLAGS stay untouched."""
    import copy

    values = copy.deepcopy(FLAGS)  # a private copy: validators and flagfile handling included
    values.unparse_flags()
    values(["train", *args])
    return TrainConfig(**{f.name: values[f.name].value for f in dataclasses.fields(TrainConfig)})
