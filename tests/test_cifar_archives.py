"""CIFAR-10 / CIFAR-100 from the official python archives: tiny archives written in the real format (Python 2
pickles of the real dict keys, a gzipped tar with the real member names), in every place a user or Keras keeps
them, and every way such an archive can be broken."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import struct
import tarfile
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from conftest import refused_in_process

from mtl_keras.data import datasets
from mtl_keras.data.sources import cifar, cifar_archive
from mtl_keras.errors import DatasetError

N_TRAIN, N_TEST = 3, 4  # images per training batch (CIFAR-10 has five, CIFAR-100 one) and in the test batch


class _Py2Pickler(pickle._Pickler):
    """Writes text and bytes as Python 2 `str` opcodes, as the official batches (pickled by Python 2) hold them."""
    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        raw = obj.encode("latin-1") if isinstance(obj, str) else obj
        short = len(raw) < 256
        self.write((pickle.SHORT_BINSTRING + bytes([len(raw)])) if short else
                   (pickle.BINSTRING + struct.pack("<i", len(raw))))
        self.write(raw)
        self.memoize(obj)

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    # The official files name numpy 1's module; numpy 2 writes numpy._core.
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def batch(name: str, n: int, seed: int) -> dict:
    """One batch dict with the official keys: pixels as rows of R, G, B planes, labels as a list."""
    rng = np.random.default_rng(seed)
    fine = rng.integers(0, 10 if name == "cifar10" else 100, n).tolist()
    d = {"batch_label": f"batch {seed}", "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
         "filenames": [f"img_{seed}_{i}.png" for i in range(n)]}
    if name == "cifar10":
        return {**d, "labels": fine}
    return {**d, "fine_labels": fine, "coarse_labels": [cifar.CIFAR100_FINE_TO_COARSE[f] for f in fine]}


def members(name: str) -> dict[str, dict]:
    """Member file name -> the dict it pickles, for a whole tiny dataset."""
    layout = cifar_archive.LAYOUTS[name]
    fine, coarse, _ = cifar.CLASSES[name]
    if name == "cifar10":
        meta = {"label_names": list(fine), "num_cases_per_batch": N_TRAIN, "num_vis": 3072}
    else:
        meta = {"fine_label_names": list(fine), "coarse_label_names": list(coarse)}
    files = {layout.meta: meta, **{m: batch(name, N_TRAIN, i + 1) for i, m in enumerate(layout.train)}}
    return {**files, layout.test[0]: batch(name, N_TEST, 0)}


def write_folder(folder: Path, name: str, files: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for member, content in (files or members(name)).items():
        (folder / member).write_bytes(content if isinstance(content, bytes) else py2_pickle(content))
    return folder


def write_archive(path: Path, name: str, files: dict | None = None) -> Path:
    """A gzipped tar with the official member names (cifar-10-batches-py/data_batch_1, ...)."""
    top = cifar_archive.LAYOUTS[name].folder
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for member, content in (files or members(name)).items():
            raw = content if isinstance(content, bytes) else py2_pickle(content)
            info = tarfile.TarInfo(f"{top}/{member}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def hwc(d: dict) -> np.ndarray:
    return d["data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


@pytest.fixture(autouse=True)
def no_other_sources(tmp_path, monkeypatch):
    """A Keras cache and a tfds folder of the developer's own never answer for these tests."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds_home"))


def load(name: str, data_dir, **settings):
    return datasets.load(name, data_dir=None if data_dir is None else str(data_dir), validation_fraction=0.2,
                         download=False, **settings)


def test_cifar10_archive_gives_official_splits_pixels_and_labels(tmp_path):
    files = members("cifar10")
    write_archive(tmp_path / "cifar-10-python.tar.gz", "cifar10", files)
    s = load("cifar10", tmp_path)
    assert len(s.train) + len(s.val) == 5 * N_TRAIN and len(s.val) == 3 and len(s.test) == N_TEST
    assert s.info.num_classes == {"fine": 10, "coarse": 2} and s.info.fine_names[0] == "airplane"
    # The test split is the official test batch, image for image, with its labels, in HWC order.
    test = files["test_batch"]
    assert s.test.images.shape == (N_TEST, 32, 32, 3) and s.test.images.dtype == np.uint8
    np.testing.assert_array_equal(s.test.images, hwc(test))
    np.testing.assert_array_equal(s.test.fine, test["labels"])
    assert s.test.fine.dtype == s.test.coarse.dtype == np.int32
    # Coarse: animal (0) for bird .. horse, vehicle (1) for the rest.
    np.testing.assert_array_equal(s.test.coarse, [0 if 2 <= f <= 7 else 1 for f in test["labels"]])
    # Train + validation are the five training batches, carved with the seed.
    all_train = np.concatenate([hwc(files[f"data_batch_{i}"]) for i in range(1, 6)])
    got = np.concatenate([s.train.images, s.val.images])
    assert sorted(map(bytes, got)) == sorted(map(bytes, all_train))
    np.testing.assert_array_equal(load("cifar10", tmp_path).val.images, s.val.images)  # the same seed, the same carve


