"""--augment=alt_flip_crop: over any two consecutive epochs of the shuffled training pipeline every image is seen
once flipped and once not; the host pipeline refuses it by name; it cannot be combined with flip_crop."""

import numpy as np
import pytest

from mtl_keras import config
from mtl_keras.config import parse_policies
from mtl_keras.data import feeds, pipeline
from mtl_keras.data.types import DatasetInfo, Split
from mtl_keras.errors import ConfigError

N, BATCH, EPOCHS = 40, 12, 3  # 12 does not divide 40: batches straddle the epochs


def _tagged_split() -> Split:
    """Image i: channel 0 holds i everywhere; channel 1 is 0 on the left half, 255 on the right, so a crop
    (shifts of at most 4 of 16 columns) keeps the sides and a flip swaps them."""
    images = np.zeros((N, 16, 16, 3), np.uint8)
    images[..., 0] = np.arange(N)[:, None, None]
    images[:, :, 8:, 1] = 255
    return Split(images, np.arange(N, dtype=np.int32) % 2, np.zeros(N, np.int32))


def _seen(augment: str) -> list[dict[int, bool]]:
    """image index -> flipped, for each of the first EPOCHS passes through the training pipeline."""
    info = DatasetInfo("tagged", ("a", "b"), ("x",), (0, 0))
    ds = pipeline.pipeline(_tagged_split(), info, training=True, augment=augment, batch_size=BATCH, seed=3)
    images = np.concatenate([x.numpy() for x, _ in ds.take(-(-EPOCHS * N // BATCH))])[:EPOCHS * N]
    ids = images[:, 0, 0, 0].astype(int)
    flipped = images[:, 0, 0, 1] > images[:, 0, -1, 1]
    epochs = [dict(zip(ids[e * N:(e + 1) * N], flipped[e * N:(e + 1) * N])) for e in range(EPOCHS)]
    assert all(sorted(e) == list(range(N)) for e in epochs)  # each pass holds every image once
    assert list(ids[:N]) != list(ids[N:2 * N])  # and the order is reshuffled
    return epochs


def test_alternating_flip_shows_every_image_both_ways_in_two_epochs():
    epochs = _seen("alt_flip_crop")
    for first, second in zip(epochs, epochs[1:]):
        assert all(first[i] != second[i] for i in range(N))
    assert 0 < sum(epochs[0].values()) < N  # the starting side is random per image
    # A coin per epoch (flip_crop) repeats the side for about half the images.
    coin = _seen("flip_crop")
    assert any(coin[0][i] == coin[1][i] for i in range(N))


def test_alt_flip_crop_parses_and_refuses_flip_crop_beside_it():
    assert parse_policies("mixup,alt_flip_crop") == ("alt_flip_crop", "mixup")
    with pytest.raises(ValueError, match="flip_crop and alt_flip_crop are two ways to flip: choose one"):
        parse_policies("flip_crop,alt_flip_crop")


def test_host_pipeline_refuses_alt_flip_crop_by_name():
    data = config.DataConfig(augment="alt_flip_crop", input_pipeline="host")
    with pytest.raises(ConfigError, match="--augment=alt_flip_crop: the host input pipeline does not implement "
                                          "alt_flip_crop"):
        feeds.check(data)
