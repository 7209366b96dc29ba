"""Datasets as in-memory arrays, and the tf.data pipelines that feed `model.fit`.

Every dataset loads to `Splits` (uint8 images, int32 fine and coarse labels per split) plus `DatasetInfo`
(class names for both heads and the fine -> coarse map). `pipeline` turns a split into batches of
`(image float32 0-255, {"fine": one-hot, "coarse": one-hot})`, with random augmentation (augment.py) for
training. Images keep their native shape (Fashion-MNIST: 28x28x1) and the model is built for it; a model
that asks for another shape gets it from `fit_images`, the one place channels and size adapt.
"""

from __future__ import annotations

import dataclasses
import socket

import numpy as np
import tensorflow as tf

from mtl_keras import augment as augment_lib
from mtl_keras import classes, fashion_mnist, shapes
from mtl_keras.errors import DatasetError
from mtl_keras.augment import AUGMENTS, random_flip_crop  # noqa: F401  (flags and older callers use these)

DATASETS = ("shapes", "cifar10", "cifar100", "fashion_mnist", "folder", "csv")
TASKS = ("mtl", "fine", "coarse")
SHAPES_TRAIN, SHAPES_TEST = 12_000, 2_000
_TFDS_HOSTS = {"cifar10": "www.cs.toronto.edu", "cifar100": "www.cs.toronto.edu"}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    fine_names: tuple[str, ...]
    coarse_names: tuple[str, ...]
    fine_to_coarse: tuple[int, ...]
    skipped_files: tuple[str, ...] = ()  # image files that could not be decoded (folder and csv datasets)

    @property
    def num_classes(self) -> dict[str, int]:
        return {"fine": len(self.fine_names), "coarse": len(self.coarse_names)}


@dataclasses.dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 [N, H, W, C]
    fine: np.ndarray  # int32 [N]
    coarse: np.ndarray  # int32 [N]

    def __len__(self) -> int:
        return len(self.fine)

    def take(self, index: np.ndarray | slice) -> "Split":
        return Split(self.images[index], self.fine[index], self.coarse[index])


@dataclasses.dataclass(frozen=True)
class Splits:
    info: DatasetInfo
    train: Split
    val: Split
    test: Split


