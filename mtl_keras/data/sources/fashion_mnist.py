"""Fashion-MNIST from the idx files of the Debian package `dataset-fashion-mnist` (no download, no tfds).

    sudo apt-get install dataset-fashion-mnist     # -> /usr/share/datasets/fashion-mnist/*-ubyte.gz
    python -c "import mtl_keras.data.sources.fashion_mnist as f; print(f.load_split(f.DEFAULT_DIR, 'test')[0].shape)"

Fine labels are the 10 Fashion-MNIST classes. Coarse labels group them by the part of the body a garment
covers: tops (t-shirt/top, pullover, coat, shirt), dresses and trousers (the two long, full-height
silhouettes: a dress covers the legs as trousers do, so it is not filed under tops), footwear (sandal,
sneaker, ankle boot) and bags. The four tops are the classes models confuse most, so the hard fine
distinctions sit inside one superclass, as in the CIFAR-100 hierarchy.

Every problem with the files raises `IdxError` (a ValueError) with one line naming the file.
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from mtl_keras.data.types import DatasetInfo, Source, Split
from mtl_keras.errors import DatasetError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FINE_NAMES = ("t-shirt/top", "trouser", "pullover", "dress", "coat",
              "sandal", "shirt", "sneaker", "bag", "ankle boot")
COARSE_NAMES = ("tops", "dresses_and_trousers", "footwear", "bags")
FINE_TO_COARSE = (0, 1, 0, 1, 0, 2, 0, 2, 3, 2)
FILES = {  # split -> (images, labels), as the Debian package and the original release name them
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
INSTALL_HINT = ("install it with `apt-get install dataset-fashion-mnist` or pass --fashion_mnist_dir=DIR "
                "naming a folder with the four *-ubyte.gz files")
REPAIR_HINT = ("reinstall it (`apt-get install --reinstall dataset-fashion-mnist`) or pass --fashion_mnist_dir=DIR "
               "naming a folder with intact copies")
# idx type codes (third byte of the magic number) -> numpy dtype; idx stores multi-byte values big-endian.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IdxError(DatasetError, ValueError):
    """An idx file is missing, corrupt or not what was expected; the message names the file."""


def _read_bytes(path: str) -> bytes:
    """The file's bytes, gunzipped when the name ends in .gz; errors become one-line IdxErrors."""
    if not os.path.isfile(path):
        raise IdxError(f"{path} not found; {INSTALL_HINT}")
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a cut gzip stream is EOFError
        raise IdxError(f"{path} is corrupt: cannot gunzip it ({e}); {REPAIR_HINT}") from None


def parse_idx(raw: bytes, name: str, ndim: int | None = None) -> np.ndarray:
    """Decodes idx bytes (magic 0x0000 TYPE NDIM, NDIM big-endian uint32 sizes, data) into an array.

    `name` is used in error messages; `ndim`, when given, is the number of dimensions required.
    """
    if len(raw) < 4:
        raise IdxError(f"{name} is truncated: {len(raw)} bytes, too short for an idx header")
    magic = int.from_bytes(raw[:4], "big")
    type_code, dims = raw[2], raw[3]
    if raw[:2] != b"\0\0" or type_code not in _IDX_DTYPES or dims == 0 or (ndim is not None and dims != ndim):
        want = f"0x000008{ndim:02X}" if ndim is not None else "0x0000TTNN"
        raise IdxError(f"{name} has wrong magic number 0x{magic:08X} (expected {want}): not an idx file of "
                       f"this kind, or corrupt")
    header = 4 + 4 * dims
    if len(raw) < header:
        raise IdxError(f"{name} is truncated: {len(raw)} bytes, the idx header alone needs {header}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise IdxError(f"{name} is {what}: {len(raw)} bytes, header {shape} needs {expected}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str, ndim: int | None = None) -> np.ndarray:
    """Reads one idx file (gzipped or not); see `parse_idx`. Errors end with how to repair the file."""
    raw = _read_bytes(path)
    try:
        return parse_idx(raw, path, ndim)
    except IdxError as e:
        raise IdxError(f"{e}; {REPAIR_HINT}") from None


def load_split(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8 [N, 28, 28, 1]) and fine labels (int32 [N]) of `split` ("train" or "test")."""
    image_file, label_file = (os.path.join(os.path.expanduser(directory), f) for f in FILES[split])
    images = read_idx(image_file, ndim=3)
    labels = read_idx(label_file, ndim=1)
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28):
        raise IdxError(f"{image_file} holds {images.dtype} images of size {images.shape[1:]}, not uint8 28x28; "
                       f"{REPAIR_HINT}")
    if len(images) != len(labels):
        raise IdxError(f"{image_file} has {len(images)} images but {label_file} has {len(labels)} labels; "
                       f"{REPAIR_HINT}")
    if labels.size and not 0 <= labels.min() <= labels.max() < len(FINE_NAMES):
        raise IdxError(f"{label_file} has labels outside 0-{len(FINE_NAMES) - 1}: corrupt; {REPAIR_HINT}")
    return images[..., None], labels.astype(np.int32)


def load(settings) -> Source:
    """Fashion-MNIST from `settings.fashion_mnist_dir` (a config.DataConfig); coarse labels from FINE_TO_COARSE."""
    lookup = np.asarray(FINE_TO_COARSE, np.int32)
    try:
        (train_x, train_y), (test_x, test_y) = (load_split(settings.fashion_mnist_dir, s) for s in ("train", "test"))
    except IdxError as e:
        raise DatasetError(f"dataset fashion_mnist: {e}") from None
    info = DatasetInfo("fashion_mnist", FINE_NAMES, COARSE_NAMES, FINE_TO_COARSE)
    return Source(info, Split(train_x, train_y, lookup[train_y]), Split(test_x, test_y, lookup[test_y]))
