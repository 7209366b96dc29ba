"""The host input pipeline (numpy, no TensorFlow) against tf.data: the same splits, decoded pixels, labels,
per-head sample weights and augmentation (bit for bit for the same draws); the pipeline choice and its one-line
refusals; the import graph of the training path without TensorFlow."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, subprocess_env
from PIL import Image

from mtl_keras.config import DataConfig
from mtl_keras.data import datasets, feeds, host, host_augment, host_images
from mtl_keras.errors import ConfigError

WITHOUT_TF = str(REPO / "tests" / "scripts" / "without_tensorflow.py")


def _photo(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A photo-like RGB image: smooth colour gradients plus texture, so 4:2:0 JPEG rounding shows up."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(6 * x + 1) * 90 + 128, np.cos(5 * y) * 90 + 128, (x + y) * 100 + 20], -1)
    return np.clip(base + rng.normal(0, 18, (h, w, 3)), 0, 255).astype(np.uint8)


def _write(folder, name: str, array: np.ndarray, fmt: str, **kw) -> str:
    path = folder / name
    image = Image.fromarray(array)
    if fmt == "GIF":
        image = image.convert("P")
    image.save(path, fmt, **kw)
    return str(path)


def _formats(folder) -> dict[str, str]:
    """Real-format files: 4:2:0 and 4:4:4 JPEGs, a grey JPEG, RGBA PNG, palette GIF, BMP; at 32 px."""
    a = _photo(32, 32)
    rgba = np.concatenate([a, np.full((32, 32, 1), 100, np.uint8)], -1)
    return {"jpeg_420": _write(folder, "a.jpg", a, "JPEG", quality=75),
            "jpeg_444": _write(folder, "b.jpg", _photo(32, 32, 1), "JPEG", quality=90, subsampling=0),
            "jpeg_grey": _write(folder, "c.jpg", a[..., 0], "JPEG", quality=80),
            "png_rgba": _write(folder, "d.png", rgba, "PNG"),
            "gif": _write(folder, "e.gif", a, "GIF"),
            "bmp": _write(folder, "f.bmp", a, "BMP")}


def test_decoded_pixels_equal_tf_data_on_real_format_files(tmp_path):
    from mtl_keras.data import images

    for kind, path in _formats(tmp_path).items():
        ours, theirs = host_images.decode_file(path, 32), images.decode(path, 32).numpy()
        assert ours.shape == theirs.shape == (32, 32, 3) and ours.dtype == np.uint8, kind
        np.testing.assert_array_equal(ours, theirs, err_msg=kind)
    # Larger photos take libjpeg's scaled IDCT (1/8 here: 640 >= 8 x 64), then the same antialiased resize.
    for w, h in ((640, 480), (100, 90)):
        path = _write(tmp_path, f"big{w}.jpg", _photo(w, h, 2), "JPEG", quality=85)
        ours, theirs = host_images.decode_file(path, 64).astype(int), images.decode(path, 64).numpy().astype(int)
        assert np.abs(ours - theirs).max() <= 2 and np.abs(ours - theirs).mean() < 0.5, (w, np.abs(ours - theirs).max())


def _tree(root, per_class: int = 6, partial: int = 3) -> None:
    """ROOT/COARSE/FINE/*.jpg, plus coarse-only images directly in ROOT/COARSE (partial labels)."""
    n = 0
    for coarse, fines in {"animal": ("cat", "dog"), "vehicle": ("car", "ship", "truck")}.items():
        for fine in fines:
            (root / coarse / fine).mkdir(parents=True)
            for i in range(per_class):
                _write(root / coarse / fine, f"{i}.jpg", _photo(32, 32, n), "JPEG", quality=75)
                n += 1
        for i in range(partial):
            _write(root / coarse, f"only{i}.jpg", _photo(32, 32, n), "JPEG", quality=75)
            n += 1


@pytest.mark.parametrize("cache_mb", [2048.0, 0.0])  # decoded into memory, and streamed from the files
def test_folder_splits_labels_weights_and_batches_equal_tf_data(tmp_path, cache_mb):
    from mtl_keras.data import pipeline

    _tree(tmp_path / "root")
    settings = DataConfig(dataset="folder", data_dir=str(tmp_path / "root"), folder_cache_mb=cache_mb,
                          folder_test_fraction=0.2, validation_fraction=0.2)
    tf_splits = datasets.prepare(dataclasses.replace(settings, input_pipeline="tf_data"), seed=3)
    host_splits = datasets.prepare(dataclasses.replace(settings, input_pipeline="host"), seed=3)
    assert tf_splits.info == host_splits.info
    for name in ("train", "val", "test"):
        a, b = getattr(tf_splits, name), getattr(host_splits, name)
        np.testing.assert_array_equal(a.fine, b.fine)
        np.testing.assert_array_equal(a.coarse, b.coarse)
        if cache_mb:
            np.testing.assert_array_equal(a.images, b.images)
        else:
            np.testing.assert_array_equal(a.images.paths, b.images.paths)
            assert b.images.input_pipeline == "host"
    train = host_splits.train
    assert (train.fine < 0).any(), "the tree has coarse-only images"
    for task in ("mtl", "fine"):
        theirs = list(pipeline.pipeline(tf_splits.train, tf_splits.info, task=task, batch_size=5))
        ours = list(host.eval_batches(train, host_splits.info, task=task, batch_size=5))
        assert len(ours) == len(theirs) == -(-len(train) // 5)
        for (x, y, w), (tx, ty, tw) in zip(ours, theirs):
            assert x.dtype == np.float32 and set(y) == set(ty) == set(w) == set(tw)
            np.testing.assert_array_equal(x, tx.numpy())
            for h in y:
                np.testing.assert_array_equal(y[h], ty[h].numpy())
                np.testing.assert_array_equal(w[h], tw[h].numpy())
    x, y, w = next(host.train_batches(train, host_splits.info, task="mtl", batch_size=8, seed=0,
                                      policies=("flip_crop",), mixup_alpha=0.2, cutmix_alpha=1.0))
    assert x.shape == (8, 32, 32, 3) and (w["fine"] == (y["fine"].sum(1) > 0)).all() and (w["coarse"] == 1).all()


def test_augmentation_is_tf_data_bit_for_bit_for_the_same_draws():
    import tensorflow as tf

    from mtl_keras.data import augment

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    labels = np.eye(13, dtype=np.float32)[rng.integers(0, 13, 16)]
    seed = tf.constant([7, 11], tf.int64)
    # The draws inside augment.py, recomputed from the same seeds.
    s = tf.random.experimental.stateless_split(seed, 3)
    flip = (tf.random.stateless_uniform([16], s[0]) < 0.5).numpy()
    oy, ox = (tf.random.stateless_uniform([16], s[i], 0, 9, tf.int32).numpy() for i in (1, 2))
    np.testing.assert_array_equal(host_augment.flip_crop_with(images, flip, oy, ox),
                                  augment.random_flip_crop(tf.constant(images), seed).numpy())
    assert flip.any() and not flip.all()

    s = tf.random.experimental.stateless_split(seed, 2)
    lam, partner = augment._beta([16], 0.4, s[0]).numpy(), augment._partners(16, s[1]).numpy()
    ox_, oy_ = host_augment.mixup_with(images, labels, lam, partner)
    tx, ty = augment.mixup(tf.constant(images), tf.constant(labels), seed, 0.4)
    np.testing.assert_array_equal(ox_, tx.numpy())
    np.testing.assert_array_equal(oy_, ty.numpy())

    s = tf.random.experimental.stateless_split(seed, 4)
    cut = tf.sqrt(1.0 - augment._beta([16], 1.0, s[0])).numpy()
    cy, cx = (tf.random.stateless_uniform([16], s[i], 0.0, 32.0).numpy() for i in (1, 2))
    ox_, oy_ = host_augment.cutmix_with(images, labels, cut, cy, cx, augment._partners(16, s[3]).numpy())
    tx, ty = augment.cutmix(tf.constant(images), tf.constant(labels), seed, 1.0)
    np.testing.assert_array_equal(ox_, tx.numpy())
    np.testing.assert_array_equal(oy_, ty.numpy())


def test_host_augmentation_policies_in_distribution():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4096, 8, 8, 1), dtype=np.uint8)
    labels = np.eye(5, dtype=np.float32)[rng.integers(0, 5, 4096)]
    flipped = host_augment.flip_crop_with(images, np.ones(4096, bool), np.full(4096, 4), np.full(4096, 4))
    np.testing.assert_array_equal(flipped, images[:, :, ::-1])  # centre crop of a flipped image
    out = host_augment.flip_crop(images, np.random.default_rng(2))
    assert 0.3 < (out != images).any((1, 2, 3)).mean() < 1.0
    x, y = host_augment.mixup(images, labels, np.random.default_rng(3), alpha=0.2)
    np.testing.assert_allclose(y.sum(1), 1.0, atol=1e-5)
    lam = y.max(1)
    assert abs(np.median(np.minimum(lam, 1 - lam)) - 0.0) < 0.1 and x.dtype == np.float32  # Beta(0.2): near 0/1
    own = np.eye(512, dtype=np.float32)  # one class per image: its label weight is the share it keeps
    x, y = host_augment.cutmix(images[:512], own, np.random.default_rng(4), alpha=1.0)
    kept, changed = np.diag(y), (x != images[:512]).any(-1).mean((1, 2))
    moved = kept < 1  # a box was pasted from another image
    assert np.abs(changed[moved] - (1 - kept[moved])).max() < 0.05 and 0.4 < kept.mean() < 0.8


def test_pipeline_choice_and_refusals_by_name(monkeypatch):
    assert feeds.resolve("auto") == "tf_data" and feeds.resolve("host") == "host"
    with pytest.raises(ConfigError, match="does not implement randaugment"):
        feeds.check(DataConfig(augment="flip_crop,randaugment", input_pipeline="host"))
    assert feeds.check(DataConfig(augment="flip_crop,randaugment", input_pipeline="tf_data")) == "tf_data"
    monkeypatch.setattr(feeds, "tensorflow_installed", lambda: False)
    assert feeds.resolve("auto") == "host"
    with pytest.raises(ConfigError, match="--input_pipeline=tf_data needs TensorFlow"):
        feeds.resolve("tf_data")
    with pytest.raises(ConfigError, match="--dataset=cifar10 is read through tensorflow-datasets"):
        feeds.check(DataConfig(dataset="cifar10"))
    split = datasets.load("shapes", max_train_examples=64).train
    split = dataclasses.replace(split, fine=np.where(np.arange(len(split)) % 2, split.fine, -1))
    with pytest.raises(ConfigError, match="MixUp / CutMix would mix labelled and unlabelled heads"):
        host_augment.refuse_mixing_partial(split, "flip_crop,cutmix")


# The modules a training run on the host pipeline imports (train's whole path, lazy imports included).
TRAIN_PATH = ["mtl_keras.train", "mtl_keras.data.feeds", "mtl_keras.data.host", "mtl_keras.data.host_images",
              "mtl_keras.data.host_augment", "mtl_keras.data.datasets", "mtl_keras.data.sources.files",
              "mtl_keras.data.sources.shapes", "mtl_keras.data.sources.fashion_mnist", "mtl_keras.evaluate",
              "mtl_keras.reports", "mtl_keras.callbacks", "mtl_keras.locks", "mtl_keras.modeling",
              "mtl_keras.distribute", "mtl_keras.models.tta", "mtl_keras.models.preprocess", "mtl_keras.models.flops"]


def _without_tf(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, WITHOUT_TF, *args], cwd=REPO, capture_output=True, text=True,
                          check=False, timeout=timeout, env=subprocess_env(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu"))


def test_the_training_path_imports_without_tensorflow():
    code = ("import importlib, json, sys\n"
            f"for m in {TRAIN_PATH!r}: importlib.import_module(m)\n"
            "print('JSON:' + json.dumps(sorted(m for m in sys.modules if m.startswith('tensorflow'))))\n")
    proc = _without_tf("-c", code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.split("JSON:")[-1]) == []


def test_without_tensorflow_bad_pipeline_options_are_one_line_and_write_nothing(tmp_path):
    base = ["mtl_keras.train", "--dataset=shapes", "--epochs=1", f"--workdir={tmp_path / 'w'}"]
    for extra, message in ((["--input_pipeline=tf_data"], "--input_pipeline=tf_data needs TensorFlow"),
                           (["--augment=flip_crop,randaugment"],
                            "the host input pipeline does not implement randaugment")):
        proc = _without_tf(*base, *extra)
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert lines[-1].startswith("train: error: ") and message in lines[-1], proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and not (tmp_path / "w").exists()



@pytest.mark.slow
def test_without_tensorflow_train_killed_resumed_then_exported_with_parity(tmp_path):
    import signal

    from conftest import run_module

    _tree(tmp_path / "root", per_class=8)
    work = tmp_path / "w"
    # With XLA, the default: on JAX --nojit_compile runs every op eagerly (this test alone took 81 s so, 33 s with it).
    flags = ["mtl_keras.train", "--dataset=folder", f"--data_dir={tmp_path / 'root'}", "--model=vit",
             "--variant=Pico/4", "--epochs=2", "--batch_size=8", "--augment=flip_crop", "--seed=2",
             f"--workdir={work}", f"--export_dir={tmp_path / 'export'}"]
    killed = _without_tf("--kill_after_epoch=2", *flags, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (work / "checkpoints").is_dir() and not (work / "model.keras").exists()

    resumed = _without_tf(*flags, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from epoch 1" in resumed.stdout, resumed.stdout[-2000:]
    assert f"export skipped: TensorFlow is not installed here; run `python -m mtl_keras.export --workdir={work}`" \
        in resumed.stdout
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["epochs_run"] == 1 and "onnx_parity_ok" not in metrics
    assert metrics["train_labelled"]["fine"] < metrics["train_labelled"]["coarse"]  # the partial labels trained
    for name in ("model.keras", "history.csv", "learning_curves.png", "confusion_fine.png"):
        assert (work / name).is_file(), name
    assert len((work / "history.csv").read_text().strip().splitlines()) == 3  # header + 2 epochs, none twice

    # The same command rerun on JAX where TensorFlow is installed: nothing left to train, and train's export runs
    # in a TensorFlow process, with the three parity checks recorded in metrics.json as on the TensorFlow backend.
    rerun = run_module(*flags, "--noint8", env=subprocess_env(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu"))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Resumed from epoch 2" in rerun.stdout and "Epoch " not in rerun.stdout, rerun.stdout[-2000:]
    assert (tmp_path / "export" / "mtl_keras" / "1" / "model.onnx").is_file()
    assert "keras vs saved_model" in rerun.stdout and rerun.stdout.count("PASS") >= 2, rerun.stdout[-2000:]
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["onnx_parity_ok"] is True and [c["pair"] for c in metrics["parity"]] == [
        "keras vs saved_model", "saved_model vs onnx", "serving_default vs serving_bytes"]
    assert metrics["parity"][0]["num_inputs"] == 32 + metrics["test_examples"]
