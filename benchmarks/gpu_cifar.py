"""Trains a flagfile's model and recipe on the CIFAR-10 JPEG pack with Keras on JAX, without TensorFlow.

Prints per epoch: seconds, train images/s, model FLOP utilisation (MFU), train loss, validation accuracy
per head; then test accuracy per head, hierarchy consistency and train seconds; the last line is one JSON
object with all of it.

On this machine (keras is in the venv):

    KERAS_BACKEND=jax python benchmarks/gpu_cifar.py --config=mtl_vit_c10 \
        --npz=../shared/data/cifar10_train_jpeg.npz --max_train_examples=2000 --epochs=1 --variant=Mu/4 \
        --model=vit                                                    # CPU smoke, about a minute

On the GPU machine (JAX, numpy, Pillow, no TensorFlow, no Keras, no internet; ../shared is copied there),
fetch Keras's wheels here first, into a folder the run carries:

    pip download keras namex optree --no-deps -d .whl                 # here, with internet
    # there (carry .whl):
    pip install --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site:. KERAS_BACKEND=jax python benchmarks/gpu_cifar.py \
        --config=mtl_vit_c10 --npz=../shared/data/cifar10_train_jpeg.npz [--mixed_precision=bfloat16]

(Keras 3 also imports absl, rich, h5py, ml_dtypes and packaging: `pip download` those too if the machine lacks
them.) Flags: `--config=NAME|PATH` or `--flagfile=PATH` (nested flagfiles relative to the file that holds them,
as mtl_keras.train reads them), then `--name=value`, `--name`, `--noname`, in order, so a flag after `--config`
wins, as in `mtl_keras.train`.
Every TrainConfig flag is accepted; dataset / data_dir / download / folder_* / export / int8 / check /
distribution / cpu_devices / deterministic are ignored (the data is the pack; one device; no export). Own
flags: --npz (default ../shared/data/cifar10_train_jpeg.npz beside the repo), --workdir (command line only:
write model.keras, history.csv, metrics.json there; a flagfile's --workdir is the CPU run's and is ignored),
--peak_tflops (MFU denominator), --pixel_cache=DIR (decoded pixels as .npy, keyed by the pack's size and
mtime), --decode_threads, --augment_threads.

Splits are those of `--dataset=folder` on the tree `../shared/data/cifar10_tree.py` writes from the same pack
(record order, `assign_splits` with --validation_fraction and --folder_test_fraction and its fixed seed, the
--max_train_examples subset), so GPU figures are on the same held-out images as CPU figures of that path; not
those of `--dataset=cifar10` (tfds: CIFAR's own test split). tests/test_gpu_cifar.py checks the equality.
Augmentation is numpy on the host in background threads, the same policies as mtl_keras/data/augment.py
(flip_crop, mixup, cutmix; randaugment is refused); randomness is per batch from (--seed, step).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import io
import json
import os
import sys
import time
import typing
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from mtl_keras import config as config_lib, flagfiles  # noqa: E402  (no TensorFlow, no Keras)
from mtl_keras.config import TrainConfig  # noqa: E402
from mtl_keras.data.splits import assign_splits, train_subset  # noqa: E402  (numpy only)
from mtl_keras.data.types import DatasetInfo  # noqa: E402

PROG = "gpu_cifar"
ANIMALS = {"bird", "cat", "deer", "dog", "frog", "horse"}  # as cifar10_tree.py
POLICIES = ("flip_crop", "randaugment", "mixup", "cutmix")  # augment.AUGMENTS order
IGNORED = ("dataset", "data_dir", "download", "fashion_mnist_dir", "folder_image_size", "folder_cache_mb",
           "export_dir", "model_name", "export", "int8", "check", "distribution", "cpu_devices", "deterministic")
CHOICES = {"task": ("mtl", "fine", "coarse"), "optimizer": ("adamw", "adam"), "lr_schedule": ("cosine", "constant"),
           "mixed_precision": ("float32", "bfloat16", "float16")}
AT_LEAST = {"epochs": 1, "batch_size": 1, "max_train_examples": 1, "learning_rate": 0.0, "weight_decay": 0.0,
            "warmup_epochs": 0.0, "grad_clip_norm": 0.0}
FRACTIONS = ("validation_fraction", "folder_test_fraction", "label_smoothing")  # 0 - 0.5, as flags.py bounds them
# Dense peak TFLOP/s per device kind: (bf16/fp16, fp32 matmuls). JAX's default matmul precision runs float32
# matmuls as TF32 on Ampere/Hopper, so the float32 figure is the TF32 peak.
PEAKS = (("H100 PCIe", 756.0, 378.0), ("H100", 989.0, 495.0), ("H200", 989.0, 495.0), ("A100", 312.0, 156.0))


OWN_FLAGS = ("npz", "workdir", "peak_tflops", "pixel_cache", "decode_threads", "augment_threads")


@dataclasses.dataclass
class Options:
    npz: str = str(REPO.parent / "shared" / "data" / "cifar10_train_jpeg.npz")
    workdir: str | None = None
    peak_tflops: float | None = None
    pixel_cache: str | None = None
    decode_threads: int = os.cpu_count() or 1
    augment_threads: int = min(8, os.cpu_count() or 1)
    config_name: str = "command_line"
    given: frozenset = frozenset()  # TrainConfig flags set by a flagfile or the command line


def fail(message: str) -> typing.NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(2)


# ---------------------------------------------------------------------------------------------- flags

def _expand(args: list[str]) -> list[tuple[str, bool]]:
    """Arguments with every --config=NAME|PATH and --flagfile=PATH replaced by the file's flag lines (nested ones
    relative to the file that holds them, as mtl_keras.train reads them); (arg, came from a file)."""
    out = []
    for arg in args:
        if arg.lstrip("-").startswith(("flagfile=", "config=")):
            try:
                out += [(line, True) for line in flagfiles.expand([PROG, arg])[1:]]
            except flagfiles.FlagfileError as e:
                fail(str(e))
        else:
            out.append((arg, False))
    return out


def _coerce(name: str, kind, text: str):
    base = [t for t in typing.get_args(kind) if t is not type(None)][0] if typing.get_args(kind) else kind
    try:
        if base is bool:
            if text.lower() not in ("true", "t", "1", "false", "f", "0"):
                raise ValueError
            return text.lower() in ("true", "t", "1")
        return base(text)
    except ValueError:
        fail(f"--{name}={text}: not a valid {base.__name__}")


def _check(config: TrainConfig) -> None:
    """The bounds and choices of mtl_keras/flags.py that are not the model builder's (which raises itself)."""
    flat = config_lib.flat(config)
    for name, choices in CHOICES.items():
        if flat[name] not in choices:
            fail(f"--{name}={flat[name]}: choose one of {', '.join(choices)}")
    for name, low in AT_LEAST.items():
        value = flat[name]
        if value is not None and value < low:
            fail(f"--{name}={value}: must be >= {low}")
    for name in FRACTIONS:
        if not 0.0 <= flat[name] <= 0.5:
            fail(f"--{name}={flat[name]}: must be between 0 and 0.5")
    for name in ("mixup_alpha", "cutmix_alpha"):
        if flat[name] <= 0:
            fail(f"--{name}={flat[name]}: must be > 0")
    parse_policies(config.data.augment)


