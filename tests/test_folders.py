"""Folder-tree and CSV datasets on trees written here with real encoders: labels, splits, formats, bad
inputs, streaming, and one short training run on Fashion-MNIST images whose export predicts class names."""

import json
import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import predict_in_process, require, run_module
from mtl_keras.data import datasets, pipeline, types
from mtl_keras.data import host_images
from mtl_keras.data import images as images_lib
from mtl_keras.data.sources import fashion_mnist
from mtl_keras.errors import DatasetError

PIL = require("PIL.Image")  # declared in setup.cfg (and matplotlib depends on it): a skip under CI is a failure
TREE = {"animal": ("cat", "dog"), "vehicle": ("car",)}  # sorted fine: car, cat, dog; coarse: animal, vehicle


def tagged(fine: int, serial: int, size: int = 32) -> np.ndarray:
    """A PNG-exact image saying who it is: colour = fine class, first two pixels = serial number."""
    image = np.full((size, size, 3), 40 * fine + 20, np.uint8)
    image[0, 0], image[0, 1] = serial % 256, serial // 256
    return image


def identify(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fine class, serial) of `tagged` images."""
    return (images[:, 5, 5, 0].astype(int) - 20) // 40, images[:, 0, 0, 0] + 256 * images[:, 0, 1, 0].astype(int)


def make_tree(root, per_class: int = 10, tree=TREE, split: str | None = None, start: int = 0):
    """ROOT[/split]/COARSE/FINE/NNN.png of `tagged` images; returns the next free serial."""
    fine_ids = {f: i for i, f in enumerate(sorted(f for fs in tree.values() for f in fs))}
    serial = start
    for coarse, fines in tree.items():
        for fine in fines:
            folder = root / (split or "") / coarse / fine
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(per_class):
                (folder / f"{serial:04d}.png").write_bytes(tf.io.encode_png(tagged(fine_ids[fine], serial)).numpy())
                serial += 1
    return serial


def load(path, **kwargs) -> types.Splits:
    names = {"image_size": "folder_image_size", "cache_mb": "folder_cache_mb", "test_fraction": "folder_test_fraction"}
    return datasets.load("csv" if str(path).endswith(".csv") else "folder", data_dir=str(path),
                         **{names.get(k, k): v for k, v in kwargs.items()})


def test_tree_gives_sorted_names_map_and_aligned_labels(tmp_path):
    make_tree(tmp_path, per_class=10)
    s = load(tmp_path)
    assert s.info.fine_names == ("car", "cat", "dog") and s.info.coarse_names == ("animal", "vehicle")
    assert s.info.fine_to_coarse == (1, 0, 0) and s.info.skipped_files == ()
    assert len(s.train) + len(s.val) + len(s.test) == 30
    serials = []
    for split in (s.train, s.val, s.test):
        assert split.images.shape[1:] == (32, 32, 3) and split.images.dtype == np.uint8
        fine, serial = identify(split.images)
        np.testing.assert_array_equal(fine, split.fine)  # labels travel with their pixels
        np.testing.assert_array_equal(np.asarray(s.info.fine_to_coarse)[split.fine], split.coarse)
        serials += serial.tolist()
    assert sorted(serials) == list(range(30))  # splits are disjoint and complete


def test_carved_splits_are_stratified_and_fixed(tmp_path):
    make_tree(tmp_path, per_class=20)
    s = load(tmp_path, validation_fraction=0.2, test_fraction=0.1)
    assert np.bincount(s.val.fine).tolist() == [4, 4, 4] and np.bincount(s.test.fine).tolist() == [2, 2, 2]
    again = load(tmp_path, validation_fraction=0.2, test_fraction=0.1, cache_mb=0)
    np.testing.assert_array_equal(identify(np.asarray(again.test.images))[1], identify(s.test.images)[1])
    capped = load(tmp_path, max_train_examples=9)
    assert len(capped.train) == 9 and len(set(capped.train.fine.tolist())) > 1  # a random subset, not one class


def test_explicit_split_folders(tmp_path):
    n = make_tree(tmp_path, per_class=6, split="train")
    make_tree(tmp_path, per_class=2, split="test", start=n)
    s = load(tmp_path, validation_fraction=0.5)
    assert len(s.test) == 6 and identify(s.test.images)[1].min() >= n  # exactly the ROOT/test files
    assert len(s.val) == 9 and len(s.train) == 9  # val carved from train


def test_formats_modes_and_sizes_arrive_as_rgb(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    folder = tmp_path / "a" / "x"
    folder.mkdir(parents=True)
    image = PIL.fromarray(rgb)
    image.convert("L").save(folder / "grey.png")
    image.convert("RGBA").save(folder / "rgba.png")
    image.convert("P").save(folder / "palette.png")
    smooth = np.stack([*np.meshgrid(np.linspace(0, 255, 24), np.linspace(255, 0, 24)), np.full((24, 24), 90.0)], -1)
    PIL.fromarray(smooth.astype(np.uint8)).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    image.save(folder / "rgb.bmp")
    image.save(folder / "rgb.gif")
    (folder / "big.JPEG").write_bytes(tf.io.encode_jpeg(np.repeat(np.repeat(rgb, 5, 0), 5, 1)).numpy())
    (folder / "grey.jpg").write_bytes(tf.io.encode_jpeg(rgb[..., :1]).numpy())
    make_tree(tmp_path, per_class=2, tree={"b": ("y",)})
    s = load(tmp_path, image_size=24, validation_fraction=0, test_fraction=0)
    assert s.info.skipped_files == () and s.train.images.shape == (10, 24, 24, 3)
    cmyk = images_lib.decode(str(folder / "cmyk.jpg"), 24).numpy()
    reference = np.asarray(PIL.open(folder / "cmyk.jpg").convert("RGB"), np.float32)
    assert np.abs(cmyk - reference).mean() < 3  # the CMYK JPEG decodes to the right colours, not inverted


def test_large_jpeg_decoded_at_reduced_scale_matches_full_decode(tmp_path):
    """Big JPEGs bound for small inputs decode at 1/2-1/8 scale (libjpeg DCT scaling): same picture."""
    yy, xx = np.mgrid[0:640, 0:480] / 640.0
    photo = np.stack([255 * xx, 255 * yy, 128 + 100 * np.sin(12 * xx)], -1).astype(np.uint8)
    path = tmp_path / "photo.jpg"
    path.write_bytes(tf.io.encode_jpeg(photo, quality=95).numpy())
    full = tf.image.resize(tf.io.decode_jpeg(path.read_bytes()), (32, 32), antialias=True).numpy()
    assert np.abs(images_lib.decode(str(path), 32).numpy() - full).mean() < 3


def test_undecodable_files_are_skipped_named_and_counted(tmp_path, caplog):
    make_tree(tmp_path, per_class=5)
    bad = {tmp_path / "animal" / "cat" / "text.jpg": b"not an image",
           tmp_path / "animal" / "dog" / "empty.png": b"",
           tmp_path / "vehicle" / "car" / "cut.png": tf.io.encode_png(tagged(0, 99)).numpy()[:60],
           tmp_path / "vehicle" / "car" / "cut.jpg": tf.io.encode_jpeg(tagged(0, 98, 256)).numpy()[:400]}
    for path, raw in bad.items():
        path.write_bytes(raw)
    for cache_mb in (2048, 0):
        with caplog.at_level(logging.WARNING):
            s = load(tmp_path, cache_mb=cache_mb)
        assert sorted(s.info.skipped_files) == sorted(map(str, bad))
        assert len(s.train) + len(s.val) + len(s.test) == 15
        for path in bad:
            assert f"skipping {path}: cannot decode it" in caplog.text
        caplog.clear()


def test_streamed_split_matches_cached_and_survives_a_file_breaking(tmp_path):
    make_tree(tmp_path, per_class=8)
    cached, streamed = load(tmp_path), load(tmp_path, cache_mb=0)
    assert isinstance(streamed.train.images, host_images.FileImages) and isinstance(cached.train.images, np.ndarray)
    np.testing.assert_array_equal(np.asarray(streamed.test.images), cached.test.images)
    assert streamed.train.images[2:5].shape == (3, 32, 32, 3) and streamed.train.images[0].shape == (32, 32, 3)
    x, labels = next(iter(pipeline.pipeline(streamed.test, streamed.info, batch_size=64)))
    np.testing.assert_array_equal(x.numpy(), cached.test.images.astype(np.float32))
    np.testing.assert_array_equal(labels["fine"].numpy().argmax(-1), cached.test.fine)
    # A file that breaks after loading is dropped by the streaming pipeline instead of ending the epoch.
    open(streamed.train.images.paths[0], "wb").close()
    ds = pipeline.pipeline(streamed.train, streamed.info, training=True, batch_size=4, augment="flip_crop,mixup")
    for images, labels in ds.take(3 * len(streamed.train) // 4):
        assert images.shape == (4, 32, 32, 3)
        to_coarse = np.eye(2)[list(streamed.info.fine_to_coarse)]
        np.testing.assert_allclose(labels["fine"].numpy() @ to_coarse, labels["coarse"].numpy(), atol=1e-5)


@pytest.mark.parametrize("make,message", [
    (lambda r: None, r"--data_dir=.*missing: no such folder; expected ROOT/COARSE/FINE/\*\.jpg"),
    (lambda r: r.mkdir(), r"missing has no class folders"),
    (lambda r: (r / "a" / "x").mkdir(parents=True), r"missing/a/x: empty class, no \.jpg.* files in it$"),
    (lambda r: (r / "a").mkdir(parents=True), r"missing/a: empty coarse class"),
    (lambda r: (make_tree(r), (r / "animal" / "cat" / "notes.txt").write_text("x")),
     r"missing/animal/cat/notes\.txt: not a \.jpg, \.jpeg, \.png, \.bmp, \.gif file"),
    (lambda r: (make_tree(r), make_tree(r, tree={"pet": ("cat",)})),
     r"fine class 'cat' is under two coarse classes: \S+missing/animal/cat and \S+missing/pet/cat"),
    (lambda r: (make_tree(r, split="train"), make_tree(r, tree={"a": ("x",)})),
     r"mixes split folders \(train\) with class folders \(a\)"),
    (lambda r: (make_tree(r, split="train"), make_tree(r, tree={"a": ("new",)}, split="test")),
     r"fine class 'new' has val/test images but none to train on"),
    (lambda r: (make_tree(r), (r / "animal" / "x.txt").write_text("")), r"animal/x\.txt: not a \.jpg"),
])
def test_bad_trees_fail_with_one_line(tmp_path, make, message):
    root = tmp_path / "missing"
    make(root)
    with pytest.raises(DatasetError, match=message) as err:
        load(root)
    assert "\n" not in str(err.value)


def write_csv(tmp_path, rows: list[str], header: str = "path,fine,coarse") -> str:
    path = tmp_path / "labels.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


def tree_rows(tmp_path, ids: bool = False) -> list[str]:
    rows = []
    for coarse, fines in TREE.items():
        for fine in fines:
            for f in sorted((tmp_path / "img" / coarse / fine).glob("*.png")):
                c, k = (str(sorted(TREE).index(coarse)), str(sorted(["car", "cat", "dog"]).index(fine))) if ids \
                    else (coarse, fine)
                rows.append(f"img/{coarse}/{fine}/{f.name},{k},{c}")
    return rows


@pytest.mark.parametrize("ids", [False, True])
def test_csv_with_names_or_ids(tmp_path, ids):
    make_tree(tmp_path / "img", per_class=4)
    path = write_csv(tmp_path, tree_rows(tmp_path, ids))
    s = datasets.load("csv", data_dir=path, validation_fraction=0.25, folder_test_fraction=0.25)
    assert s.info.fine_names == (("0", "1", "2") if ids else ("car", "cat", "dog"))
    assert s.info.fine_to_coarse == (1, 0, 0) and len(s.train) == 6 and len(s.test) == 3
    np.testing.assert_array_equal(identify(s.train.images)[0], s.train.fine)


def test_csv_split_column(tmp_path):
    make_tree(tmp_path / "img", per_class=4)
    rows = [r + ("," + ("test" if i % 4 == 0 else "train")) for i, r in enumerate(tree_rows(tmp_path))]
    s = load(write_csv(tmp_path, rows, "path,fine,coarse,split"), validation_fraction=0.25)
    assert len(s.test) == 3 and len(s.val) == 3 and len(s.train) == 6


@pytest.mark.parametrize("rows,header,message", [
    (["a.png,cat,animal", "b.png,dog,animal", "c.png,cat,pet", "d.png,cat,animal"], "path,fine,coarse",
     r"labels\.csv: fine class 'cat' maps to two coarse classes: 'animal' \(lines 2, 5\) and 'pet' \(line 4\)$"),
    (["a.png,cat"], "path,fine,coarse", r"labels\.csv:2: 2 fields, the header has 3$"),
    (["a.png,,"], "path,fine,coarse", r"labels\.csv:2: empty fine and coarse; a row needs at least one label$"),
    (["a.png,cat,", "b.png,dog,animal"], "path,fine,coarse",
     r"labels\.csv: fine class 'cat' has no row with a coarse class, so its superclass is unknown"),
    (["a.png,cat,animal,dev"], "path,fine,coarse,split", r"labels\.csv:2: split 'dev' is not one of train, val"),
    (["a.png,cat"], "path,label", r"labels\.csv: header lacks column fine, coarse"),
    (["a.tif,cat,animal"], "path,fine,coarse", r"a\.tif: not a \.jpg"),
    (["a.png,0,0", "b.png,2,0"], "path,fine,coarse", r"labels\.csv: fine ids 1 have no rows"),
    ([], "path,fine,coarse", r"labels\.csv has no rows below its header"),
    (["nowhere.png,cat,animal"], "path,fine,coarse", r"none of its 1 image files could be decoded.*no such file"),
])
def test_bad_csv_fails_with_one_line(tmp_path, rows, header, message):
    with pytest.raises(DatasetError, match=message):
        load(write_csv(tmp_path, rows, header))


def test_missing_inputs_name_the_flag(tmp_path):
    with pytest.raises(DatasetError, match=r"--data_dir=\S+nope\.csv: no such CSV file"):
        datasets.load("csv", data_dir=str(tmp_path / "nope.csv"))
    with pytest.raises(DatasetError, match=r"^--dataset=folder needs --data_dir=ROOT"):
        datasets.load("folder")


@pytest.mark.slow
def test_train_on_fashion_mnist_folder_and_predict_names(tmp_path, capsys):
    """The same command as for the built-in data, only --dataset and --data_dir differ."""
    if not os.path.isfile(os.path.join(fashion_mnist.DEFAULT_DIR, fashion_mnist.FILES["test"][0])):
        if os.environ.get("CI"):
            pytest.fail("Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    images, labels = fashion_mnist.load_split(fashion_mnist.DEFAULT_DIR, "test")
    root = tmp_path / "tree"
    for k in range(10):
        fine = fashion_mnist.FINE_NAMES[k].replace("/", "-")  # a file name cannot hold "/"
        folder = root / fashion_mnist.COARSE_NAMES[fashion_mnist.FINE_TO_COARSE[k]] / fine
        folder.mkdir(parents=True)
        for i in np.flatnonzero(labels == k)[:150]:
            (folder / f"{i}.png").write_bytes(tf.io.encode_png(images[i]).numpy())
    (root / "bags" / "bag" / "broken.png").write_bytes(b"\x89PNG broken")
    work, export = tmp_path / "work", tmp_path / "export"
    proc = run_module("mtl_keras.train", "--dataset=folder", f"--data_dir={root}", "--variant=Mu/4", "--epochs=6",
                      "--batch_size=64", "--learning_rate=2e-3", "--nojit_compile", f"--workdir={work}",
                      f"--export_dir={export}", "--model_name=fm", "--noint8", "--nocheck")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "skipped 1 image files that could not be decoded" in proc.stdout and "broken.png" in proc.stderr
    metrics = json.loads((work / "metrics.json").read_text())
    # Chance 10 % / 40 %. Measured 2026-11-25 (BUILD_NOTES.md, "Measured figures"): 57.9 % fine / 88.2 % coarse
    # (about 63 / 90 when this test was written); the bounds sit 7.9 and 8.2 points below the latest run.
    assert metrics["fine_accuracy"] > 0.5 and metrics["coarse_accuracy"] > 0.8, metrics
    assert metrics["skipped_files"] == 1 and metrics["accuracy_per_class"]["fine"]["sandal"]["examples"] > 0
    for png in ("learning_curves.png", "confusion_fine.png", "confusion_coarse.png"):
        assert (work / png).read_bytes()[:4] == b"\x89PNG"
    assert list((work / "tensorboard" / "train").glob("events.out.tfevents.*"))
    shoes = sorted((root / "footwear").glob("*/*.png"))[::50][:5]
    status, out, err = predict_in_process([f"--model={export / 'fm' / '1'}", "--json", *shoes], capsys)
    assert status == 0, err[-2000:]
    results = json.loads(out)
    fine_names = {p.name for p in root.glob("*/*")}
    assert all(r["fine"][0]["class"] in fine_names for r in results)  # names from the tree, not ids
    assert [r["coarse"][0]["class"] for r in results].count("footwear") >= 3
