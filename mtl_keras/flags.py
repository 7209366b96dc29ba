"""Command-line flags, one `define_*_flags(flag_values)` per program, so each program's `--help` lists its own
flags only; nothing else reads sys.argv. Imports no TensorFlow (choice lists and defaults come from config.py).

    train        define_train_flags        every TrainConfig setting (config.py's sections)
    export       define_export_flags       the run folder, where to export it, the checks
    check_onnx   define_check_flags        the artifacts to compare, the checks, where the test images are
    predict      define_predict_flags      the model path, top-k, JSON
    experiments  define_experiments_flags  grid, seeds, results folder, and every training flag

Override order: the defaults of config.py -> `--config=NAME` or `--flagfile=PATH` (flagfiles may nest; both are
expanded in place by flagfiles.py) -> flags on the command line (read in order, so a flag after --config wins).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import sys
import types

from absl import flags

from mtl_keras import config, flagfiles, variants, weightings
from mtl_keras.config import DataConfig, TrainConfig

_D = types.SimpleNamespace(**config.flat(TrainConfig()))  # every default, by flag name
# numpy's global seed (keras.utils.set_random_seed) takes 0 .. 2**32 - 1; TensorFlow's int32 seed ops less.
MAX_SEED = 2 ** 31 - 1
# 1024 px: beyond any trunk here (ViT /4 at 1024 px is 65,536 tokens); larger sizes ran out of memory.
MAX_IMAGE_SIZE = 1024
# The largest --max_image_pixels: 1e9 RGB pixels are 3 GB decoded, before any resize.
MAX_IMAGE_PIXELS = 1_000_000_000


class _Definer:
    """absl's DEFINE_* and register_* bound to one FlagValues: `d.string(...)` is DEFINE_string(..., fv)."""

    def __init__(self, fv: flags.FlagValues):
        self.fv = fv

    def __getattr__(self, kind: str):
        fn = getattr(flags, f"DEFINE_{kind}", None) or getattr(flags, f"register_{kind}")
        return functools.partial(fn, flag_values=self.fv)

    def float(self, name: str, default, help_text: str, **bounds) -> None:
        """DEFINE_float; a bounded flag also refuses nan and inf, which absl's bounds let through (every
        comparison with NaN is False, and inf passes a lower bound)."""
        flags.DEFINE_float(name, default, help_text, flag_values=self.fv, **bounds)
        if bounds:
            flags.register_validator(name, lambda v: v is None or math.isfinite(v),
                                     f"--{name} must be a finite number", flag_values=self.fv)

    def string(self, name: str, default, help_text: str, **kwargs) -> None:
        """DEFINE_string that refuses a newline: flags.txt holds one flag per line, so a value with a newline
        would replay as extra flags (`--workdir=$'w\\n--epochs=1'`)."""
        flags.DEFINE_string(name, default, help_text, flag_values=self.fv, **kwargs)
        flags.register_validator(name, lambda v: v is None or not any(c in v for c in "\r\n"),
                                 f"--{name} must be one line (it holds a line break)", flag_values=self.fv)


def _valid_augment(spec: str) -> bool:
    try:
        config.parse_policies(spec)
    except ValueError as e:
        raise flags.ValidationError(f"--augment: {e}") from None
    return True


def _valid_variant(values: dict) -> bool:
    try:
        variants.check(values["model"], values["variant"])
    except ValueError as e:
        raise flags.ValidationError(f"--variant: {e}") from None
    return True


def _valid_coarse_head(values: dict) -> bool:
    """--coarse_head other than learned ties the coarse output to the fine head: it needs both heads."""
    if values["coarse_head"] != "learned" and values["task"] != "mtl":
        raise flags.ValidationError(f"--coarse_head={values['coarse_head']} needs --task=mtl (got "
                                    f"--task={values['task']}); use --coarse_head=learned")
    return True


def _valid_stem_init(values: dict) -> bool:
    if values["stem_init"] == "whitened" and values["model"] not in variants.WHITENABLE:
        raise flags.ValidationError(f"--stem_init=whitened needs --model={' or '.join(variants.WHITENABLE)} (a first "
                                    f"convolution on the images; got --model={values['model']})")
    return True