def test_cifar100_archive_reads_its_own_coarse_labels_and_superclass_names(tmp_path):
    files = members("cifar100")
    archive = write_archive(tmp_path / "cifar-100-python.tar.gz", "cifar100", files)
    s = load("cifar100", archive)  # the archive file itself
    assert s.info.num_classes == {"fine": 100, "coarse": 20} and len(s.train) + len(s.val) == N_TRAIN
    assert s.info.coarse_names == tuple(files["meta"]["coarse_label_names"])
    np.testing.assert_array_equal(s.test.coarse, files["test"]["coarse_labels"])
    np.testing.assert_array_equal(s.test.fine, files["test"]["fine_labels"])
    np.testing.assert_array_equal(s.test.images, hwc(files["test"]))
    whale = s.info.fine_names.index("whale")
    assert s.info.coarse_names[s.info.fine_to_coarse[whale]] == "aquatic_mammals"


def test_cifar100_coarse_labels_that_contradict_the_tree_are_refused(tmp_path):
    files = members("cifar100")
    test = files["test"]
    test["coarse_labels"] = [(c + 1) % 20 for c in test["coarse_labels"]]
    archive = write_archive(tmp_path / "cifar-100-python.tar.gz", "cifar100", files)
    with pytest.raises(DatasetError, match=r"member cifar-100-python/test gives \w+ the superclass \S+, not "):
        load("cifar100", archive)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("where", ["folder itself", "its parent", "keras 3 cache", "keras 2 cache"])
def test_extracted_folder_forms(tmp_path, name, where):
    layout = cifar_archive.LAYOUTS[name]
    files = members(name)
    data_dir = tmp_path / "datasets"
    folder = {"folder itself": data_dir, "its parent": data_dir / layout.folder,
              "keras 3 cache": data_dir / layout.keras_dir / layout.folder,
              "keras 2 cache": data_dir / layout.folder}[where]
    write_folder(folder, name, files)
    s = load(name, data_dir)
    np.testing.assert_array_equal(s.test.images, hwc(files[layout.test[0]]))
    assert len(s.train) + len(s.val) == len(layout.train) * N_TRAIN


@pytest.mark.parametrize("archive_name", ["cifar-10-batches-py-target_archive", "cifar-10-batches-py.tar.gz",
                                          "cifar-10-python.tar.gz"])
def test_archive_under_keras_cache_names(tmp_path, archive_name):
    write_archive(tmp_path / "datasets" / archive_name, "cifar10")
    assert len(load("cifar10", tmp_path / "datasets").test) == N_TEST


def test_keras_cache_is_read_without_data_dir(tmp_path):
    # What `keras.datasets.cifar10.load_data()` (Keras 3) leaves under $KERAS_HOME/datasets.
    cache = tmp_path / "keras_home" / "datasets"
    files = members("cifar10")
    write_archive(cache / "cifar-10-batches-py-target_archive", "cifar10", files)
    write_folder(cache / "cifar-10-batches-py-target" / "cifar-10-batches-py", "cifar10", files)
    assert cifar.keras_cache() == str(cache)
    s = load("cifar10", None)
    np.testing.assert_array_equal(s.test.images, hwc(files["test_batch"]))


def test_extracted_folder_is_preferred_to_the_archive_beside_it(tmp_path):
    write_archive(tmp_path / "cifar-10-python.tar.gz", "cifar10")
    files = members("cifar10")
    files["test_batch"] = batch("cifar10", 2, 9)
    write_folder(tmp_path / "cifar-10-batches-py", "cifar10", files)
    assert len(load("cifar10", tmp_path).test) == 2


def test_a_hostile_pickle_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    files = members("cifar10")
    files["data_batch_2"] = py2_pickle({"data": Evil(), "labels": [0]})
    archive = write_archive(tmp_path / "cifar-10-python.tar.gz", "cifar10", files)
    with pytest.raises(DatasetError, match=r"member cifar-10-batches-py/data_batch_2 is not a CIFAR-10 batch "
                                           r"\(UnpicklingError: refused to build (posix|os)\.system\)"):
        load("cifar10", archive)
    assert not marker.exists()


