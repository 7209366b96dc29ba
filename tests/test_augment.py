import keras
import numpy as np
import pytest
import tensorflow as tf

from mtl_keras.config import parse_policies
from mtl_keras.data import augment, pipeline

SEED = tf.constant([5, 9], tf.int64)


def in_tf_data(fn, *args):
    """`fn(*args)` run inside a tf.data map (a graph), for comparison with the eager call."""
    return next(iter(tf.data.Dataset.from_tensors(args).map(fn)))


def tagged_batch(b: int = 8, size: int = 16, n_fine: int = 8, n_coarse: int = 2):
    """Example k: a constant image of value 10k + 5, fine label k, coarse label k % 2 (concatenated one-hot)."""
    values = 10.0 * np.arange(b) + 5
    images = tf.constant(np.broadcast_to(values[:, None, None, None], (b, size, size, 3)), tf.float32)
    fine = np.eye(n_fine)[np.arange(b) % n_fine]
    coarse = np.eye(n_coarse)[np.arange(b) % n_coarse]
    return images, tf.constant(np.concatenate([fine, coarse], 1), tf.float32), values


def partner(fine_row: np.ndarray, i: int) -> int:
    """The example that example i was mixed with: the other class holding label weight (i if none)."""
    others = [k for k in np.flatnonzero(fine_row > 1e-6) if k != i]
    return int(others[0]) if others else i


def test_parse_policies_order_and_errors():
    assert parse_policies("cutmix,flip_crop, mixup") == ("flip_crop", "mixup", "cutmix")
    assert parse_policies("none") == () and parse_policies("") == ()
    with pytest.raises(ValueError, match="unknown augmentation 'autoaugment'; use .*flip_crop, randaugment, "
                                         "mixup, cutmix, or none"):
        parse_policies("flip_crop,autoaugment")
    with pytest.raises(ValueError, match="'none' cannot be combined"):
        parse_policies("none,mixup")


def test_flip_crop_same_eagerly_and_in_tf_data():
    images = tf.constant(np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3)), tf.uint8)
    eager = augment.random_flip_crop(images, SEED)
    np.testing.assert_array_equal(eager.numpy(), in_tf_data(augment.random_flip_crop, images, SEED).numpy())
    assert eager.shape == images.shape and not np.array_equal(eager.numpy(), images.numpy())


def test_flip_crop_keeps_content_translated():
    # Every output equals one shifted window (maybe mirrored) of the reflect-padded input.
    img = tf.reshape(tf.range(32 * 32 * 3) % 251, (1, 32, 32, 3))
    out = augment.random_flip_crop(tf.cast(img, tf.uint8), tf.constant([1, 2], tf.int64), pad=4).numpy()[0]
    padded = np.pad(img.numpy()[0], ((4, 4), (4, 4), (0, 0)), mode="reflect").astype(np.uint8)
    matches = [(dy, dx) for dy in range(9) for dx in range(9)
               if np.array_equal(padded[dy:dy + 32, dx:dx + 32], out)
               or np.array_equal(padded[dy:dy + 32, dx:dx + 32][:, ::-1], out)]
    assert len(matches) == 1


@pytest.mark.parametrize("mix", [augment.mixup, augment.cutmix])
def test_mix_same_eagerly_and_in_tf_data_and_seeded(mix):
    images, labels, _ = tagged_batch()
    eager = mix(images, labels, SEED, 1.0)
    graph = in_tf_data(lambda x, y, s: mix(x, y, s, 1.0), images, labels, SEED)
    for a, b in zip(eager, graph):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-5)
    other = mix(images, labels, tf.constant([5, 10], tf.int64), 1.0)
    assert not np.allclose(eager[0].numpy(), other[0].numpy())


def test_mixup_blends_images_and_both_heads_with_one_weight():
    images, labels, values = tagged_batch()
    x, y = augment.mixup(images, labels, SEED, alpha=1.0)
    x, y = x.numpy(), y.numpy()
    fine, coarse = y[:, :8], y[:, 8:]
    np.testing.assert_allclose(fine.sum(1), 1, atol=1e-6)
    np.testing.assert_allclose(coarse.sum(1), 1, atol=1e-6)
    for i in range(8):
        lam = fine[i, i]
        j = partner(fine[i], i)
        np.testing.assert_allclose(x[i], lam * values[i] + (1 - lam) * values[j], rtol=1e-4)
        np.testing.assert_allclose(coarse[i], lam * np.eye(2)[i % 2] + (1 - lam) * np.eye(2)[j % 2], atol=1e-5)


def test_cutmix_label_weight_is_the_pasted_pixel_share_for_both_heads():
    images, labels, values = tagged_batch(size=28)
    x, y = augment.cutmix(images, labels, SEED, alpha=1.0)
    x, y = x.numpy()[..., 0], y.numpy()
    fine, coarse = y[:, :8], y[:, 8:]
    mixed = 0
    for i in range(8):
        kept = np.mean(x[i] == values[i])
        np.testing.assert_allclose(fine[i, i], kept, atol=1e-6)
        if kept < 1:
            mixed += 1
            j = partner(fine[i], i)
            assert set(np.unique(x[i])) == {values[i], values[j]}
            np.testing.assert_allclose(coarse[i], kept * np.eye(2)[i % 2] + (1 - kept) * np.eye(2)[j % 2],
                                       atol=1e-6)
    assert mixed >= 4