def _valid_progressive(values: dict) -> bool:
    """--progressive_size: a ViT (its position embedding resizes), one model (no stateful weighting, replicas or
    processes), at a size its patches divide."""
    size = values["progressive_size"]
    if not size:
        return True
    if values["model"] != "vit":
        raise flags.ValidationError(f"--progressive_size needs --model=vit (got --model={values['model']})")
    try:
        patch = variants.parse_vit(values["variant"])[-1]
    except ValueError:
        return True  # --variant's own validator names the bad variant
    if size % patch:
        raise flags.ValidationError(f"--progressive_size={size} is not a multiple of the patch size {patch} of "
                                    f"--variant={values['variant']}")
    if weightings.get(values["loss_weighting"]).stateful:
        raise flags.ValidationError(f"--progressive_size works with --loss_weighting=fixed (got "
                                    f"--loss_weighting={values['loss_weighting']})")
    if values["distribution"] not in ("auto", "none"):
        raise flags.ValidationError(f"--progressive_size trains on one device: use --distribution=none (got "
                                    f"--distribution={values['distribution']})")
    return True


def _valid_loss_weighting(values: dict) -> bool:
    # A stateful weighting balances two task losses; a single-task run has one.
    if weightings.get(values["loss_weighting"]).stateful and values["task"] != "mtl":
        raise flags.ValidationError(f"--loss_weighting={values['loss_weighting']} needs --task=mtl "
                                    f"(got --task={values['task']}); use --loss_weighting=fixed")
    return True


def _data_place_flags(d: _Definer) -> None:
    """Where the data lives and how folder / csv images are read: all a test split needs."""
    d.string("data_dir", _D.data_dir, "cifar10/cifar100: the official python archive (cifar-10-python.tar.gz, "
             "cifar-100-python.tar.gz), its extracted folder, a folder holding either (~/.keras/datasets), or a "
             "tensorflow-datasets data_dir with prepared data; "
             "folder: the image tree ROOT (ROOT/COARSE/FINE/*.jpg); csv: the label file (path,fine,coarse).")
    d.string("fashion_mnist_dir", _D.fashion_mnist_dir,
             "Folder with the Fashion-MNIST idx files (*-ubyte.gz), as `apt-get install "
             "dataset-fashion-mnist` installs them.")
    d.integer("folder_image_size", _D.folder_image_size, "folder / csv: images are decoded and resized "
              f"to this square size (3 channels, at most {MAX_IMAGE_SIZE}).", lower_bound=8, upper_bound=MAX_IMAGE_SIZE)
    d.float("folder_test_fraction", _D.folder_test_fraction, "folder / csv without a test split: share of "
            "each fine class held out (fixed seed) for testing.", lower_bound=0.0, upper_bound=0.5)
    d.float("folder_cache_mb", _D.folder_cache_mb, "folder / csv: decode all images once into memory when "
            "their pixels fit in this many MB, else stream the files every epoch (0: always stream).",
            lower_bound=0.0)
    _max_image_pixels_flag(d)
    d.boolean("csv_allow_outside_paths", _D.csv_allow_outside_paths, "csv: accept image paths that lead outside "
              "the CSV's folder (absolute, ~, ../, or through a symlink). Off: such a row is refused, so a label "
              "file from elsewhere cannot make a run read (and train on) any file this user can read.")


def _max_image_pixels_flag(d: _Definer) -> None:
    d.integer("max_image_pixels", _D.max_image_pixels, "Largest image decoded, in pixels (width x height x GIF "
              "frames, read from the file's header first): a guard against decompression bombs, like Pillow's "
              "MAX_IMAGE_PIXELS. Larger files are skipped with a warning naming them (folder / csv) or refused "
              f"in one line (predict). At most {MAX_IMAGE_PIXELS:,} (3 GB of pixels).", lower_bound=1,
              upper_bound=MAX_IMAGE_PIXELS)


def valid_model_name(name: str | None) -> bool:
    """A model name is one folder under --export_dir: letters, digits, '_' or '-' (never '..' or a path)."""
    return bool(name) and name.replace("_", "").replace("-", "").isalnum()


