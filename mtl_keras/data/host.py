"""The host input pipeline: pipeline.py's batches made in numpy threads, with no TensorFlow.

Same batches as tf.data's in everything but the random draws: `(float32 images 0-255, {"fine": one-hot,
"coarse": one-hot})`, plus per-head sample weights `{head: 0 or 1}` when the split has partial labels (class -1:
an all-zero label vector and weight 0). Training batches shuffle (a fresh seeded order each epoch, the remainder
dropped, as tf.data's drop_remainder), repeat forever and are augmented by host_augment.py; evaluation batches
keep the split's order and are never augmented. Splits of `FileImages` decode each batch's files with Pillow
(host_images.py); a file that breaks after the load-time check is dropped, as tf.data's ignore_errors drops it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import itertools
import os
from collections.abc import Iterator

import numpy as np

from mtl_keras.data import host_augment
from mtl_keras.data.host_images import FileImages
from mtl_keras.data.host_images import decode_files as decode_host
from mtl_keras.data.types import DatasetInfo, Split

WORKERS = min(8, os.cpu_count() or 1)  # numpy gathers and Pillow release the GIL: threads pay
AHEAD = 16  # training batches prepared ahead of the one fit is using


def _images(split: Split, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images of `index`, the indices that decoded) from memory or from the files."""
    if isinstance(split.images, FileImages):
        images, ok = decode_host(split.images.paths[index], split.images.image_size)
        return images[ok], index[ok]
    return np.asarray(split.images)[index], index


def _batch(split: Split, info: DatasetInfo, task: str, index: np.ndarray, augment=None):
    """One batch: images, the label dict of `task`, and weights when the split has partial labels."""
    images, index = _images(split, index)
    n = info.num_classes
    fine, coarse = split.fine[index], split.coarse[index]
    # eye(K + 1)[-1][:K] is all zeros: an unlabelled head, as tf.one_hot(-1)
    labels = np.concatenate([np.eye(n["fine"] + 1, dtype=np.float32)[fine][:, :n["fine"]],
                             np.eye(n["coarse"] + 1, dtype=np.float32)[coarse][:, :n["coarse"]]], axis=1)
    x = images.astype(np.float32) if augment is None else None
    if augment is not None:
        x, labels = augment(images, labels)
    split_labels = {"fine": labels[:, :n["fine"]], "coarse": labels[:, n["fine"]:]}
    heads = split_labels if task == "mtl" else {task: split_labels[task]}
    if bool((split.fine < 0).any() or (split.coarse < 0).any()):
        weights = {"fine": (fine >= 0).astype(np.float32), "coarse": (coarse >= 0).astype(np.float32)}
        return x, heads, {h: weights[h] for h in heads}
    return x, heads


def train_batches(split: Split, info: DatasetInfo, *, task: str, batch_size: int, seed: int,
                  policies: tuple[str, ...], mixup_alpha: float, cutmix_alpha: float, start_step: int = 0) -> Iterator:
    """Endless augmented training batches from batch `start_step` on; batch k's randomness is (seed, k), so a run
    is reproducible, and one resumed after `start_step` steps goes on with the batches it would have had."""
    steps = len(split) // batch_size

    @functools.lru_cache(maxsize=4)
    def order(epoch: int) -> np.ndarray:
        return np.random.default_rng([seed, epoch]).permutation(len(split))

    def make(step: int):
        epoch, k = divmod(step, steps)
        rng = np.random.default_rng([seed, step, 1])

        def augment(x, y):
            return host_augment.augment_batch(x, y, rng, policies, mixup_alpha, cutmix_alpha)

        return _batch(split, info, task, order(epoch)[k * batch_size:(k + 1) * batch_size], augment)

    return _ahead(make, itertools.count(start_step))


def _ahead(make, keys) -> Iterator:
    """make(key) for each key, in order, computed in WORKERS threads up to AHEAD keys ahead."""
    keys = iter(keys)
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        pending = collections.deque(pool.submit(make, k) for k in itertools.islice(keys, AHEAD))
        while pending:
            yield pending.popleft().result()
            pending.extend(pool.submit(make, k) for k in itertools.islice(keys, 1))


def eval_batches(split: Split, info: DatasetInfo, *, task: str = "mtl", batch_size: int = 128):
    """A split's batches in order as a keras.utils.PyDataset: fit's validation re-reads it each epoch, and
    iterating it (predict_split) reads each batch once, WORKERS threads ahead."""
    import keras

    class EvalBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=WORKERS, use_multiprocessing=False)

        def __len__(self) -> int:
            return -(-len(split) // batch_size)

        def __getitem__(self, i: int):
            return _batch(split, info, task, np.arange(i * batch_size, min((i + 1) * batch_size, len(split))))

        def __iter__(self) -> Iterator:
            return _ahead(self.__getitem__, range(len(self)))

    return EvalBatches()