def parse_args(argv: list[str]) -> tuple[TrainConfig, Options]:
    """TrainConfig defaults -> flags in order (flagfiles expanded in place); one-line errors, exit 2."""
    types = config_lib.flag_types()
    own = {k: v for k, v in typing.get_type_hints(Options).items() if k in OWN_FLAGS}
    values, options = {}, Options()
    named = [a.split("=", 1)[1] for a in argv if a.lstrip("-").startswith(("flagfile=", "config="))]
    if named:
        options.config_name = Path(named[0]).name.removesuffix(flagfiles.SUFFIX)  # not .stem: mtl_g0.1
    for arg, from_file in _expand(list(argv)):
        if arg in ("-h", "--help", "--helpfull"):
            print(__doc__)
            sys.exit(0)
        if not arg.startswith("-") or arg.lstrip("-") == "":
            fail(f"unexpected argument {arg!r}; flags look like --name=value")
        name, has_value, text = arg.lstrip("-").partition("=")
        if not has_value and name not in types and types.get(name[2:]) is bool:  # --noema
            name, text, has_value = name[2:], "false", True
        if name not in types and name not in own:
            fail(f"unknown flag --{name}")
        kind = own[name] if name in own and not (name == "workdir" and from_file) else types[name]
        if not has_value:
            if typing.get_args(kind) or kind is not bool:
                fail(f"--{name} needs a value: --{name}=VALUE")
            text = "true"
        value = _coerce(name, kind, text)
        if name in own and not (name == "workdir" and from_file):
            setattr(options, name, value)
        elif name in types:
            values[name] = value
    config = config_lib.make(**values)
    options.given = frozenset(values)
    _check(config)
    return config, options