def _cut(path: Path) -> Path:
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2])
    return path


def _without(name: str, member: str) -> dict:
    files = members(name)
    del files[member]
    return files


def _with(name: str, member: str, **changes) -> dict:
    files = members(name)
    files[member] = {**files[member], **changes}
    return files


BROKEN = {  # case -> (how to write it, for --dataset, the error line's pattern after "dataset NAME: PATH")
    "truncated": (lambda p: _cut(write_archive(p, "cifar10")), "cifar10",
                  (r" is truncated or corrupt \(.*\): cannot read it as a gzipped tar; expected the CIFAR-10 python "
                  r"archive \(cifar-10-python.tar.gz\) or its folder cifar-10-batches-py/$")),
    "not gzip": (lambda p: p.write_bytes(b"<html>404 Not Found</html>" * 40), "cifar10",
                 r" is truncated or corrupt \(ReadError: .*\): cannot read it as a gzipped tar; expected the CIFAR-10"),
    "foreign archive": (lambda p: write_archive(p, "cifar100"), "cifar10",
                        (r" is the CIFAR-100 archive, not CIFAR-10's: expected the CIFAR-10 python archive "
                        r"\(cifar-10-python.tar.gz\) or its folder cifar-10-batches-py/, or pass --dataset=cifar100$")),
    "foreign archive, other way": (lambda p: write_archive(p, "cifar10"), "cifar100",
                                   r" is the CIFAR-10 archive, not CIFAR-100's: .* or pass --dataset=cifar10$"),
    "some other tar": (lambda p: p.write_bytes(gzip.compress(_tar({"photos/a.jpg": b"\xff\xd8"}))), "cifar10",
                       (r" lacks cifar-10-batches-py/batches.meta \(7 of 7 members missing\): not the CIFAR-10 python "
                       r"archive \(cifar-10-python.tar.gz\)$")),
    "member missing": (lambda p: write_archive(p, "cifar10", _without("cifar10", "data_batch_3")), "cifar10",
                       r" lacks cifar-10-batches-py/data_batch_3 \(1 of 7 members missing\): truncated, or not the"),
    "garbage member": (lambda p: write_archive(p, "cifar10", {**members("cifar10"), "test_batch": b"\x80\x02garbage"}),
                       "cifar10", r" member cifar-10-batches-py/test_batch is not a CIFAR-10 batch \(.*\): corrupt"),
    "not a dict": (lambda p: write_archive(p, "cifar10", {**members("cifar10"), "test_batch": py2_pickle([1, 2])}),
                   "cifar10", r" member cifar-10-batches-py/test_batch holds a list, not the dict of a CIFAR-10 batch"),
    "wrong pixels": (lambda p: write_archive(p, "cifar10", _with("cifar10", "data_batch_1",
                                                                 data=np.zeros((3, 1024), np.float32))), "cifar10",
                     r" member cifar-10-batches-py/data_batch_1 'data' is float32 \(3, 1024\),"
                     r" expected uint8 N x 3072"),
    "wrong image size": (lambda p: write_archive(p, "cifar10", _with("cifar10", "test_batch",
                                                                     data=np.zeros((4, 1024), np.uint8))), "cifar10",
                         r" member cifar-10-batches-py/test_batch 'data' is uint8 \(4, 1024\),"
                         r" expected uint8 N x 3072"),
    "label out of range": (lambda p: write_archive(p, "cifar10", _with("cifar10", "test_batch", labels=[0, 1, 2, 10])),
                           "cifar10", r" member cifar-10-batches-py/test_batch lacks 4 'labels' in 0-9: corrupt"),
    "too few labels": (lambda p: write_archive(p, "cifar100", _with("cifar100", "train", fine_labels=[1])), "cifar100",
                       r" member cifar-100-python/train lacks 3 'fine_labels' in 0-99: corrupt"),
    "other class names": (lambda p: write_archive(p, "cifar10", _with("cifar10", "batches.meta",
                                                                      label_names=["cat", "dog"])), "cifar10",
                          (r" member cifar-10-batches-py/batches.meta lists label_names 2 starting cat, dog; expected "
                          r"CIFAR-10's 10 \(airplane, automobile, bird, ...\): not the CIFAR-10 archive")),
}


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, raw in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return buf.getvalue()


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_archive_is_one_line_naming_the_file(tmp_path, case):
    write, name, pattern = BROKEN[case]
    path = tmp_path / "cifar-10-python.tar.gz"
    write(path)
    with pytest.raises(DatasetError) as err:
        load(name, path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"dataset {name}: {path}"), message
    assert re.search(pattern, message[len(f"dataset {name}: {path}"):]), message