def _serving_flags(d: _Definer) -> None:
    d.string("export_dir", _D.export_dir, "Export root (TF Serving base path): EXPORT_DIR/MODEL_NAME/N/.")
    d.validator("export_dir", bool, "--export_dir must not be empty")
    d.string("model_name", _D.model_name, "Model name under --export_dir (TF Serving model name).")
    d.validator("model_name", valid_model_name, "--model_name must be letters, digits, '_' or '-'")
    d.boolean("int8", _D.int8, "Also try model.int8.onnx (dynamic int8 of MatMul / Gemm), kept only when it runs "
              "faster than fp32 here (serving/quantize.py).")
    d.boolean("check", _D.check, "Verify the export: Keras <-> SavedModel <-> ONNX parity (--atol) and the "
              "int8 accuracy drop (--int8_max_drop).")
    d.float("atol", _D.atol, "Parity tolerance: max absolute difference allowed per output (train, export "
            "and check_onnx).", lower_bound=0.0)
    d.float("int8_max_drop", _D.int8_max_drop, "Most test-accuracy points the int8 model may lose per "
            "head (train, export and check_onnx).", lower_bound=0.0)
    d.integer("top_k", _D.top_k, "SavedModel signature serving_bytes: class names and scores returned per head "
              "and image, best first (a head with fewer classes returns all of them).", lower_bound=1,
              upper_bound=1000)
    d.enum("onnx_converter", _D.onnx_converter, config.ONNX_CONVERTERS, "How model.onnx is made: tf2onnx (from "
           "the SavedModel's serving_default signature, the graph TF Serving runs) or keras (Keras's own "
           "model.export(format='onnx')). Either file is checked against the SavedModel (--atol).")


def _verbose_flag(d: _Definer) -> None:
    d.boolean("verbose", False, "Keep TensorFlow's C++ start-up and device lines (also kept when the environment "
              "sets TF_CPP_MIN_LOG_LEVEL); see console.py.")


def _verify_flags(d: _Definer) -> None:
    d.integer("num_random", 32, "check_onnx: number of random-pixel images.", lower_bound=1)
    d.integer("num_real", 256, "check_onnx: number of real test images (with --check_dataset).",
              lower_bound=0)