# ----------------------------------------------------------------------------------------------- data

def carve(labels: np.ndarray, names, *, validation_fraction: float, test_fraction: float,
          max_train_examples: int | None) -> tuple[DatasetInfo, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(info, pack indices per split, fine and coarse id per pack index) as `--dataset=folder` sees the tree
    cifar10_tree.py writes: ROOT/COARSE/FINE/{index:05d}.jpg, walked in sorted coarse, fine, file name order;
    ids are the sorted names of the classes present. Split order = the folder source's (train is its subset)."""
    fine_name = np.asarray(names).astype(str)[labels]
    coarse_name = np.where(np.isin(fine_name, list(ANIMALS)), "animal", "vehicle")
    order = np.asarray(sorted(range(len(labels)), key=lambda i: (coarse_name[i], fine_name[i], f"{i:05d}.jpg")))
    fine_names, coarse_names = tuple(sorted(set(fine_name))), tuple(sorted(set(coarse_name)))
    fine = np.searchsorted(np.asarray(fine_names), fine_name).astype(np.int32)
    coarse = np.searchsorted(np.asarray(coarse_names), coarse_name).astype(np.int32)
    fine_to_coarse = np.zeros(len(fine_names), np.int32)
    fine_to_coarse[fine] = coarse
    split = assign_splits(np.zeros(len(order), np.int8), fine[order], validation_fraction, test_fraction)
    train = train_subset(split, max_train_examples)
    parts = {"train": order[train], "val": order[split == 1], "test": order[split == 2]}
    info = DatasetInfo("cifar10_pack", fine_names, coarse_names, tuple(fine_to_coarse.tolist()))
    return info, parts, fine, coarse


def _decoder():
    """bytes -> uint8 [H, W, 3]: Pillow, else torchvision; one error line when neither is installed."""
    try:
        from PIL import Image

        return lambda b: np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
    except ImportError:
        pass
    try:
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        return lambda b: decode_jpeg(torch.frombuffer(bytearray(b), dtype=torch.uint8),
                                     mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()
    except ImportError:
        fail("decoding the pack's JPEGs needs Pillow (pip install pillow) or torchvision; neither is installed")


def decode(pack, indices: np.ndarray, threads: int, cache_dir: str | None, npz: str) -> tuple[np.ndarray, str]:
    """(uint8 [len(indices), 32, 32, 3] pack images, what was done), decoded in threads (Pillow releases the
    GIL). Pillow and torchvision use libjpeg's accurate integer IDCT, equal to TF's dct_method=
    "INTEGER_ACCURATE"; data.images.decode keeps TF's default INTEGER_FAST, a few levels apart on 4:2:0 JPEGs."""
    data, offsets = pack["data"], pack["offsets"]
    cache = None
    if cache_dir:
        stat = os.stat(npz)
        cache = Path(cache_dir) / f"{Path(npz).stem}-{stat.st_size}-{stat.st_mtime_ns}.npy"
        if cache.is_file():
            return np.load(cache, mmap_mode="r")[indices], f"read {len(indices):,} images from {cache}"
        indices_wanted, indices = indices, np.arange(len(offsets) - 1)  # fill the cache with every image
    one = _decoder()
    out = np.zeros((len(indices), 32, 32, 3), np.uint8)

    def work(rows: range) -> None:
        for r in rows:
            i = indices[r]
            try:
                image = one(data[offsets[i]:offsets[i + 1]].tobytes())
            except Exception as e:  # noqa: BLE001  (any decoder failure: name the image)
                fail(f"{npz}: image {i} cannot be decoded ({type(e).__name__}: {e})")
            if image.shape != (32, 32, 3):
                fail(f"{npz}: image {i} is {image.shape[1]}x{image.shape[0]}; this runner takes 32x32 packs only")
            out[r] = image

    chunks = [range(a, min(a + 2048, len(indices))) for a in range(0, len(indices), 2048)]
    with concurrent.futures.ThreadPoolExecutor(max(threads, 1)) as pool:
        list(pool.map(work, chunks))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, out)
        os.replace(tmp, cache)
        return out[indices_wanted], f"decoded all {len(out):,} images into {cache}"
    return out, f"decoded {len(out):,} images"


# --------------------------------------------------------------------------------------- augmentation

def parse_policies(spec: str) -> tuple[str, ...]:
    """augment.parse_policies without TensorFlow; randaugment (a Keras layer on tf.data) is refused."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in POLICIES + ("none",)]
    if unknown:
        fail(f"--augment: unknown augmentation {unknown[0]!r}; use a comma-separated list of "
             f"{', '.join(POLICIES)}, or none")
    if "none" in names and len(names) > 1:
        fail(f"--augment: augmentation 'none' cannot be combined with others (got {spec!r})")
    if "randaugment" in names:
        fail("--augment=...randaugment is not available without TensorFlow; use flip_crop, mixup, cutmix")
    return tuple(n for n in POLICIES if n in names)


def _reflect(index: np.ndarray, size: int) -> np.ndarray:
    return (size - 1) - np.abs((size - 1) - np.abs(index))


def flip_crop(images: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    """augment.random_flip_crop in numpy: random horizontal flip, translate by a crop of the reflect-padded
    image (offsets uniform in 0..2*pad), as one gather."""
    b, h, w = images.shape[:3]
    flip = rng.random(b) < 0.5
    oy, ox = rng.integers(0, 2 * pad + 1, b), rng.integers(0, 2 * pad + 1, b)
    rows = _reflect(oy[:, None] - pad + np.arange(h), h)
    cols = _reflect(ox[:, None] - pad + np.arange(w), w)
    cols = np.where(flip[:, None], (w - 1) - cols, cols)
    return images[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def mixup(images, labels, rng: np.random.Generator, alpha: float = 0.2):
    """augment.mixup: lam ~ Beta(alpha, alpha) per example, one random partner; labels (both heads
    concatenated) mixed with the same lam."""
    lam = rng.beta(alpha, alpha, len(images)).astype(np.float32)
    partner = rng.permutation(len(images))
    x = images.astype(np.float32)
    other = x[partner]
    x -= other  # in place, same arithmetic as other + lam * (x - other): never outside the pair's range
    x *= lam[:, None, None, None]
    x += other
    return x, lam[:, None] * labels + (1.0 - lam[:, None]) * labels[partner]


def cutmix(images, labels, rng: np.random.Generator, alpha: float = 1.0):
    """augment.cutmix: a box of area (1 - lam) from a random partner, clipped at the border; labels mixed by
    the share of pixels actually pasted."""
    b, h, w = images.shape[:3]
    cut = np.sqrt(1.0 - rng.beta(alpha, alpha, b))
    cy, cx = rng.uniform(0.0, h, b), rng.uniform(0.0, w, b)
    y0, y1 = (np.clip(np.round(cy + s * cut * h / 2), 0.0, h) for s in (-1, 1))
    x0, x1 = (np.clip(np.round(cx + s * cut * w / 2), 0.0, w) for s in (-1, 1))
    ys, xs = np.arange(h)[None], np.arange(w)[None]
    in_rows = (ys >= y0[:, None]) & (ys < y1[:, None])
    in_cols = (xs >= x0[:, None]) & (xs < x1[:, None])
    box = in_rows[:, :, None, None] & in_cols[:, None, :, None]
    partner = rng.permutation(b)
    x = images.astype(np.float32)
    np.copyto(x, x[partner], where=box)
    lam = (1.0 - (y1 - y0) * (x1 - x0) / float(h * w)).astype(np.float32)
    return x, lam[:, None] * labels + (1.0 - lam[:, None]) * labels[partner]


def augment_batch(images, labels, rng: np.random.Generator, policies: tuple[str, ...], mixup_alpha: float = 0.2,
                  cutmix_alpha: float = 1.0):
    """augment.batch_augmenter's order: flip_crop -> mixup / cutmix (both: a fair coin per batch)."""
    if "flip_crop" in policies:
        images = flip_crop(images, rng)
    images = images.astype(np.float32)
    mixers = [(mixup, mixup_alpha)] * ("mixup" in policies) + [(cutmix, cutmix_alpha)] * ("cutmix" in policies)
    if mixers:
        fn, alpha = mixers[0] if len(mixers) == 1 or rng.random() < 0.5 else mixers[1]
        images, labels = fn(images, labels, rng, alpha)
    return images, labels


def train_batches(images, labels, heads: dict[str, int], config: TrainConfig, threads: int, depth: int = 16):
    """Endless (images, {head: labels}) batches for fit: a fresh seeded order each epoch (remainder dropped),
    augmented in `threads` background threads, `depth` batches ahead; batch k's randomness is (seed, k)."""
    policies, bs = parse_policies(config.data.augment), config.optim.batch_size
    steps, n_fine = len(images) // bs, heads.get("fine", 0)

    @functools.lru_cache(maxsize=4)
    def order(epoch: int) -> np.ndarray:
        return np.random.default_rng([config.run.seed, epoch]).permutation(len(images))

    def make(step: int):
        epoch, k = divmod(step, steps)
        index = np.sort(order(epoch)[k * bs:(k + 1) * bs])  # sorted: a contiguous-ish gather
        x, y = augment_batch(images[index], labels[index], np.random.default_rng([config.run.seed, step, 1]), policies,
                             config.data.mixup_alpha, config.data.cutmix_alpha)
        split = {"fine": y[:, :n_fine], "coarse": y[:, n_fine:]}
        return x, {h: split[h] for h in heads}

    with concurrent.futures.ThreadPoolExecutor(max(threads, 1)) as pool:
        pending = collections.deque(pool.submit(make, s) for s in range(depth))
        step = depth
        while True:
            yield pending.popleft().result()
            pending.append(pool.submit(make, step))
            step += 1


def one_hot(ids: dict[str, np.ndarray], heads: dict[str, int]) -> np.ndarray:
    """[fine | coarse] one-hot rows of the trained heads (the tf.data pipeline's label vector)."""
    return np.concatenate([np.eye(n, dtype=np.float32)[ids[h]] for h, n in heads.items()], axis=1)


# ------------------------------------------------------------------------------------- speed and MFU

def peak_tflops(device_kind: str, platform: str, mixed_precision: str, override: float | None):
    """(peak TFLOP/s or None, how it was chosen) for MFU."""
    if override:
        return override, f"--peak_tflops={override:g}"
    low = mixed_precision != "float32"
    for kind, half, tf32 in PEAKS:
        if kind.lower() in device_kind.lower():
            return (half, f"{kind} dense {mixed_precision} peak {half:g} TFLOP/s") if low else (
                tf32, f"{kind} dense TF32 peak {tf32:g} TFLOP/s (assumes JAX's default matmul precision runs "
                      f"float32 matmuls as TF32)")
    return None, f"no peak known for {platform} device {device_kind!r}: MFU n/a (pass --peak_tflops)"


def forward_flops(model, input_shape, batch: int = 16) -> tuple[float, str]:
    """FLOPs of one image's forward pass: XLA's cost analysis of the compiled inference call, else the
    analytic matmul/conv count of mtl_keras.models.flops (which leaves element-wise ops out)."""
    import jax

    try:
        x = np.zeros((batch, *input_shape), np.float32)
        trainable = [v.value for v in model.trainable_variables]
        other = [v.value for v in model.non_trainable_variables]
        forward = jax.jit(lambda t, o, x: model.stateless_call(t, o, x, training=False)[0])
        cost = forward.lower(trainable, other, x).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        if cost and cost.get("flops", 0) > 0:
            return float(cost["flops"]) / batch, "xla_cost_analysis"
    except Exception as e:  # noqa: BLE001  (any backend without cost analysis falls back)
        print(f"note: XLA cost analysis unavailable ({type(e).__name__}); analytic FLOP count instead")
    from mtl_keras.models.flops import forward_flops as analytic

    return float(analytic(model)), "analytic"


def epoch_callback(flops_per_image: float, peak: float | None, images_per_epoch: int, heads, epochs: int):
    """A Keras callback that times each epoch's training steps (up to validation) and prints one line."""
    import jax
    import keras

    class EpochLine(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs, self.start, self.train_seconds = [], 0.0, None

        def _train_done(self):
            if self.train_seconds is None:  # JAX dispatches asynchronously: wait for the last update
                jax.block_until_ready([v.value for v in self.model.trainable_variables])
                self.train_seconds = time.perf_counter() - self.start

        def on_epoch_begin(self, epoch, logs=None):
            self.start, self.train_seconds = time.perf_counter(), None

        def on_test_begin(self, logs=None):
            self._train_done()

        def on_epoch_end(self, epoch, logs=None):
            self._train_done()
            logs = logs or {}
            rate = images_per_epoch / self.train_seconds
            row = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - self.start, 2),
                   "train_seconds": round(self.train_seconds, 2), "images_per_s": round(rate, 1),
                   "mfu": round(3 * flops_per_image * rate / (peak * 1e12), 4) if peak else None,
                   "loss": round(float(logs.get("loss", float("nan"))), 4)}
            for h in heads:
                value = logs.get(f"val_{h}_accuracy", logs.get("val_accuracy"))
                row[f"val_{h}_accuracy"] = None if value is None else round(float(value), 4)
            self.epochs.append(row)
            mfu = f"{row['mfu']:.1%}" if peak else "n/a"
            vals = ", ".join(f"val {h} {row[f'val_{h}_accuracy']:.2%}" for h in heads
                             if row[f"val_{h}_accuracy"] is not None)
            print(f"epoch {epoch + 1}/{epochs}: {row['seconds']:.1f} s ({row['train_seconds']:.1f} s training), "
                  f"{rate:,.0f} images/s, MFU {mfu}, loss {row['loss']:.4f}" + (f", {vals}" if vals else ""),
                  flush=True)

    return EpochLine()