@pytest.mark.parametrize("name,other", [("cifar10", "cifar100"), ("cifar100", "cifar10")])
def test_a_folder_of_the_other_cifar_is_one_line(tmp_path, name, other):
    layout, foreign = cifar_archive.LAYOUTS[name], cifar_archive.LAYOUTS[other]
    write_folder(tmp_path / foreign.folder, other)
    with pytest.raises(DatasetError, match=rf"^dataset {name}: {tmp_path / foreign.folder} is {foreign.title} data, "
                                           rf"not {layout.title}: expected .* or pass --dataset={other}$"):
        load(name, tmp_path)


def test_incomplete_extracted_folder_names_the_missing_file(tmp_path):
    folder = write_folder(tmp_path / "cifar-10-batches-py", "cifar10", _without("cifar10", "data_batch_4"))
    with pytest.raises(DatasetError, match=rf"^dataset cifar10: {folder / 'data_batch_4'} cannot be read \(.*\): the "
                                           rf"folder {folder} is incomplete; expected the CIFAR-10 python archive"):
        load("cifar10", tmp_path)


def test_folder_without_archives_still_goes_to_tfds(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset cifar10 not found in --data_dir=.*--download is off: pass "
                                           r"--data_dir naming the official archive cifar-10-python.tar.gz"):
        load("cifar10", tmp_path)


def test_train_refuses_a_foreign_archive_in_one_line_and_writes_nothing(tmp_path):
    # train.run in-process (a dataset error through the CLI end to end: tests/test_train.py, the offline download).
    archive = write_archive(tmp_path / "cifar-100-python.tar.gz", "cifar100")
    line = refused_in_process(["--dataset=cifar10", f"--data_dir={archive}", f"--workdir={tmp_path / 'w'}",
                               f"--export_dir={tmp_path / 'e'}", "--epochs=1"])
    assert line == (f"train: error: dataset cifar10: {archive} is the CIFAR-100 archive, not CIFAR-10's: expected "
                    "the CIFAR-10 python archive (cifar-10-python.tar.gz) or its folder cifar-10-batches-py/, or "
                    "pass --dataset=cifar100")
    assert not (tmp_path / "w").exists() and not (tmp_path / "e").exists()


@pytest.mark.parametrize("form", ["archive", "folder"])
def test_a_member_larger_than_any_batch_is_refused_unread(tmp_path, monkeypatch, form):
    monkeypatch.setattr(cifar_archive, "MAX_MEMBER_BYTES", 1000)  # the tiny batches are ~10 kB; real ones 31-155 MB
    if form == "archive":
        path = write_archive(tmp_path / "cifar-10-python.tar.gz", "cifar10")
        pattern = rf"^dataset cifar10: {path} member cifar-10-batches-py/data_batch_1 is \d+ bytes, more than any"
    else:
        path = write_folder(tmp_path / "cifar-10-batches-py", "cifar10")
        pattern = rf"^dataset cifar10: {path / 'data_batch_1'} is \d+ bytes, more than any CIFAR-10 batch"
    with pytest.raises(DatasetError, match=pattern):
        load("cifar10", path)


def test_cifar_configs_name_user_sources_only():
    # A config's header is what a user follows: it names the archive, tfds or a folder tree, never a path that exists
    # only in a development checkout.
    configs = sorted(Path(__file__).resolve().parents[1].glob("**/configs/**/*.flags"))
    assert configs
    assert [str(p) for p in configs if "../shared" in p.read_text()] == []
    for p in configs:
        text = p.read_text()
        if "--dataset=cifar10\n" in text or "--dataset=cifar100\n" in text:
            assert "official" in text or "--flagfile=" in text, p  # own header, or a base's that says it


def test_source_order_archive_named_then_tfds_then_keras_cache(tmp_path):
    import tensorflow_datasets as tfds  # a dependency of the package, imported here for its seconds
    write_archive(tmp_path / "keras_home" / "datasets" / "cifar-10-batches-py-target_archive", "cifar10")
    named = write_archive(tmp_path / "mine" / "cifar-10-python.tar.gz", "cifar10")
    with tfds.testing.mock_data(num_examples=7):  # tfds answers with 7 test images where it is asked
        assert len(load("cifar10", None).test) == N_TEST  # tfds has nothing prepared: Keras's cache
        (tmp_path / "tfds_home" / "cifar10").mkdir(parents=True)
        assert len(load("cifar10", None).test) == 7  # tfds's data is present: tfds stays the source
        assert len(load("cifar10", named).test) == N_TEST  # an archive the user names wins