def define_train_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """Every setting of a training run (the fields of config.py's sections), with their validators."""
    d = _Definer(fv)
    # data
    d.enum("dataset", _D.dataset, config.DATASETS, "Dataset to train and evaluate on.")
    d.boolean("download", _D.download, "Let tfds download a dataset that is not prepared in --data_dir.")
    d.float("validation_fraction", _D.validation_fraction,
            "Share of the training split held out (seeded) for validation.", lower_bound=0.0, upper_bound=0.5)
    d.integer("max_train_examples", _D.max_train_examples,
              "Cap on training examples after the validation split (unset: all).", lower_bound=1)
    d.string("augment", _D.augment,
             f"Random augmentation in tf.data, never in the model: a comma-separated list of "
             f"{', '.join(config.AUGMENTS[1:])}, or none. Applied in that order; mixup and cutmix "
             f"together: each batch picks one. alt_flip_crop is flip_crop with each image flipped on alternate "
             f"epochs (tf.data only).")
    d.validator("augment", _valid_augment)
    d.integer("randaugment_ops", _D.randaugment_ops, "RandAugment: ops applied per image (with "
              "--augment=...,randaugment).", lower_bound=1, upper_bound=11)
    d.float("randaugment_magnitude", _D.randaugment_magnitude, "RandAugment: op strength, 0-1 (Keras "
            "`factor`).", lower_bound=0.0, upper_bound=1.0)
    d.float("mixup_alpha", _D.mixup_alpha, "MixUp: Beta(alpha, alpha) mixing weights (> 0; with "
            "--augment=...,mixup).", lower_bound=0.0)
    d.validator("mixup_alpha", lambda v: v > 0, "--mixup_alpha must be > 0")
    d.float("cutmix_alpha", _D.cutmix_alpha, "CutMix: Beta(alpha, alpha) box areas (> 0; with "
            "--augment=...,cutmix).", lower_bound=0.0)
    d.validator("cutmix_alpha", lambda v: v > 0, "--cutmix_alpha must be > 0")
    d.enum("input_pipeline", _D.input_pipeline, config.INPUT_PIPELINES, "How training batches are made: tf_data "
           "(TensorFlow's tf.data), host (numpy in threads, no TensorFlow; no randaugment) or auto (tf_data where "
           "TensorFlow is installed, else host). Same splits, pixels, labels and augmentation policies.")
    _data_place_flags(d)
    # model
    d.enum("task", _D.task, config.TASKS, "mtl: both heads; fine or coarse: a single-task baseline.")
    d.enum("model", _D.model, config.TRUNKS, "Shared trunk: vit, seed_vit and resnet152 (the seed study's, fixed "
           "shapes), cct (Compact Convolutional Transformer).")
    d.string("variant", _D.variant, "Trunk size: vit NAME/PATCH, e.g. Mu/4 (models/vit.py); cct LAYERS/KxN, e.g. "
             "7/3x1 (models/cct.py). Ignored by seed_vit and resnet152.")
    d.enum("stem", _D.stem, config.STEMS, "ViT tokenizer: conv (convolutional stem) or patch (linear).")
    d.enum("stem_init", _D.stem_init, config.STEM_INITS, "First convolution's initial filters (vit, cct): default "
           "(Keras's) or whitened (PCA whitening of training image patches, +/- pairs, as in airbench).")
    d.integer("image_size", _D.image_size, f"Resize inputs to this size inside the model (unset: native; at most "
              f"{MAX_IMAGE_SIZE}).", lower_bound=8, upper_bound=MAX_IMAGE_SIZE)
    d.float("dropout", _D.dropout, "Dropout rate in the trunk (seed_vit: after Flatten).", lower_bound=0.0,
            upper_bound=0.9)
    d.float("stochastic_depth", _D.stochastic_depth, "cct: drop-path rate of the last block (linear from 0).",
            lower_bound=0.0, upper_bound=0.9)
    d.enum("head", _D.head, config.HEAD_KINDS, "Task heads: light (Dense + softmax) or seed (the seed study's branch "
           "MLPs).")
    d.float("head_dropout", _D.head_dropout, "Dropout in the heads (seed: after each Dense).", lower_bound=0.0,
            upper_bound=0.9)
    d.enum("coarse_head", _D.coarse_head, config.COARSE_HEADS, "How the coarse output relates to the fine one "
           "(--task=mtl): learned (its own softmax head), marginal (the sum of its fine classes' probabilities: "
           "the two never disagree), both (a learned head pulled towards that sum by --consistency_weight; "
           "predictions combine the two over consistent pairs). See models/hierarchy.py.")
    d.float("consistency_weight", _D.consistency_weight, "--coarse_head=both: weight of the symmetric KL between "
            "the coarse head and the fine head's superclass sums.", lower_bound=0.0, upper_bound=100.0)
    d.boolean("tta_flip", _D.tta_flip, "Evaluate and export the average of the model on each image and on its mirror "
              "image (deterministic, inside the exported model; 2x inference cost, no training change).")
    d.float("hedge_target", _D.hedge_target, "Hedged answer (label / level in serving_bytes and predict): the fine "
            "class when its probability reaches a threshold chosen on validation images so that such answers reach "
            "this precision, else its superclass. Strictly between 0 and 1.")
    d.validator("hedge_target", lambda v: 0 < v < 1, "--hedge_target must lie strictly between 0 and 1")
    d.boolean("calibrate", _D.calibrate, "Fit a temperature on validation images and put it inside the exported "
              "model, kept only where it lowers validation ECE (needs --validation_fraction above 0).")
    # optimisation
    d.integer("epochs", _D.epochs, "Training epochs.", lower_bound=1)
    d.float("time_budget", _D.time_budget, "Train for this many wall-clock seconds (fit, validation passes "
            "included): the learning rate's warmup (--warmup_epochs / --epochs of the budget) and --lr_schedule "
            "follow the elapsed share of the budget, training stops at the first step past it, and --epochs is "
            "only a cap. Unset: a fixed number of epochs.", lower_bound=0.0)
    d.validator("time_budget", lambda v: v is None or v > 0, "--time_budget must be a positive number of seconds")
    d.integer("progressive_size", _D.progressive_size, "Progressive resolution (--model=vit): train the first "
              "--progressive_share of the run (of --time_budget, else of --epochs) on the images resized to this "
              "square size inside the model (a multiple of the patch size, below the image size), then at the full "
              "size. Every weight is shared; the position embedding is resized to the smaller token grid. "
              "0: off.", lower_bound=0)
    d.float("progressive_share", _D.progressive_share, "--progressive_size: the share of training at the smaller "
            "size, strictly between 0 and 1.")
    d.validator("progressive_share", lambda v: 0 < v < 1, "--progressive_share must lie strictly between 0 and 1")
    d.integer("batch_size", _D.batch_size, "Global batch size.", lower_bound=1)
    d.float("learning_rate", _D.learning_rate, "Peak learning rate (see --lr_schedule and --optimizer).",
            lower_bound=0.0)
    d.float("weight_decay", _D.weight_decay, "AdamW / Muon decoupled weight decay (not used by --optimizer=adam).",
            lower_bound=0.0)
    d.float("warmup_epochs", _D.warmup_epochs, "Linear warmup length in epochs.", lower_bound=0.0)
    d.float("label_smoothing", _D.label_smoothing, "Label smoothing for both heads.",
            lower_bound=0.0, upper_bound=0.5)
    d.float("gamma", _D.gamma, "MTL weight of the fine loss; coarse gets 1 - gamma.",
            lower_bound=0.0, upper_bound=1.0)
    d.enum("loss_weighting", _D.loss_weighting, weightings.NAMES, weightings.help_text())
    d.float("famo_lr", _D.famo_lr, "--loss_weighting=famo: Adam step size of the task logits (paper: 0.025).",
            lower_bound=0.0, upper_bound=1.0)
    d.float("famo_decay", _D.famo_decay, "--loss_weighting=famo: L2 decay of the task logits (paper code: 0.01).",
            lower_bound=0.0, upper_bound=1.0)
    d.enum("optimizer", _D.optimizer, config.OPTIMIZERS, "adamw (decoupled --weight_decay), adam (the "
           "seed study; no weight decay) or muon (orthogonalised momentum on 2-D Dense kernels, AdamW on the rest "
           "and on the output layers; --weight_decay applies to both).")
    d.enum("lr_schedule", _D.lr_schedule, config.LR_SCHEDULES, "cosine: linear warmup then cosine "
           "to 0; constant: --learning_rate throughout (the seed study).")
    d.float("grad_clip_norm", _D.grad_clip_norm, "Clip gradients to this global norm (0: off).",
            lower_bound=0.0)
    d.boolean("ema", _D.ema, "Keep an exponential moving average of the weights and use it at the end (no "
              "EMA warmup in Keras: only for runs of many more than 1 / (1 - ema_momentum) steps).")
    d.float("ema_momentum", _D.ema_momentum, "EMA momentum (with --ema).", lower_bound=0.0,
            upper_bound=1.0)
    d.boolean("jit_compile", _D.jit_compile, "Compile train and eval steps with XLA.")
    d.enum("mixed_precision", _D.mixed_precision, tuple(config.PRECISION_POLICIES),
           "Compute dtype: float32, or bfloat16 / float16 mixed precision (weights, outputs and "
           "exports stay float32; float16 gets loss scaling).")
    d.enum("distribution", _D.distribution, config.DISTRIBUTIONS,
           "Data parallelism: auto (mirrored on 2+ GPUs), none, mirrored (all local devices), "
           "multi_worker (several processes, JAX backend: see --job_addresses). --batch_size is global and must "
           "divide by the replicas.")
    d.string("job_addresses", _D.job_addresses, "--distribution=multi_worker: HOST:PORT of process 0 (the "
             "coordinator), or every process's, comma-separated (default: $KERAS_DISTRIBUTION_JOB_ADDRESSES).")
    d.integer("num_processes", _D.num_processes, "--distribution=multi_worker: processes in the job (default: "
              "$KERAS_DISTRIBUTION_NUM_PROCESSES).", lower_bound=1)
    d.integer("process_id", _D.process_id, "--distribution=multi_worker: this process's id, 0 to NUM_PROCESSES - 1; "
              "0 writes the run's outputs (default: $KERAS_DISTRIBUTION_PROCESS_ID).", lower_bound=0)
    d.integer("peer_timeout", _D.peer_timeout, "--distribution=multi_worker: seconds to wait for every process "
              "to join at start.", lower_bound=1)
    d.integer("cpu_devices", _D.cpu_devices, "Split the CPU into N logical devices (to try "
              "--distribution=mirrored without GPUs; TensorFlow backend).", lower_bound=1)
    d.boolean("deterministic", _D.deterministic, "Enable TensorFlow's deterministic ops: the same --seed "
              "gives the same metrics (slower; RandAugment stays non-deterministic).")
    # run
    d.string("config", None, "A config to start from: the name of one shipped with the package (`mtl-keras configs` "
             "lists them, e.g. quickstart, cifar10_study/a_vit_mu4) or a flagfile's path. Its flags are read in its "
             "place, so a flag after it wins; --flagfile=PATH works the same way.")
    d.integer("seed", _D.seed, "Seed for weights, data order, augmentation and the validation split.",
              lower_bound=0, upper_bound=MAX_SEED)
    d.string("workdir", _D.workdir, "Run directory: metrics.json, flags.txt, model.keras.")
    d.validator("workdir", bool, "--workdir must not be empty")
    _verbose_flag(d)
    d.boolean("export", _D.export, "Export SavedModel + ONNX after training.")
    _serving_flags(d)
    d.multi_flags_validator(["task", "loss_weighting"], _valid_loss_weighting)
    d.multi_flags_validator(["task", "coarse_head"], _valid_coarse_head)
    d.multi_flags_validator(["model", "variant"], _valid_variant)
    d.multi_flags_validator(["model", "stem_init"], _valid_stem_init)
    d.multi_flags_validator(["model", "variant", "progressive_size", "loss_weighting", "distribution"],
                            _valid_progressive)


