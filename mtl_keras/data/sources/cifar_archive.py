"""CIFAR-10 / CIFAR-100 from the official python-version archives, as their authors publish them and as
keras.datasets caches them: numpy and the standard library only, no tfds, no network.

`find(name, path)` accepts, for CIFAR-10 (CIFAR-100 alike, with cifar-100-python):
- the archive itself: cifar-10-python.tar.gz, or Keras's cached copy of it (any name, checked by content);
- the folder extracted from it: cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta);
- a folder holding either, such as ~/.keras/datasets, where Keras 3 keeps
  cifar-10-batches-py-target/cifar-10-batches-py/ and cifar-10-batches-py-target_archive, and Keras 2 kept
  cifar-10-batches-py/ and cifar-10-batches-py.tar.gz.
An extracted folder is preferred to an archive beside it (no gunzip).

The batches are Python pickles. They are read with an unpickler that can build nothing but numpy arrays, so a
hostile archive cannot run code, and what it builds is checked (dict, uint8 N x 3072 pixels, labels in range,
the class names of the official meta file) before it is used. Every problem is one `DatasetError` line naming
the file and what was expected.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import tarfile
import zlib

import numpy as np

from mtl_keras.errors import DatasetError

# The largest member of either archive is CIFAR-100's `train` (about 155 MB); anything far above is not CIFAR.
MAX_MEMBER_BYTES = 256 << 20


@dataclasses.dataclass(frozen=True)
class Layout:
    title: str  # as people write it, for messages
    folder: str  # the archive's top folder, also its extracted name
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    archives: tuple[str, ...]  # file names the archive goes by: official, then Keras 3's and Keras 2's caches
    keras_dir: str  # Keras 3's extraction folder, holding `folder`

    @property
    def official(self) -> str:
        return self.archives[0]


LAYOUTS = {
    "cifar10": Layout("CIFAR-10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                      ("test_batch",), "batches.meta",
                      ("cifar-10-python.tar.gz", "cifar-10-batches-py-target_archive", "cifar-10-batches-py.tar.gz"),
                      "cifar-10-batches-py-target"),
    "cifar100": Layout("CIFAR-100", "cifar-100-python", ("train",), ("test",), "meta",
                       ("cifar-100-python.tar.gz", "cifar-100-python-target_archive"), "cifar-100-python-target"),
}


def _other(name: str) -> str:
    return "cifar100" if name == "cifar10" else "cifar10"


def _expected(layout: Layout) -> str:
    return f"expected the {layout.title} python archive ({layout.official}) or its folder {layout.folder}/"


def _is_extracted(folder: str, layout: Layout) -> bool:
    # Either file is enough: a folder missing the other is then reported as incomplete, naming it.
    return os.path.isfile(os.path.join(folder, layout.meta)) or os.path.isfile(os.path.join(folder, layout.train[0]))


def _candidates(directory: str, layout: Layout) -> list[str]:
    """Where `layout`'s data may sit in or under `directory`, extracted folders first."""
    folders = [directory, os.path.join(directory, layout.folder),
               os.path.join(directory, layout.keras_dir, layout.folder)]
    return ([f for f in folders if _is_extracted(f, layout)]
            + [p for p in (os.path.join(directory, a) for a in layout.archives) if os.path.isfile(p)])


def find(name: str, path: str | None) -> str | None:
    """The archive or extracted folder of dataset `name` that `path` is or holds; None when `path` holds no
    CIFAR archive of either kind (then another source may read it). DatasetError when `path` is a file, or holds
    only the other CIFAR's data."""
    if not path:
        return None
    path = os.path.expanduser(path)
    layout = LAYOUTS[name]
    if os.path.isfile(path):
        return path  # an archive by any name: its content is checked when read
    if not os.path.isdir(path):
        return None
    found = _candidates(path, layout)
    if found:
        return found[0]
    foreign = _candidates(path, LAYOUTS[_other(name)])
    if foreign:
        other = LAYOUTS[_other(name)]
        raise DatasetError(f"{foreign[0]} is {other.title} data, not {layout.title}: {_expected(layout)}, "
                           f"or pass --dataset={_other(name)}")
    return None