def test_switch_rand_augment_matches_keras_rand_augment():
    # SwitchRandAugment relies on the transformation dict of keras.layers.RandAugment: this guards it.
    images = tf.constant(np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3)), tf.float32)
    ours, theirs = augment.SwitchRandAugment(seed=3), keras.layers.RandAugment(seed=3)
    for _ in range(4):
        np.testing.assert_allclose(ours(images).numpy(), theirs(images).numpy(), atol=1e-4)


def test_rand_augment_grey_same_eagerly_and_in_tf_data():
    # Keras keeps RandAugment's seed state in the layer: fresh layers with one seed must agree.
    images = tf.constant(np.random.default_rng(2).integers(0, 256, (8, 28, 28, 1)), tf.float32)
    eager = augment.SwitchRandAugment(seed=4)(images)
    graph = next(iter(tf.data.Dataset.from_tensors(images).map(augment.SwitchRandAugment(seed=4))))
    assert eager.shape == (8, 28, 28, 1)
    np.testing.assert_allclose(eager.numpy(), graph.numpy(), atol=1e-4)


def test_batch_augmenter_everything_on():
    fn = augment.batch_augmenter("flip_crop,randaugment,mixup,cutmix", seed=0)
    assert augment.batch_augmenter("none") is None
    images = tf.constant(np.random.default_rng(3).integers(0, 256, (16, 32, 32, 3)), tf.uint8)
    labels = tf.one_hot(tf.range(16) % 10, 10)
    for step in range(4):
        x, y = fn(images, labels, tf.constant([0, step], tf.int64))
        assert x.dtype == tf.float32 and x.shape == (16, 32, 32, 3)
        assert 0 <= x.numpy().min() and x.numpy().max() <= 255
        np.testing.assert_allclose(y.numpy().sum(1), 1, atol=1e-5)


def test_batch_augmenter_stateless_parts_same_eagerly_and_in_tf_data():
    fn = augment.batch_augmenter("flip_crop,mixup,cutmix", seed=0)
    images = tf.constant(np.random.default_rng(4).integers(0, 256, (16, 28, 28, 1)), tf.uint8)
    labels = tf.one_hot(tf.range(16) % 10, 10)
    for step in range(3):
        seed = tf.constant([7, step], tf.int64)
        for a, b in zip(fn(images, labels, seed), in_tf_data(fn, images, labels, seed)):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4)


@pytest.mark.parametrize("spec", ["mixup", "cutmix", "flip_crop,randaugment,mixup,cutmix"])
def test_pipeline_mixed_labels_stay_consistent_across_heads(shapes_splits, spec):
    # Both heads mixed with one weight <=> the fine mixture, summed per superclass, is the coarse mixture.
    info = shapes_splits.info
    to_coarse = np.eye(info.num_classes["coarse"])[list(info.fine_to_coarse)]  # [fine, coarse]
    ds = pipeline.pipeline(shapes_splits.train, info, training=True, augment=spec, batch_size=32, seed=3)
    soft = 0
    for images, labels in ds.take(4):
        fine, coarse = labels["fine"].numpy(), labels["coarse"].numpy()
        np.testing.assert_allclose(fine @ to_coarse, coarse, atol=1e-5)
        soft += int(np.sum(fine.max(1) < 0.999))
        assert images.dtype == tf.float32 and 0 <= images.numpy().min() and images.numpy().max() <= 255
    assert soft > 0


def test_pipeline_is_reproducible_by_seed(shapes_splits):
    def first(seed):
        ds = pipeline.pipeline(shapes_splits.train, shapes_splits.info, training=True, seed=seed,
                           augment="flip_crop,mixup,cutmix", batch_size=16)
        images, labels = next(iter(ds))
        return images.numpy(), labels["fine"].numpy()

    a, b, c = first(1), first(1), first(2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_evaluation_pipeline_never_augments(shapes_splits):
    split, info = shapes_splits.test, shapes_splits.info
    images, labels = next(iter(pipeline.pipeline(split, info, augment="flip_crop,randaugment,mixup", batch_size=8)))
    np.testing.assert_array_equal(images.numpy(), split.images[:8].astype(np.float32))
    np.testing.assert_array_equal(labels["fine"].numpy().argmax(1), split.fine[:8])
    assert set(np.unique(labels["fine"].numpy())) == {0.0, 1.0}


def test_cli_rejects_an_unknown_augmentation_in_one_line(tmp_path, capsys):
    from conftest import parsed_in_process

    status, lines = parsed_in_process("train", ["--augment=flip_crop,autoaugment", f"--workdir={tmp_path}"], capsys)
    assert status == 2 and len(lines) == 1, lines
    assert "--augment: unknown augmentation 'autoaugment'; use a comma-separated list of" in lines[0]