def define_export_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """python -m mtl_keras.export: a finished run folder, where to export it, and the checks."""
    d = _Definer(fv)
    d.string("workdir", _D.workdir, "Run directory: metrics.json, flags.txt, model.keras.")
    d.validator("workdir", bool, "--workdir must not be empty")
    _serving_flags(d)
    _verify_flags(d)
    _verbose_flag(d)
    d.integer("version", None, "export: version folder number (default: the next free integer); TF Serving reads "
              "versions as int64.", lower_bound=1, upper_bound=2**63 - 1)
    d.string("result_json", None, "export: also write the result (artifacts, metrics.json entries) here.")


def define_check_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """python -m mtl_keras.check_onnx: the artifacts to compare, the checks, and where test images come from."""
    d = _Definer(fv)
    d.string("saved_model", None, "check_onnx: SavedModel version folder, e.g. export/mtl_keras/1.")
    d.string("onnx", None, "check_onnx: ONNX file, e.g. export/mtl_keras/1/model.onnx.")
    d.enum("check_dataset", None, config.DATASETS, "check_onnx: also compare on this dataset's test images.")
    d.string("keras_model", None, "check_onnx: also compare this .keras model (e.g. WORKDIR/model.keras).")
    d.boolean("json", False, "check_onnx / predict: print JSON instead of a table.")
    d.float("atol", _D.atol, "Parity tolerance: max absolute difference allowed per output.", lower_bound=0.0)
    d.float("int8_max_drop", _D.int8_max_drop, "Most test-accuracy points the int8 model may lose per head.",
            lower_bound=0.0)
    _verify_flags(d)
    _verbose_flag(d)
    d.integer("seed", _D.seed, "Seed for weights, data order, augmentation and the validation split.",
              lower_bound=0, upper_bound=MAX_SEED)
    _data_place_flags(d)