def _carve_validation(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Splits off a seeded random `fraction` of train as validation (at least one example each)."""
    order = np.random.default_rng(seed).permutation(len(train))
    n_val = min(max(int(round(len(train) * fraction)), 1), len(train) - 1) if fraction > 0 else 0
    return train.take(np.sort(order[n_val:])), train.take(np.sort(order[:n_val]))


def _load_shapes() -> tuple[DatasetInfo, Split, Split]:
    info = DatasetInfo("shapes", shapes.FINE_NAMES, shapes.COARSE_NAMES, shapes.FINE_TO_COARSE)
    return info, Split(*shapes.generate(SHAPES_TRAIN, seed=0)), Split(*shapes.generate(SHAPES_TEST, seed=1))


def _require_download(name: str, data_dir: str | None, download: bool) -> None:
    """Called when `name` is not prepared: returns if tfds may download it, else raises one clear line."""
    where = f"--data_dir={data_dir}" if data_dir else "the default tfds data_dir (~/tensorflow_datasets)"
    hint = (f"prepare it on a machine with internet (`tfds build {name} --data_dir=DIR`), "
            "copy DIR here and pass --data_dir=DIR")
    if not download:
        raise DatasetError(f"dataset {name} not found in {where} and --download is off: {hint}")
    # tfds retries an offline download for minutes; one quick connection attempt fails in seconds instead.
    host = _TFDS_HOSTS[name]
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as e:
        raise DatasetError(f"dataset {name} not found in {where} and {host} is unreachable ({e}): {hint}") from None


def _load_tfds(name: str, data_dir: str | None, download: bool) -> tuple[DatasetInfo, Split, Split]:
    import tensorflow_datasets as tfds

    fine_names, coarse_names, fine_to_coarse = classes.CLASSES[name]
    lookup = np.asarray(fine_to_coarse, np.int32)

    def read(split: str, may_download: bool) -> Split:
        ds = tfds.load(name, split=split, data_dir=data_dir, download=may_download)
        batch = next(iter(tfds.as_numpy(ds.batch(1 << 20))))
        fine = batch["label"].astype(np.int32)
        # The coarse label comes from the fixed class hierarchy, which equals tfds's `coarse_label` on
        # CIFAR-100 and defines the seed study's animal / vehicle split on CIFAR-10.
        return Split(batch["image"], fine, lookup[fine])

    try:
        train = read("train", may_download=False)
    except AssertionError as e:  # tfds's way of saying "not prepared"
        if "could not find data" not in str(e):
            raise
        _require_download(name, data_dir, download)
        train = read("train", may_download=True)
    info = DatasetInfo(name, fine_names, coarse_names, fine_to_coarse)
    return info, train, read("test", may_download=False)


def _load_fashion_mnist(directory: str) -> tuple[DatasetInfo, Split, Split]:
    lookup = np.asarray(fashion_mnist.FINE_TO_COARSE, np.int32)
    try:
        (train_x, train_y), (test_x, test_y) = (fashion_mnist.load_split(directory, s) for s in ("train", "test"))
    except fashion_mnist.IdxError as e:
        raise DatasetError(f"dataset fashion_mnist: {e}") from None
    info = DatasetInfo("fashion_mnist", fashion_mnist.FINE_NAMES, fashion_mnist.COARSE_NAMES,
                       fashion_mnist.FINE_TO_COARSE)
    return info, Split(train_x, train_y, lookup[train_y]), Split(test_x, test_y, lookup[test_y])


def load(name: str, *, data_dir: str | None = None, validation_fraction: float = 0.15,
         max_train_examples: int | None = None, seed: int = 0, download: bool = True,
         fashion_mnist_dir: str = fashion_mnist.DEFAULT_DIR, folder_image_size: int = 32,
         folder_test_fraction: float = 0.15, folder_cache_mb: float = 2048) -> Splits:
    """Loads dataset `name` into train / validation / test arrays; validation is carved from train.

    `data_dir` is the tfds folder (CIFAR), the image tree ROOT (folder) or the label file (csv);
    `fashion_mnist_dir` holds the Fashion-MNIST idx files; the `folder_*` options are folders.load's.
    """
    if name in ("folder", "csv"):
        from mtl_keras import folders  # here, not at the top: folders imports this module

        return folders.load(name, data_dir, image_size=folder_image_size, validation_fraction=validation_fraction,
                            test_fraction=folder_test_fraction, max_train_examples=max_train_examples,
                            cache_mb=folder_cache_mb)
    if name == "shapes":
        info, train, test = _load_shapes()
    elif name in ("cifar10", "cifar100"):
        info, train, test = _load_tfds(name, data_dir, download)
    elif name == "fashion_mnist":
        info, train, test = _load_fashion_mnist(fashion_mnist_dir)
    else:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    train, val = _carve_validation(train, validation_fraction, seed)
    if max_train_examples:
        train = train.take(slice(0, max_train_examples))
    return Splits(info, train, val, test)



def load_for(config, **overrides) -> Splits:
    """`load` with the dataset settings of a `TrainConfig` (so train, export, check_onnx and the experiment
    runner read a dataset the same way); keyword `overrides` replace single settings."""
    kwargs = dict(data_dir=config.data_dir, validation_fraction=config.validation_fraction,
                  max_train_examples=config.max_train_examples, seed=config.seed, download=config.download,
                  fashion_mnist_dir=config.fashion_mnist_dir, folder_image_size=config.folder_image_size,
                  folder_test_fraction=config.folder_test_fraction, folder_cache_mb=config.folder_cache_mb)
    return load(overrides.pop("dataset", config.dataset), **(kwargs | overrides))

def fit_images(images, shape: tuple[int, int, int]):
    """Images (uint8 or float, [N, h, w, c]) as `shape` (H, W, C): the one place channels and size adapt.

    Grey -> RGB repeats the channel, RGB -> grey averages; a size mismatch is resized bilinearly.
    Works eagerly on numpy and inside tf.data; returns the input dtype where nothing needed resizing.
    """
    if not (isinstance(images, np.ndarray) or tf.is_tensor(images)):
        images = np.asarray(images)  # array-likes such as folders.FileImages
    x = tf.convert_to_tensor(images)
    channels = x.shape[-1]
    if channels != shape[2]:
        if channels == 1:
            x = tf.repeat(x, shape[2], axis=-1)
        elif shape[2] == 1:
            x = tf.cast(tf.round(tf.reduce_mean(tf.cast(x, tf.float32), -1, keepdims=True)), x.dtype)
        else:
            raise ValueError(f"cannot map {channels} image channels to {shape[2]}")
    if tuple(x.shape[1:3]) != tuple(shape[:2]):
        x = tf.cast(tf.clip_by_value(tf.image.resize(tf.cast(x, tf.float32), shape[:2]), 0, 255), x.dtype)
    return x.numpy() if isinstance(images, np.ndarray) else x


def split_heads(labels: tf.Tensor, info: DatasetInfo, task: str) -> dict[str, tf.Tensor]:
    """Concatenated [fine | coarse] label vectors as the label dict for `task` (one head unless "mtl")."""
    n_fine = info.num_classes["fine"]
    heads = {"fine": labels[:, :n_fine], "coarse": labels[:, n_fine:]}
    return heads if task == "mtl" else {task: heads[task]}


def pipeline(split: Split, info: DatasetInfo, *, task: str = "mtl", batch_size: int = 128,
             training: bool = False, augment: str = "none", seed: int = 0,
             image_shape: tuple[int, int, int] | None = None, randaugment_ops: int = 2,
             randaugment_magnitude: float = 0.5, mixup_alpha: float = 0.2,
             cutmix_alpha: float = 1.0) -> tf.data.Dataset:
    """Batches of (float32 images 0-255, one-hot label dict), graph-only from index to batch.

    Training pipelines shuffle, repeat forever (pass `steps_per_epoch` to fit) and apply the `augment`
    policies (see augment.py); evaluation pipelines never augment. Each batch's augmentation seed is
    [seed, batch number], so runs are reproducible. `image_shape` (H, W, C), when given, is the shape the
    model takes; `fit_images` adapts the images to it after augmentation.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    augmenter = augment_lib.batch_augmenter(
        augment, seed=seed, randaugment_ops=randaugment_ops, randaugment_magnitude=randaugment_magnitude,
        mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha) if training else None
    if not isinstance(split.images, np.ndarray):  # folders.FileImages: decoded from files every epoch
        from mtl_keras import folders

        return folders.file_pipeline(split, info, task=task, batch_size=batch_size, training=training,
                                     augmenter=augmenter, seed=seed, image_shape=image_shape)
    # Arrays live in memory once; shuffling and batching indices (not images) and gathering a whole batch
    # per map call is faster than slicing examples, and the shuffle buffer holds 8-byte indices only.
    images, fine, coarse = (tf.constant(a) for a in (split.images, split.fine, split.coarse))
    n = info.num_classes
    ds = tf.data.Dataset.range(len(split))
    if training:
        ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = tf.data.Dataset.zip(ds.batch(batch_size, drop_remainder=training), tf.data.Dataset.counter())

    def prepare(index: tf.Tensor, step: tf.Tensor):
        x = tf.gather(images, index)
        # One label vector per example, so MixUp / CutMix mix both heads with the same weights.
        labels = tf.concat([tf.one_hot(tf.gather(fine, index), n["fine"]),
                            tf.one_hot(tf.gather(coarse, index), n["coarse"])], axis=-1)
        if augmenter is not None:
            x, labels = augmenter(x, labels, tf.stack([tf.cast(seed, tf.int64), step]))
        if image_shape is not None:
            x = fit_images(x, tuple(image_shape))
        return tf.cast(x, tf.float32), split_heads(labels, info, task)

    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)
