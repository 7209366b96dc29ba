import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mtl_keras.data import datasets, pipeline
from mtl_keras.data.images import decode_files, fit_images
from mtl_keras.data.sources import cifar, shapes
from mtl_keras.errors import DatasetError


def test_splits_are_disjoint_and_seeded(shapes_splits):
    s = shapes_splits
    assert len(s.train) + len(s.val) == shapes.TRAIN_SIZE and len(s.test) == shapes.TEST_SIZE
    assert len(s.val) == round(0.15 * shapes.TRAIN_SIZE)
    # No image in two splits (shapes draws distinct images; a split that reused rows would share them).
    rows = [{bytes(im) for im in np.asarray(split.images)} for split in (s.train, s.val, s.test)]
    assert sum(map(len, rows)) == len(s.train) + len(s.val) + len(s.test)
    assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])
    again = datasets.load("shapes", seed=0)
    np.testing.assert_array_equal(again.val.fine, s.val.fine)
    other = datasets.load("shapes", seed=1)
    assert not np.array_equal(other.val.images, s.val.images)


def test_max_train_examples_caps_training_only():
    s = datasets.load("shapes", max_train_examples=100, validation_fraction=0.1)
    assert len(s.train) == 100 and len(s.val) == 1200 and len(s.test) == shapes.TEST_SIZE


@pytest.mark.parametrize("task,keys", [("mtl", {"fine", "coarse"}), ("fine", {"fine"}), ("coarse", {"coarse"})])
def test_pipeline_structure_per_task(shapes_splits, task, keys):
    ds = pipeline.pipeline(shapes_splits.test, shapes_splits.info, task=task, batch_size=16)
    images, labels = next(iter(ds))
    assert images.shape == (16, 32, 32, 3) and images.dtype == tf.float32
    assert set(labels) == keys
    sizes = {"fine": 10, "coarse": 3}
    for k in keys:
        assert labels[k].shape == (16, sizes[k]) and labels[k].dtype == tf.float32


def test_every_pipeline_runs_without_the_autotuning_thread(shapes_splits, tmp_path, monkeypatch):
    # With tf.data's autotuning thread, deleting the iterator after a fit of over a minute sometimes waited, idle,
    # up to a minute (benchmarks/iterator_teardown.py); training, evaluation and the folder decode pass go without.
    for training in (True, False):
        ds = pipeline.pipeline(shapes_splits.test, shapes_splits.info, batch_size=16, training=training,
                               augment="flip_crop")
        assert ds.options().autotune.enabled is False
    iterated = []
    real = tf.data.Dataset.as_numpy_iterator
    monkeypatch.setattr(tf.data.Dataset, "as_numpy_iterator",
                        lambda self: iterated.append(self.options().autotune.enabled) or real(self))
    path = tmp_path / "one.png"
    path.write_bytes(tf.io.encode_png(np.full((8, 8, 3), 200, np.uint8)).numpy())
    pixels, ok = decode_files([str(path)], 4)
    assert iterated == [False] and ok.tolist() == [True] and pixels.shape == (1, 4, 4, 3)


def test_training_batches_do_not_depend_on_how_often_the_pipeline_is_iterated(shapes_splits):
    """Keras iterates a training dataset once to build the model, then again to fit; a one-process and a
    multi-process run did so differently and trained on different batches. The order is a function of
    (seed, epoch) only: every iterator starts at the same first epoch, and each epoch has its own order."""
    split = datasets.Split(shapes_splits.train.images[:40], shapes_splits.train.fine[:40],
                           shapes_splits.train.coarse[:40])
    ds = pipeline.pipeline(split, shapes_splits.info, training=True, batch_size=8, seed=3)

    def first(n):
        return np.concatenate([y["fine"].numpy().argmax(-1) for _, y in ds.take(n)])

    peek = first(1)
    run = first(10)  # two passes of 40
    np.testing.assert_array_equal(peek, run[:8])
    np.testing.assert_array_equal(run, first(10))
    assert sorted(run[:40]) == sorted(split.fine) and list(run[:40]) != list(run[40:])
    other = pipeline.pipeline(split, shapes_splits.info, training=True, batch_size=8, seed=4)
    assert list(np.concatenate([y["fine"].numpy().argmax(-1) for _, y in other.take(5)])) != list(run[:40])


