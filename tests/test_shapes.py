import os
from pathlib import Path

import numpy as np
import pytest

from mtl_keras.data.sources import shapes


def test_generate_shapes_dtypes_and_labels():
    images, fine, coarse = shapes.generate(300, seed=3)
    assert images.shape == (300, 32, 32, 3) and images.dtype == np.uint8
    assert fine.dtype == coarse.dtype == np.int32
    assert set(np.unique(fine)) == set(range(len(shapes.FINE_NAMES)))
    np.testing.assert_array_equal(coarse, np.asarray(shapes.FINE_TO_COARSE)[fine])


def test_hierarchy_has_ten_classes_in_three_families():
    assert len(shapes.FINE_NAMES) == len(shapes.FINE_TO_COARSE) == 10
    assert sorted(set(shapes.FINE_TO_COARSE)) == list(range(len(shapes.COARSE_NAMES))) == [0, 1, 2]


def test_deterministic_by_seed():
    a, b = shapes.generate(50, seed=7), shapes.generate(50, seed=7)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], shapes.generate(50, seed=8)[0])


def test_colour_alone_does_not_give_the_class():
    # Nearest class-centroid on mean colour: labels must need shape, not a colour or brightness shortcut.
    images, fine, _ = shapes.generate(4000, seed=0)
    feats = images.reshape(len(images), -1, 3).mean(1)
    train, test = slice(0, 3000), slice(3000, None)
    centroids = np.stack([feats[train][fine[train] == k].mean(0) for k in range(10)])
    pred = np.argmin(((feats[test][:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    # Measured 2026-11-25: 11.1 % here (seed 0), 9.6-12.5 % over seeds 0-3; chance 10 %. A colour or brightness
    # shortcut would lift it well above; the bound sits 5 points (5 binomial SDs on 1,000 images) above 11.1 %.
    assert np.mean(pred == fine[test]) < 0.16


def test_negative_count_is_an_error():
    with pytest.raises(ValueError, match="n must be >= 0"):
        shapes.generate(-1, seed=0)


@pytest.fixture
def small_set(monkeypatch, tmp_path):
    """`shapes.load` on 300 + 100 images, with Keras's cache in tmp_path and no split drawn yet in this process;
    yields the list of (n, seed) that `generate` is called with."""
    monkeypatch.setattr(shapes, "TRAIN_SIZE", 300)
    monkeypatch.setattr(shapes, "TEST_SIZE", 100)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    drawn = []
    real = shapes.generate
    monkeypatch.setattr(shapes, "generate", lambda n, seed: drawn.append((n, seed)) or real(n, seed))
    shapes._split.cache_clear()
    yield drawn
    shapes._split.cache_clear()


def test_load_draws_the_set_once_per_process_and_shares_it_read_only(small_set):
    first, again = shapes.load(), shapes.load()
    assert small_set == [(300, 0), (100, 1)]  # the second load drew nothing
    assert again.train is first.train and again.test is first.test
    assert first.train.images.shape == (300, 32, 32, 3) and len(first.test) == 100
    for array in (*vars(first.train).values(), *vars(first.test).values()):
        with pytest.raises(ValueError, match="read-only"):
            array[:1] = 0  # a caller writing into it would change every later load's data
    np.testing.assert_array_equal(first.test.fine, shapes.generate(100, seed=1)[1])


def test_a_later_process_reads_the_drawing_from_keras_cache(small_set, tmp_path):
    first = shapes.load()
    first_name = shapes.cache_file(300, 0)
    kept = sorted(p.name for p in (tmp_path / "keras" / "datasets").iterdir())
    assert kept == [shapes.cache_file(100, 1).name, shapes.cache_file(300, 0).name]
    assert shapes.cache_file(300, 0).name.startswith("mtl_keras_shapes-300-0-")
    edited = tmp_path / "shapes.py"  # a changed generator never reads an older drawing
    edited.write_text(Path(shapes.__file__).read_text() + "# edited\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shapes, "__file__", str(edited))
        assert shapes.cache_file(300, 0) != first_name
    shapes._split.cache_clear()  # as in a new process
    later = shapes.load()
    assert small_set == [(300, 0), (100, 1)]  # read, not drawn again
    for a, b in ((first.train, later.train), (first.test, later.test)):
        for name in ("images", "fine", "coarse"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
            assert getattr(b, name).dtype == getattr(a, name).dtype and not getattr(b, name).flags.writeable


def _flip_a_byte_in_the_images(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(data)


@pytest.mark.parametrize("damage", ["flipped byte", "cut short", "not a split", "wrong labels", "a FIFO"])
def test_a_damaged_or_foreign_cache_file_is_drawn_again_and_replaced(small_set, damage):
    shapes.load()
    path = shapes.cache_file(300, 0)
    if damage == "flipped byte":
        _flip_a_byte_in_the_images(path)
    elif damage == "cut short":
        path.write_bytes(path.read_bytes()[:5000])
    elif damage == "not a split":
        np.savez(path, images=np.zeros((300, 8, 8, 3), np.uint8), fine=np.zeros(300, np.int32),
                 coarse=np.zeros(300, np.int32))
    elif damage == "wrong labels":
        images, fine, coarse = shapes.generate(300, seed=0)
        np.savez(path, images=images, fine=(fine + 1) % 10, coarse=coarse)
    else:  # opening it for reading would wait for a writer forever
        path.unlink()
        os.mkfifo(path)
    shapes._split.cache_clear()
    small_set.clear()
    again = shapes.load()
    assert small_set == [(300, 0)]  # drawn again: the test split's file was sound
    np.testing.assert_array_equal(again.train.images, shapes.generate(300, seed=0)[0])
    assert shapes._read(path, 300) is not None  # and the file replaced


def test_a_cache_that_cannot_be_written_is_left_alone(small_set, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "file" / "keras"))  # under a file: no folder can be made
    first = shapes.load()
    assert len(first.train) == 300 and small_set == [(300, 0), (100, 1)]
