"""Every command-line flag of mtl_keras, with help text and validation; nothing else reads sys.argv.

Override order: the defaults of `TrainConfig` -> `--flagfile=configs/X.flags` -> flags on the command line
(absl reads flags in order, so a flag after --flagfile wins).
"""

from __future__ import annotations

import dataclasses

from absl import flags

from mtl_keras import data
from mtl_keras.config import TrainConfig
from mtl_keras.models import TRUNKS
from mtl_keras.models.vit import STEMS

FLAGS = flags.FLAGS
_D = TrainConfig()

# data
flags.DEFINE_enum("dataset", _D.dataset, data.DATASETS, "Dataset to train and evaluate on.")
flags.DEFINE_string("data_dir", _D.data_dir, "tensorflow-datasets data_dir with prepared data (CIFAR).")
flags.DEFINE_boolean("download", _D.download, "Let tfds download a dataset that is not prepared in --data_dir.")
flags.DEFINE_float("validation_fraction", _D.validation_fraction,
                   "Share of the training split held out (seeded) for validation.", lower_bound=0.0, upper_bound=0.5)
flags.DEFINE_integer("max_train_examples", _D.max_train_examples,
                     "Cap on training examples after the validation split (unset: all).", lower_bound=1)
flags.DEFINE_enum("augment", _D.augment, data.AUGMENTS, "Random augmentation in tf.data (never in the model).")
# model
flags.DEFINE_enum("task", _D.task, data.TASKS, "mtl: both heads; fine or coarse: a single-task baseline.")
flags.DEFINE_enum("model", _D.model, TRUNKS, "Shared trunk.")
flags.DEFINE_string("variant", _D.variant, "Trunk size as NAME/PATCH, e.g. Mu/4 (see models/vit.py).")
flags.DEFINE_enum("stem", _D.stem, STEMS, "ViT tokenizer: conv (convolutional stem) or patch (linear).")
flags.DEFINE_integer("image_size", _D.image_size, "Resize inputs to this size inside the model (unset: native).",
                     lower_bound=8)
flags.DEFINE_float("dropout", _D.dropout, "Dropout rate in the trunk.", lower_bound=0.0, upper_bound=0.9)
# optimisation
flags.DEFINE_integer("epochs", _D.epochs, "Training epochs.", lower_bound=1)
flags.DEFINE_integer("batch_size", _D.batch_size, "Global batch size.", lower_bound=1)
flags.DEFINE_float("learning_rate", _D.learning_rate, "Peak learning rate (AdamW, warmup then cosine to 0).",
                   lower_bound=0.0)
flags.DEFINE_float("weight_decay", _D.weight_decay, "AdamW decoupled weight decay.", lower_bound=0.0)
flags.DEFINE_float("warmup_epochs", _D.warmup_epochs, "Linear warmup length in epochs.", lower_bound=0.0)
flags.DEFINE_float("label_smoothing", _D.label_smoothing, "Label smoothing for both heads.",
                   lower_bound=0.0, upper_bound=0.5)
flags.DEFINE_float("gamma", _D.gamma, "MTL weight of the fine loss; coarse gets 1 - gamma.",
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_boolean("jit_compile", _D.jit_compile, "Compile train and eval steps with XLA.")
# run and artifacts
flags.DEFINE_integer("seed", _D.seed, "Seed for weights, data order, augmentation and the validation split.")
flags.DEFINE_string("workdir", _D.workdir, "Run directory: metrics.json, flags.txt, model.keras.")
flags.DEFINE_string("export_dir", _D.export_dir, "Export root (TF Serving base path): EXPORT_DIR/MODEL_NAME/N/.")
flags.DEFINE_string("model_name", _D.model_name, "Model name under --export_dir (TF Serving model name).")
flags.DEFINE_boolean("export", _D.export, "Export SavedModel + ONNX after training.")
flags.DEFINE_boolean("check", _D.check, "Run the onnxruntime parity check after export.")

flags.register_validator("model_name", lambda v: bool(v) and v.replace("_", "").replace("-", "").isalnum(),
                         "--model_name must be letters, digits, '_' or '-'")
flags.register_validator("workdir", bool, "--workdir must not be empty")
flags.register_validator("export_dir", bool, "--export_dir must not be empty")


def _valid_variant(variant: str) -> bool:
    from mtl_keras.models.vit import parse_variant

    try:
        parse_variant(variant)
    except ValueError as e:
        raise flags.ValidationError(f"--variant: {e}") from None
    return True


flags.register_validator("variant", _valid_variant)


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
