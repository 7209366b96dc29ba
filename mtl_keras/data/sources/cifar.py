"""CIFAR-10 and CIFAR-100, with their class trees, from the official python archives or tensorflow-datasets.

Where the images come from, first match wins:
1. --data_dir is, or holds, the official python archive or its extracted folder (cifar_archive.py);
2. tfds's prepared data in --data_dir, or in tfds's own data_dir when --data_dir is not given;
3. without --data_dir, the archive in Keras's cache ($KERAS_HOME or ~/.keras, then datasets/), where
   `keras.datasets.cifar10.load_data()` leaves it;
4. a tfds download, when --download is on and the host answers.
Every source gives the official splits: 50,000 training images (validation is carved from them) and the
10,000 test images.

Class names and fine -> coarse maps are shipped because tfds knows them only after a real download. Label ids
follow tfds, which is the archives' order (alphabetical for CIFAR-100), so a model trained on one source scores
on the other. Offline, a missing dataset fails within seconds with one line (tfds alone retries a download for
minutes).
"""

from __future__ import annotations

import os
import socket

import numpy as np

from mtl_keras.data.sources import cifar_archive
from mtl_keras.data.types import DatasetInfo, Source, Split
from mtl_keras.errors import DatasetError

CIFAR10_FINE = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The seed study's superclasses: animal = labels 2-7 (bird .. horse), vehicle = the rest.
CIFAR10_COARSE = ("animal", "vehicle")
CIFAR10_FINE_TO_COARSE = (1, 1, 0, 0, 0, 0, 0, 0, 1, 1)

# CIFAR-100 superclass -> its five classes, as listed by the dataset's authors.
_CIFAR100_TREE = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
CIFAR100_COARSE = tuple(sorted(_CIFAR100_TREE))
CIFAR100_FINE = tuple(sorted(name for members in _CIFAR100_TREE.values() for name in members))
_PARENT = {fine: coarse for coarse, members in _CIFAR100_TREE.items() for fine in members}
CIFAR100_FINE_TO_COARSE = tuple(CIFAR100_COARSE.index(_PARENT[name]) for name in CIFAR100_FINE)

# dataset name -> (fine names, coarse names, fine -> coarse)
CLASSES = {
    "cifar10": (CIFAR10_FINE, CIFAR10_COARSE, CIFAR10_FINE_TO_COARSE),
    "cifar100": (CIFAR100_FINE, CIFAR100_COARSE, CIFAR100_FINE_TO_COARSE),
}
_TFDS_HOSTS = {"cifar10": "www.cs.toronto.edu", "cifar100": "www.cs.toronto.edu"}


def _require_download(name: str, data_dir: str | None, download: bool) -> None:
    """Called when `name` is not prepared: returns if tfds may download it, else raises one clear line."""
    where = f"--data_dir={data_dir}" if data_dir else "the default tfds data_dir (~/tensorflow_datasets)"
    hint = (f"pass --data_dir naming the official archive {cifar_archive.LAYOUTS[name].official} (or the folder "
            f"holding it), or prepare it on a machine with internet (`tfds build {name} --data_dir=DIR`), "
            "copy DIR here and pass --data_dir=DIR")
    if not download:
        raise DatasetError(f"dataset {name} not found in {where} and --download is off: {hint}")
    # tfds retries an offline download for minutes; one quick connection attempt fails in seconds instead.
    host = _TFDS_HOSTS[name]
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as e:
        raise DatasetError(f"dataset {name} not found in {where} and {host} is unreachable ({e}): {hint}") from None


def keras_cache() -> str:
    """The folder where keras.datasets keeps its downloads, as Keras computes it."""
    return os.path.join(os.path.expanduser(os.environ.get("KERAS_HOME") or os.path.join("~", ".keras")), "datasets")


def _tfds_prepared(name: str) -> bool:
    """Whether tfds's default data_dir holds `name` (a cheap look, without importing tfds)."""
    root = os.environ.get("TFDS_DATA_DIR") or os.path.join("~", "tensorflow_datasets")
    return os.path.isdir(os.path.join(os.path.expanduser(root), name))


def _from_archive(name: str, path: str) -> Source:
    fine_names, coarse_names, fine_to_coarse = CLASSES[name]
    try:
        train, test = cifar_archive.read(name, path, fine_names, coarse_names, fine_to_coarse)
    except DatasetError as e:
        raise DatasetError(f"dataset {name}: {e}") from None
    return Source(DatasetInfo(name, fine_names, coarse_names, fine_to_coarse), Split(*train), Split(*test))


def load(settings) -> Source:
    """CIFAR-10 or -100 (`settings.dataset`) from the first source that has it (module docstring)."""
    name, data_dir = settings.dataset, settings.data_dir
    try:
        archive = cifar_archive.find(name, data_dir)
    except DatasetError as e:
        raise DatasetError(f"dataset {name}: {e}") from None
    if not archive and not data_dir and not _tfds_prepared(name):
        try:
            archive = cifar_archive.find(name, keras_cache())
        except DatasetError:  # the cache holds only the other CIFAR: not this run's business
            archive = None
    if archive:
        return _from_archive(name, archive)
    return _load_tfds(settings)


def _load_tfds(settings) -> Source:
    """CIFAR-10 or -100 from tfds in `settings.data_dir`, downloading it when allowed."""
    import tensorflow_datasets as tfds  # here: it takes seconds to import, and only tfds CIFAR needs it

    name, data_dir, download = settings.dataset, settings.data_dir, settings.download
    fine_names, coarse_names, fine_to_coarse = CLASSES[name]
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
    return Source(info, train, read("test", may_download=False))