# ----------------------------------------------------------------------------------------------- main

def evaluate(probs: dict[str, np.ndarray], truth: dict[str, np.ndarray], info: DatasetInfo,
             consistent: bool = False) -> dict:
    """mtl_keras.evaluate.accuracy_metrics (accuracy per head, top-5 for 100 classes, hierarchy consistency),
    its accuracies named test_*."""
    from mtl_keras.evaluate import accuracy_metrics

    metrics = accuracy_metrics(truth, probs, info, consistent)
    return {f"test_{k}" if k.endswith("accuracy") else k: v for k, v in metrics.items() if k != "test_examples"}


def run(config: TrainConfig, options: Options) -> dict:
    if os.environ.setdefault("KERAS_BACKEND", "jax") != "jax":
        fail(f"KERAS_BACKEND={os.environ['KERAS_BACKEND']}: this runner needs the JAX backend (KERAS_BACKEND=jax)")
    if "dataset" in options.given and config.data.dataset not in ("cifar10", "folder"):
        print(f"note: --dataset={config.data.dataset} ignored: this runner trains on the CIFAR-10 pack (--npz)")
    elif config.data.dataset == "cifar10":
        print("note: splits are --dataset=folder's on the tree cifar10_tree.py writes (the pack has no test "
              "split), not tfds cifar10's")
    try:
        pack = np.load(options.npz)
        labels, names = pack["labels"], pack["names"]
        pack["offsets"], pack["data"]  # noqa: B018  (present?)
    except (OSError, KeyError, ValueError) as e:
        fail(f"--npz={options.npz}: not a readable pack with arrays data, offsets, labels, names ({e})")
    info, parts, fine, coarse = carve(labels, names, validation_fraction=config.data.validation_fraction,
                                      test_fraction=config.data.folder_test_fraction,
                                      max_train_examples=config.data.max_train_examples)
    if len(parts["train"]) < config.optim.batch_size:
        fail(f"--batch_size={config.optim.batch_size} exceeds the {len(parts['train'])} training examples")

    import jax
    import keras

    from mtl_keras.modeling import build_and_compile

    keras.utils.set_random_seed(config.run.seed)
    steps = len(parts["train"]) // config.optim.batch_size
    try:
        model = build_and_compile(config.model, config.optim, info.num_classes, (32, 32, 3), steps,
                                  fine_to_coarse=info.fine_to_coarse)
    except ValueError as e:  # unknown model / variant / head, weighting without two heads
        fail(str(e))
    heads = {h: n for h, n in info.num_classes.items() if config.model.task in ("mtl", h)}  # modeling.heads_for
    device = jax.devices()[0]
    name = device.device_kind if device.platform != "cpu" else f"cpu ({os.cpu_count()} cores)"
    peak, peak_note = peak_tflops(device.device_kind, device.platform, config.optim.mixed_precision,
                                  options.peak_tflops)
    flops, flops_source = forward_flops(model, (32, 32, 3))

    start = time.perf_counter()
    everything = np.concatenate(list(parts.values()))
    pixels, how = decode(pack, everything, options.decode_threads, options.pixel_cache, options.npz)
    bounds = np.cumsum([0] + [len(p) for p in parts.values()])
    x = {s: pixels[a:b] for s, a, b in zip(parts, bounds[:-1], bounds[1:])}
    truth = {s: {"fine": fine[i], "coarse": coarse[i]} for s, i in parts.items()}
    print(f"{how} in {time.perf_counter() - start:.1f} s ({options.decode_threads} threads); "
          f"{len(x['train'])} train / {len(x['val'])} val / {len(x['test'])} test")
    print(f"{config.model.model} {config.model.variant} task {config.model.task}, {model.count_params():,} parameters, "
          f"{config.optim.mixed_precision}; {name}; forward {flops / 1e9:.4f} GFLOP/image "
          f"({flops_source}); MFU = 3 x forward FLOPs x images/s / peak; {peak_note}", flush=True)

    batches = train_batches(x["train"], one_hot(truth["train"], heads), heads, config, options.augment_threads)
    val = (x["val"].astype(np.float32), {h: np.eye(n, dtype=np.float32)[truth["val"][h]] for h, n in heads.items()})
    timer = epoch_callback(flops, peak, steps * config.optim.batch_size, heads, config.optim.epochs)
    callbacks = [timer]
    if options.workdir:
        Path(options.workdir).mkdir(parents=True, exist_ok=True)
        callbacks.append(keras.callbacks.CSVLogger(str(Path(options.workdir) / "history.csv")))
    start = time.perf_counter()
    model.fit(batches, steps_per_epoch=steps, epochs=config.optim.epochs, verbose=0, callbacks=callbacks, shuffle=False,
              validation_data=val if len(x["val"]) else None, validation_batch_size=config.optim.batch_size)
    fit_seconds = time.perf_counter() - start
    if config.model.tta_flip:  # the flipped-view average train.py evaluates and exports
        from mtl_keras.models.tta import with_flip_average

        model = with_flip_average(model)
    probs = model.predict(x["test"].astype(np.float32), batch_size=config.optim.batch_size, verbose=0)
    metrics = evaluate({h: np.asarray(probs[h]) for h in heads}, truth["test"], info, config.model.coarse_head != "learned")

    # Steady state: epoch 1 includes XLA compilation, so it counts only when it is the only epoch.
    rates = [e["images_per_s"] for e in timer.epochs[1:]] or [timer.epochs[0]["images_per_s"]]
    rate = float(np.median(rates))
    result = {"config": options.config_name, "device": name,
              "backend": keras.backend.backend(), "model": config.model.model, "variant": config.model.variant,
              "task": config.model.task, "mixed_precision": config.optim.mixed_precision,
              "augment": config.data.augment,
              "epochs": config.optim.epochs, "batch_size": config.optim.batch_size,
              "train_examples": len(x["train"]), "val_examples": len(x["val"]), "test_examples": len(x["test"]),
              "params": int(model.count_params()), "fwd_gflops_per_image": round(flops / 1e9, 5),
              "flops_source": flops_source, "peak_tflops": peak, "peak_note": peak_note,
              "images_per_s": round(rate, 1), "mfu": round(3 * flops * rate / (peak * 1e12), 4) if peak else None,
              "per_epoch": timer.epochs, **{k: round(v, 4) for k, v in metrics.items()},
              "train_seconds": round(sum(e["train_seconds"] for e in timer.epochs), 1),
              "fit_seconds": round(fit_seconds, 1)}
    if options.workdir:
        model.save(Path(options.workdir) / "model.keras")
        (Path(options.workdir) / "metrics.json").write_text(json.dumps(result, indent=1) + "\n")
    accuracies = ", ".join(f"{h} {metrics[f'test_{h}_accuracy']:.2%}" for h in heads)
    consistency = (f", hierarchy consistency {metrics['hierarchy_consistency']:.2%}"
                   if "hierarchy_consistency" in metrics else "")
    mfu = f"{result['mfu']:.1%}" if peak else "n/a"
    print(f"test ({len(x['test'])} images): {accuracies}{consistency}; trained {result['train_seconds']:.1f} s "
          f"(fit {fit_seconds:.1f} s), steady {rate:,.0f} images/s, MFU {mfu}")
    return result


def main(argv: list[str] | None = None) -> None:
    config, options = parse_args(sys.argv[1:] if argv is None else argv)
    print(json.dumps(run(config, options)), flush=True)


if __name__ == "__main__":
    main()