_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy's array rebuilder, wherever this numpy keeps it
# The only globals a CIFAR batch names (numpy 1 wrote numpy.core, numpy 2 writes numpy._core: the same function).
_ALLOWED_GLOBALS = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
                    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT}


class _ArrayUnpickler(pickle.Unpickler):
    """Builds numpy arrays, dicts, lists, numbers and strings only: any other global is refused."""

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refused to build {module}.{name}")
        return _ALLOWED_GLOBALS[(module, name)]


def _unpickle(raw: bytes, where: str, layout: Layout) -> dict:
    """The batch dict of `raw`, keys as text (the batches were written by Python 2: str keys read as bytes)."""
    try:
        d = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 -- a corrupt pickle fails in any of a dozen ways, all the same to a user
        raise DatasetError(f"{where} is not a {layout.title} batch ({type(e).__name__}: {e}): corrupt, "
                           f"or not from {layout.official}") from None
    if not isinstance(d, dict):
        raise DatasetError(f"{where} holds a {type(d).__name__}, not the dict of a {layout.title} batch: "
                           f"corrupt, or not from {layout.official}")
    return {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in d.items()}


def _names(meta: dict, key: str, expected: tuple[str, ...], where: str, layout: Layout) -> tuple[str, ...]:
    values = meta.get(key)
    names = tuple(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                  for v in values) if isinstance(values, list) else None
    if names != tuple(expected):
        got = "none" if names is None else f"{len(names)} starting {', '.join(names[:3])}"
        raise DatasetError(f"{where} lists {key} {got}; expected {layout.title}'s {len(expected)} "
                           f"({', '.join(expected[:3])}, ...): not the {layout.title} archive ({layout.official})")
    return names