@pytest.mark.parametrize("shard", [(0, 1), (1, 2)])
def test_a_fit_from_step_s_gets_the_batches_and_augmentation_the_whole_stream_has_there(shapes_splits, shard):
    """A resumed run (or the full-size phase of a progressive one) starts a new fit: its batches begin at
    epoch * steps of the run's stream, so it trains on what the uninterrupted run would have. 36 images in
    batches of 8: the stream's batches straddle passes, and step 7 starts inside the second pass."""
    split = datasets.Split(shapes_splits.train.images[:36], shapes_splits.train.fine[:36],
                           shapes_splits.train.coarse[:36])

    def batches(start_step, n):
        ds = pipeline.pipeline(split, shapes_splits.info, training=True, batch_size=8, seed=3, augment="flip_crop",
                               shard=shard, start_step=start_step)
        return [(x.numpy(), y["fine"].numpy()) for x, y in ds.take(n)]

    whole, resumed = batches(0, 12), batches(7, 5)
    for (x, y), (rx, ry) in zip(whole[7:], resumed, strict=True):
        np.testing.assert_array_equal(rx, x)
        np.testing.assert_array_equal(ry, y)
    assert not np.array_equal(resumed[0][0], whole[0][0])


def test_evaluation_slices_of_two_processes_are_equal_and_drop_the_last_partial_batch(shapes_splits):
    # Processes of a group step together, so each takes an equal slice of every whole global batch: 20 images in
    # batches of 8 give 2 global batches (16 images) and each process 2 slices of 4; the 4 left over are skipped.
    split = datasets.Split(shapes_splits.val.images[:20], shapes_splits.val.fine[:20], shapes_splits.val.coarse[:20])

    def images(shard):
        ds = pipeline.pipeline(split, shapes_splits.info, batch_size=8, shard=shard)
        return [x.numpy() for x, _ in ds]

    whole, first, second = images((0, 1)), images((0, 2)), images((1, 2))
    assert [len(b) for b in whole] == [8, 8, 4] and [len(b) for b in first] == [len(b) for b in second] == [4, 4]
    for k in range(2):
        np.testing.assert_array_equal(np.concatenate([first[k], second[k]]), whole[k])


def test_host_training_batches_from_step_s_are_the_whole_streams(shapes_splits):
    from mtl_keras.data import host

    def batches(start_step, n):
        stream = host.train_batches(shapes_splits.train, shapes_splits.info, task="mtl", batch_size=64, seed=3,
                                    policies=("flip_crop",), mixup_alpha=0.2, cutmix_alpha=1.0,
                                    start_step=start_step)
        return [next(stream) for _ in range(n)]

    steps = len(shapes_splits.train) // 64
    whole, resumed = batches(0, steps + 3), batches(steps + 1, 2)
    for (x, y), (rx, ry) in zip(whole[steps + 1:], resumed, strict=True):
        np.testing.assert_array_equal(rx, x)
        np.testing.assert_array_equal(ry["fine"], y["fine"])


def test_pipeline_labels_follow_the_hierarchy(shapes_splits):
    info = shapes_splits.info
    ds = pipeline.pipeline(shapes_splits.train, info, training=True, augment="flip_crop", batch_size=64)
    for images, labels in ds.take(3):
        fine, coarse = labels["fine"].numpy().argmax(-1), labels["coarse"].numpy().argmax(-1)
        np.testing.assert_array_equal(np.asarray(info.fine_to_coarse)[fine], coarse)
        assert 0 <= images.numpy().min() and images.numpy().max() <= 255


