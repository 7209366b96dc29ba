"""What a hostile or careless data set must not do to the folder / CSV loaders and predict: count a
file twice through symlinks, slip ids past the hierarchy check, leak a repeated test row into train, read files
outside the CSV's folder, decode a decompression bomb, or end in a traceback. Unit-level: no training."""

import csv
import logging
import os
import sys

import numpy as np
import pytest

from conftest import require
from mtl_keras import flags as mtl_flags
from mtl_keras.data import datasets, headers
from mtl_keras.data.sources import files
from mtl_keras.data.sources.csv_labels import list_csv
from mtl_keras.data.sources.folder_tree import list_folder
from mtl_keras.errors import DatasetError

PIL = require("PIL.Image")


def png(path, width: int = 8, height: int = 8, value: int = 0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.fromarray(np.full((height, width, 3), value, np.uint8)).save(path)
    return str(path)


def tree(root, per_class: int = 2) -> None:
    """ROOT/animal/{cat,dog}, ROOT/vehicle/car with `per_class` small PNGs each."""
    for coarse, fine in (("animal", "cat"), ("animal", "dog"), ("vehicle", "car")):
        for i in range(per_class):
            png(root / coarse / fine / f"{i}.png", value=10 * i)


def one_line(error) -> str:
    assert "\n" not in str(error.value)
    return str(error.value)


# 1. Symlinks: a loop (`cat/up.png -> ..` turned 48 images into 1,008 with the same files in train and test) or a
# second link to a folder is an error; the same file twice counts once; links to data elsewhere still work.
@pytest.mark.parametrize("link,target,message", [
    ("animal/cat/up.png", "..", r"animal/cat/up\.png is the folder \S+/animal again \(a symlink loop"),
    ("animal/cat/top", "../..", r"animal/cat/top is the folder \S+/root again"),
    ("animal/cat/out", "../../..", r"animal/cat/out: symlink loop, it leads to \S+, a folder above the data"),
    ("animal/cat/kitty", "../dog", r"animal/dog is the folder \S+animal/cat/kitty again"),
    ("animal/cat/x.png", "../dog/0.png", r"dog/0\.png is the file \S+cat/x\.png again \(a link\) with other labels"),
])
def test_symlink_loops_and_repeats_are_one_line(tmp_path, link, target, message):
    root = tmp_path / "root"
    tree(root)
    (root / link).symlink_to(target)
    with pytest.raises(DatasetError, match=message) as err:
        list_folder(str(root))
    one_line(err)


def test_a_file_linked_twice_counts_once_and_linked_data_elsewhere_loads(tmp_path, caplog):
    data = tmp_path / "elsewhere"
    tree(data)
    (tmp_path / "root").symlink_to(data)  # data/cifar10 -> /work/data/c10
    png(tmp_path / "cars" / "far.png")
    (data / "vehicle" / "truck").symlink_to(tmp_path / "cars")  # a class folder elsewhere
    (data / "animal" / "cat" / "again.png").symlink_to(data / "animal" / "cat" / "0.png")
    with caplog.at_level(logging.WARNING):
        records, _ = list_folder(str(tmp_path / "root"))
    assert len(records) == 7 and sum(r[1] == "truck" for r in records) == 1
    assert "again.png is the same file (a link)" in caplog.text


def test_non_utf8_class_folder_is_one_line(tmp_path):
    root = tmp_path / "root"
    tree(root)
    folder = os.fsencode(root / "animal") + b"/caf\xe9"
    os.makedirs(folder)
    (root / "animal" / "cat" / "0.png").rename(os.fsdecode(folder + b"/0.png"))  # was a TensorFlow traceback
    with pytest.raises(DatasetError, match=r"animal/caf\\xe9: the name is not UTF-8 text; rename it") as err:
        list_folder(str(root))
    one_line(err)


# 2. Ids: '01' and '1' are one id before the hierarchy check; other numbers are refused naming the line.
def write_csv(tmp_path, rows: list[str], header: str = "path,fine,coarse", encoding: str = "utf-8") -> str:
    path = tmp_path / "labels.csv"
    path.write_bytes("\n".join([header, *rows, ""]).encode(encoding))
    return str(path)


@pytest.mark.parametrize("rows,message", [
    (["a.png,01,animal", "b.png,1,vehicle"],
     r"labels\.csv: fine class '1' maps to two coarse classes: 'animal' \(line 2\) and 'vehicle' \(line 3\)$"),
    (["a.png,0,0", "b.png,-1,0"], r"labels\.csv:3: fine id '-1' is not a whole number"),
    (["a.png,0,0", "b.png,1.5,0"], r"labels\.csv:3: fine id '1.5' is not a whole number"),
    (["a.png,0,0", "b.png,1,2147483648"], r"labels\.csv:3: coarse id 2147483648 is above 2147483647"),
])
def test_csv_ids_are_normalised_before_every_check(tmp_path, rows, message):
    with pytest.raises(DatasetError, match=message) as err:
        list_csv(write_csv(tmp_path, rows))
    one_line(err)


def test_ids_far_above_the_rows_and_two_spellings_are_one_line():
    with pytest.raises(DatasetError, match=r"fine ids 1, 2, 3, 4, 5 have no rows"):  # no set(range(2**31))
        files._class_ids(["0", "2147483647"], "labels.csv", "fine")
    with pytest.raises(DatasetError, match=r"root: fine ids '01' and '1' are the same id 1"):  # folder names
        files._class_ids(["01", "1", "0"], "root", "fine")


# 3. A repeated image: once when its row is the same, an error naming both lines when it is not.
def test_repeated_csv_rows_count_once_and_conflicting_ones_are_refused(tmp_path, caplog):
    rows = ["a.png,cat,animal,train", "b.png,dog,animal,train", "./a.png,cat,animal,train"]
    with caplog.at_level(logging.WARNING):
        records, _ = list_csv(write_csv(tmp_path, rows, "path,fine,coarse,split"))
    assert [os.path.basename(r[0]) for r in records] == ["a.png", "b.png"]
    assert "1 rows repeat an earlier row's image and labels (line 4 repeats line 2)" in caplog.text
    leak = ["a.png,cat,animal,train", "b.png,dog,animal,train", "a.png,cat,animal,test"]
    with pytest.raises(DatasetError, match=r"labels\.csv:4: 'a\.png' is the image of line 2 again with other labels "
                                           r"or split \(cat,animal,train there, cat,animal,test here\)") as err:
        list_csv(write_csv(tmp_path, leak, "path,fine,coarse,split"))
    one_line(err)


# 4. Confinement: a path leaving the CSV's folder (absolute, ~, ../, a symlink) only with --csv_allow_outside_paths.
@pytest.mark.parametrize("cell,message", [
    ("/etc/hostname.png", r"labels\.csv:2: image path '/etc/hostname\.png' is absolute; paths are relative to"),
    ("~/x.png", r"labels\.csv:2: image path '~/x\.png' is under ~"),
    ("../outside/x.png", r"labels\.csv:2: image path '\.\./outside/x\.png' leads outside \S+/data \(to \S+/outside"),
    ("img/link.png", r"labels\.csv:2: image path 'img/link\.png' leads outside"),
])
def test_csv_paths_stay_in_the_csv_folder_unless_allowed(tmp_path, cell, message):
    outside = png(tmp_path / "outside" / "x.png")
    (tmp_path / "data" / "img").mkdir(parents=True)
    (tmp_path / "data" / "img" / "link.png").symlink_to(outside)
    labels = write_csv(tmp_path / "data", [f"{cell},cat,animal"])
    with pytest.raises(DatasetError, match=message + r".*--csv_allow_outside_paths$") as err:
        list_csv(labels)
    one_line(err)
    records, _ = list_csv(labels, allow_outside=True)
    assert records[0][0].endswith(cell.removeprefix("~"))


def test_csv_allow_outside_paths_flag_reaches_the_loader(tmp_path):
    png(tmp_path / "outside" / "x.png")
    png(tmp_path / "data" / "y.png")
    labels = write_csv(tmp_path / "data", ["../outside/x.png,cat,animal", "y.png,dog,animal"])
    settings = mtl_flags.config_from_args(["--csv_allow_outside_paths"]).data
    assert settings.csv_allow_outside_paths and not mtl_flags.config_from_args([]).data.csv_allow_outside_paths
    s = datasets.load("csv", data_dir=labels, csv_allow_outside_paths=settings.csv_allow_outside_paths,
                      validation_fraction=0, folder_test_fraction=0)
    assert len(s.train) == 2


# 5. Decompression bombs: the size comes from the header; larger files are never decoded.
def test_headers_give_the_decoded_size_of_every_format(tmp_path):
    image = PIL.fromarray(np.zeros((30, 50, 3), np.uint8))
    for name, kwargs in [("a.png", {}), ("a.bmp", {}), ("a.gif", {}), ("a.jpg", {"icc_profile": b"x" * 70000}),
                         ("p.jpg", {"progressive": True})]:
        image.save(tmp_path / name, **kwargs)
        assert headers.image_pixels(str(tmp_path / name)) == (50, 30, 1), name
    frames = [PIL.fromarray(np.full((20, 10, 3), 40 * i, np.uint8)) for i in range(4)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert headers.image_pixels(str(tmp_path / "anim.gif")) == (10, 20, 4)  # TensorFlow decodes every frame
    bomb = tmp_path / "bomb.png"  # a PNG header claiming 100000 x 100000, nothing after it
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (100000).to_bytes(4, "big") * 2 + b"\x08\x02\0\0\0")
    assert headers.too_large(str(bomb), 40_000_000).startswith("100000 x 100000 = 10,000,000,000 pixels, above")
    assert headers.too_large(str(tmp_path / "anim.gif"), 800) is None and headers.image_pixels(__file__) is None


def test_folder_loader_skips_images_above_the_pixel_limit(tmp_path, caplog):
    tree(tmp_path, per_class=3)
    big = png(tmp_path / "animal" / "cat" / "big.png", 64, 64)
    with caplog.at_level(logging.WARNING):
        s = datasets.load("folder", data_dir=str(tmp_path), max_image_pixels=32 * 32, validation_fraction=0,
                          folder_test_fraction=0)
    assert s.info.skipped_files == (big,) and len(s.train) == 9
    assert f"skipping {big}: 64 x 64 = 4,096 pixels, above --max_image_pixels=1024" in caplog.text
    assert mtl_flags.config_from_args(["--max_image_pixels=1024"]).data.max_image_pixels == 1024


def test_predict_refuses_an_image_above_the_limit_and_classifies_the_rest(tmp_path, monkeypatch, capsys):
    from mtl_keras.serving import predict, runtime

    class Classifier:  # what runtime.load returns, without a model
        shape, names, decoding = (8, 8, 3), {"fine": ["a", "b"]}, {}

        def __call__(self, images, batch_size=256):
            return {"fine": np.tile([[0.25, 0.75]], (len(images), 1))}

    monkeypatch.setattr(runtime, "load", lambda path: Classifier())
    big, small = png(tmp_path / "big.png", 64, 64), png(tmp_path / "small.png")
    monkeypatch.setattr(sys, "argv", ["predict", "--model=m", "--max_image_pixels=1024", big, small])
    assert predict.main() == 1
    out, err = capsys.readouterr()
    assert err.strip() == f"predict: error: {big}: 64 x 64 = 4,096 pixels, above --max_image_pixels=1024 (a guard " \
                          f"against decompression bombs; raise it to read this image)"
    assert out.strip() == f"{small}: fine=b (75.0%)"


# 6. Odd CSVs: one line naming the file and line.
def test_odd_csv_files_are_one_line(tmp_path):
    rows = ["a.png,cat,animal", "b.png,caf\u00e9,animal"]
    with pytest.raises(DatasetError, match=r"labels\.csv:3: not UTF-8 text \(byte 0xe9\); save the file as UTF-8"):
        list_csv(write_csv(tmp_path, rows, encoding="latin-1"))
    long = "x" * (csv.field_size_limit() + 1)
    with pytest.raises(DatasetError, match=r"labels\.csv:3: not a CSV row \(field larger than field limit") as err:
        list_csv(write_csv(tmp_path, ["a.png,cat,animal", f"{long}.png,cat,animal"]))
    one_line(err)