def define_predict_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """python -m mtl_keras.predict: the model to run (its --model is a path, not a trunk)."""
    d = _Definer(fv)
    d.string("model", None, "SavedModel version folder (e.g. export/quickstart/1), .onnx file or a run's model.keras.")
    d.integer("top_k", 1, "Classes to print per head.", lower_bound=1)
    d.boolean("json", False, "Print one JSON document instead of lines.")
    d.integer("batch_size", 64, "Images classified per model call.", lower_bound=1)
    _max_image_pixels_flag(d)
    _verbose_flag(d)


def define_experiments_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """python -m mtl_keras.experiments: a grid of flagfiles x seeds. Any training flag on its command line (e.g.
    --epochs=1) is passed to every run after the flagfile, so it wins over the flagfile."""
    d = _Definer(fv)
    d.string("grid", None, "experiments: comma-separated config names, flagfiles or globs of either, e.g. "
             "'fmnist_*' (the shipped fmnist_*.flags) or 'my_configs/*.flags'.")
    d.list("seeds", ["0", "1", "2"], "experiments: seeds to train every flagfile with, e.g. 0,1,2.")
    d.validator("seeds", lambda v: bool(v) and all(s.strip().isdigit() for s in v),
                "--seeds must be a comma-separated list of non-negative integers, e.g. 0,1,2")
    d.string("results_dir", None, "experiments: output folder for results.md / results.csv / PNGs; each run "
             "trains in RESULTS_DIR/runs/<flagfile stem>/seed<k> and is skipped once its metrics.json exists.")
    define_train_flags(fv)