def test_fit_images_channels_and_size():
    grey = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 1)).astype(np.uint8)
    rgb = fit_images(grey, (32, 32, 3))
    assert rgb.shape == (2, 32, 32, 3) and rgb.dtype == np.uint8
    same = fit_images(grey, (28, 28, 3))
    np.testing.assert_array_equal(same[..., 0], same[..., 2])
    np.testing.assert_array_equal(same[..., :1], grey)


def test_unknown_dataset_lists_choices():
    with pytest.raises(DatasetError, match="unknown dataset 'mnist'; choose one of shapes, cifar10, cifar100, "
                                                "fashion_mnist, folder, csv$"):
        datasets.load("mnist")


@pytest.mark.parametrize("name,n_fine,n_coarse", [("cifar10", 10, 2), ("cifar100", 100, 20)])
def test_cifar_through_tfds_mock(tmp_path, name, n_fine, n_coarse):
    with tfds.testing.mock_data(num_examples=40):
        s = datasets.load(name, data_dir=str(tmp_path), validation_fraction=0.25)
    assert s.info.num_classes == {"fine": n_fine, "coarse": n_coarse}
    assert len(s.train) == 30 and len(s.val) == 10 and len(s.test) == 40
    assert s.train.images.dtype == np.uint8 and s.train.fine.dtype == s.train.coarse.dtype == np.int32
    np.testing.assert_array_equal(np.asarray(s.info.fine_to_coarse)[s.test.fine], s.test.coarse)
    images, labels = next(iter(pipeline.pipeline(s.train, s.info, batch_size=8, training=True, augment="flip_crop")))
    assert images.shape == (8, 32, 32, 3) and images.dtype == tf.float32
    assert labels["fine"].shape == (8, n_fine) and labels["coarse"].shape == (8, n_coarse)
    fine, coarse = labels["fine"].numpy().argmax(-1), labels["coarse"].numpy().argmax(-1)
    np.testing.assert_array_equal(np.asarray(s.info.fine_to_coarse)[fine], coarse)
    # Soft labels from MixUp keep the pair consistent: fine mass summed per superclass = coarse mass.
    _, mixed = next(iter(pipeline.pipeline(s.train, s.info, batch_size=8, training=True, augment="mixup")))
    to_coarse = np.eye(n_coarse)[list(s.info.fine_to_coarse)]
    np.testing.assert_allclose(mixed["fine"].numpy() @ to_coarse, mixed["coarse"].numpy(), atol=1e-5)


def test_cifar10_superclasses_are_the_seed_studys():
    fine, coarse, f2c = cifar.CLASSES["cifar10"]
    animals = [fine[i] for i in range(10) if coarse[f2c[i]] == "animal"]
    assert animals == ["bird", "cat", "deer", "dog", "frog", "horse"]


def test_cifar100_hierarchy_five_per_superclass():
    fine, coarse, f2c = cifar.CLASSES["cifar100"]
    assert len(fine) == 100 and len(coarse) == 20 and np.bincount(f2c).tolist() == [5] * 20
    assert coarse[f2c[fine.index("whale")]] == "aquatic_mammals"
    assert coarse[f2c[fine.index("tractor")]] == "vehicles_2"


def test_missing_cifar_fails_fast_without_download(tmp_path):
    start = time.time()
    with pytest.raises(DatasetError, match=r"dataset cifar10 not found in --data_dir=.*--download is off"):
        datasets.load("cifar10", data_dir=str(tmp_path), download=False)
    assert time.time() - start < 10


def test_missing_cifar_offline_fails_fast_with_one_line(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(cifar.socket, "create_connection", offline)
    with pytest.raises(DatasetError) as err:
        datasets.load("cifar100", data_dir=str(tmp_path))
    message = str(err.value)
    assert "dataset cifar100 not found" in message and "unreachable" in message and "--data_dir" in message
    assert "\n" not in message