def _labels(batch: dict, key: str, n: int, count: int, where: str, layout: Layout) -> np.ndarray:
    values = batch.get(key)
    try:
        labels = np.asarray(values if isinstance(values, (list, np.ndarray)) else None, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        labels = np.zeros(0, np.int64)
    if labels.shape != (n,) or (n and not 0 <= labels.min() <= labels.max() < count):
        raise DatasetError(f"{where} lacks {n} '{key}' in 0-{count - 1}: corrupt, or not a {layout.title} "
                           f"batch ({layout.official})")
    return labels.astype(np.int32)


def _batch(batch: dict, name: str, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Images (uint8 N x 32 x 32 x 3), fine labels and, for CIFAR-100, the archive's coarse labels."""
    layout = LAYOUTS[name]
    data = batch.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(f"{where} 'data' is {got}, expected uint8 N x 3072 pixels: corrupt, or not a "
                           f"{layout.title} batch ({layout.official})")
    n = len(data)
    # A row is the red, green and blue 32 x 32 planes in turn.
    images = np.ascontiguousarray(data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1))
    if name == "cifar10":
        return images, _labels(batch, "labels", n, 10, where, layout), None
    return (images, _labels(batch, "fine_labels", n, 100, where, layout),
            _labels(batch, "coarse_labels", n, 20, where, layout))


def _read_folder(folder: str, layout: Layout):
    """Yields (member, bytes) for each file `layout` needs, from an extracted folder."""
    for member in (layout.meta, *layout.train, *layout.test):
        path = os.path.join(folder, member)
        try:
            size = os.path.getsize(path)
            if size > MAX_MEMBER_BYTES:
                raise DatasetError(f"{path} is {size} bytes, more than any {layout.title} batch: {_expected(layout)}")
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise DatasetError(f"{path} cannot be read ({e.strerror or e}): the folder {folder} is incomplete; "
                               f"{_expected(layout)}") from None
        yield member, raw


def _read_archive(path: str, name: str):
    """Yields (member, bytes) for each member `layout` needs, in one pass over the (gzipped) tar, extracting
    nothing; a member is read only after the previous one was used, so one raw batch is in memory at a time."""
    layout, other = LAYOUTS[name], LAYOUTS[_other(name)]
    wanted = {f"{layout.folder}/{m}": m for m in (layout.meta, *layout.train, *layout.test)}
    seen = set()
    try:
        with tarfile.open(path, "r|*") as tar:  # a stream: one gunzip pass, no seeking back
            for info in tar:
                if not seen and info.name.split("/")[0] == other.folder:
                    raise DatasetError(f"{path} is the {other.title} archive, not {layout.title}'s: "
                                       f"{_expected(layout)}, or pass --dataset={_other(name)}")
                if info.name not in wanted or not info.isfile():
                    continue
                if info.size > MAX_MEMBER_BYTES:
                    raise DatasetError(f"{path} member {info.name} is {info.size} bytes, more than any "
                                       f"{layout.title} batch: {_expected(layout)}")
                seen.add(info.name)
                yield wanted[info.name], tar.extractfile(info).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:  # a cut gzip stream is EOFError
        raise DatasetError(f"{path} is truncated or corrupt ({type(e).__name__}: {e}): cannot read it as a "
                           f"gzipped tar; {_expected(layout)}") from None
    missing = [member for member in wanted if member not in seen]
    if missing:
        what = "truncated, or not" if seen else "not"
        raise DatasetError(f"{path} lacks {missing[0]} ({len(missing)} of {len(wanted)} members missing): {what} "
                           f"the {layout.title} python archive ({layout.official})")


def read(name: str, path: str, fine_names: tuple[str, ...], coarse_names: tuple[str, ...],
         fine_to_coarse: tuple[int, ...]):
    """(train, test) as (images, fine, coarse) triples from the archive or folder `path` (see `find`).

    Class names must be the official ones (`fine_names`, and for CIFAR-100 `coarse_names`), so label ids and
    names match tfds's; CIFAR-100's own coarse labels must agree with `fine_to_coarse`, CIFAR-10's come from it.
    """
    layout = LAYOUTS[name]
    lookup = np.asarray(fine_to_coarse, np.int32)

    def where(member: str) -> str:
        return os.path.join(path, member) if os.path.isdir(path) else f"{path} member {layout.folder}/{member}"

    parsed = {}  # member -> meta dict, or a batch's (images, fine, coarse)
    members = (_read_folder(path, layout) if os.path.isdir(path)
               else _read_archive(path, name))
    for member, raw in members:
        content = _unpickle(raw, where(member), layout)
        del raw  # the raw pickle can go before the next member is read
        if member == layout.meta:
            parsed[member] = content
            continue
        images, fine, coarse = _batch(content, name, where(member))
        if coarse is None:
            coarse = lookup[fine]
        elif not np.array_equal(coarse, lookup[fine]):
            bad = int(np.flatnonzero(coarse != lookup[fine])[0])
            raise DatasetError(f"{where(member)} gives {fine_names[fine[bad]]} the superclass "
                               f"{coarse_names[coarse[bad]]}, not {coarse_names[lookup[fine[bad]]]}: corrupt, "
                               f"or not the {layout.title} archive ({layout.official})")
        parsed[member] = (images, fine, coarse)

    meta = parsed[layout.meta]
    if name == "cifar10":
        _names(meta, "label_names", fine_names, where(layout.meta), layout)
    else:
        _names(meta, "fine_label_names", fine_names, where(layout.meta), layout)
        _names(meta, "coarse_label_names", coarse_names, where(layout.meta), layout)

    def split(member_names: tuple[str, ...]):
        parts = [parsed.pop(m) for m in member_names]
        return tuple(np.concatenate(arrays) if len(parts) > 1 else arrays[0] for arrays in zip(*parts))

    return split(layout.train), split(layout.test)