def to_config(fv: flags.FlagValues = flags.FLAGS) -> TrainConfig:
    """The parsed training flags as a `TrainConfig`."""
    return config.make(**{name: fv[name].value for name in config.FIELDS})


def data_config(fv: flags.FlagValues, dataset: str) -> DataConfig:
    """`dataset`'s settings from the data flags a program defines (the others at their defaults)."""
    names = {f.name for f in dataclasses.fields(DataConfig)} & set(fv)
    return dataclasses.replace(DataConfig(dataset=dataset), **{n: fv[n].value for n in names})


def flagfile_text(cfg: TrainConfig) -> str:
    """`cfg` as a flagfile that reproduces the run: `--flagfile=WORKDIR/flags.txt`."""
    lines = []
    for name, value in config.flat(cfg).items():
        if value is None:
            continue
        if isinstance(value, bool):
            lines.append(f"--{name}" if value else f"--no{name}")
        else:
            lines.append(f"--{name}={value}")
    return "\n".join(lines) + "\n"


def given_train_flags(fv: flags.FlagValues = flags.FLAGS, exclude: tuple[str, ...] = ()) -> list[str]:
    """The training flags set on the command line (not defaults), as `--name=value` arguments."""
    return [fv[name].serialize() for name in config.FIELDS if fv[name].present and name not in exclude]


def config_from_args(args: list[str]) -> TrainConfig:
    """The `TrainConfig` that `python -m mtl_keras.train ARGS` would run, parsed on flags of its own."""
    fv = flags.FlagValues()
    define_train_flags(fv)
    try:
        fv(flagfiles.expand(["train", *args]))
    except flagfiles.FlagfileError as e:
        raise flags.Error(str(e)) from None
    return to_config(fv)


def adopt_for_help(fv: flags.FlagValues = flags.FLAGS) -> None:
    """Lists this module's flags under the program's `--help`: absl's help shows the key flags of sys.argv[0],
    which is the program's file under `python -m mtl_keras.X` and the `mtl-keras` script under the command."""
    for flag in fv.get_key_flags_for_module(__name__):
        fv.register_key_flag_for_module(sys.argv[0], flag)


def error_line(error: flags.Error) -> str:
    """absl's message for a bad flag as one line that starts with the flag: `--gamma=1.5: 1.5 is not ...`."""
    line = (str(error).splitlines() or [type(error).__name__])[0]
    if isinstance(error, flags.UnrecognizedFlagError):
        return f"--{error.flagname} is not a flag of this program (see --help)"
    if isinstance(error, flags.CantOpenFlagFileError):
        return "--flagfile: " + line.removeprefix("ERROR:: ")
    # A validator's own message already names its flag (after a value that may hold a newline, see `string`).
    own = re.match(r"flags? .*?: (--\w.*)", line) or re.match(r"flags? .*?: (--\w[^\n]*)", str(error), re.S)
    return own.group(1) if own else line.removeprefix("flag ")


def parser_exiting_in_one_line(prog: str, fv: flags.FlagValues = flags.FLAGS):
    """A `flags_parser` for absl's `app.run`: a bad flag, on the command line or in a flagfile, ends in the one
    line `PROG: error: --NAME...` with exit status 2 (absl prints `FATAL Flags parsing error` and a usage hint)."""
    def parse(argv: list[str]) -> list[str]:
        try:
            return fv(flagfiles.expand(argv, config="config" in fv))
        except flagfiles.FlagfileError as e:
            print(f"{prog}: error: {e}", file=sys.stderr)
            sys.exit(2)
        except flags.Error as e:
            print(f"{prog}: error: {error_line(e)}", file=sys.stderr)
            sys.exit(2)
    return parse
