"""The built-in procedural dataset `shapes`: 10 shapes in 3 families, drawn with numpy.

Each image is 32x32 RGB: one shape of random colour, size, position and rotation, on a textured
background with clutter (dots and a stray line). The fine label is the shape, the coarse label its
family (curved / angular / strokes). Colour, position and clutter carry no label information, so a
model must learn shape to score well. Generation is deterministic by seed and needs no files.

    python -c "from mtl_keras.data.sources import shapes; x, f, c = shapes.generate(8, seed=0); print(x.shape)"
"""

from __future__ import annotations

import functools
import hashlib
import zipfile
from pathlib import Path

import numpy as np

from mtl_keras import atomic
from mtl_keras.data.sources.cifar import keras_cache
from mtl_keras.data.types import DatasetInfo, Source, Split

IMAGE_SIZE = 32
FINE_NAMES = (
    "disk", "ring", "half_disk",  # curved
    "square", "frame", "diamond", "triangle",  # angular
    "plus", "cross", "bars",  # strokes
)
COARSE_NAMES = ("curved", "angular", "strokes")
FINE_TO_COARSE = (0, 0, 0, 1, 1, 1, 1, 2, 2, 2)

TRAIN_SIZE, TEST_SIZE = 12_000, 2_000
_CHUNK = 2048


def _mask(k: int, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Boolean mask [N, H, W] of shape `k` (an index into FINE_NAMES), centred coordinates dx, dy, radius r."""
    ax, ay = np.abs(dx), np.abs(dy)
    w = 0.28 * r  # stroke half-width
    if k in (0, 1, 2):  # disk, ring, half disk
        d2 = dx * dx + dy * dy
        disk = d2 <= r * r
        return disk if k == 0 else disk & (d2 >= (0.55 * r) ** 2) if k == 1 else disk & (dy >= 0.0)
    if k in (3, 4):  # square, frame
        box = np.maximum(ax, ay)
        return box <= 0.85 * r if k == 3 else (box <= 0.85 * r) & (box >= 0.5 * r)
    if k == 5:  # diamond
        return ax + ay <= r
    if k == 6:  # triangle, apex up
        return (dy <= 0.75 * r) & (dy >= -r + 1.9 * ax)
    if k == 7:  # plus
        return ((ax <= w) & (ay <= r)) | ((ay <= w) & (ax <= r))
    if k == 8:  # cross (x): a plus in a 45-degree rotated frame
        ux, uy = np.abs(dx + dy) * 0.7071, np.abs(dx - dy) * 0.7071
        return ((ux <= w) & (uy <= r)) | ((uy <= w) & (ux <= r))
    return (ax <= r) & (np.abs(ay - 0.5 * r) <= 0.2 * r)  # two bars (=)


def _draw(rng: np.random.Generator, fine: np.ndarray) -> np.ndarray:
    n, s = len(fine), IMAGE_SIZE
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    # Shape geometry: random radius, centre jitter and a small rotation.
    r = rng.uniform(7.0, 12.0, n).astype(np.float32)[:, None, None]
    cx = (s / 2 + rng.uniform(-5, 5, n)).astype(np.float32)[:, None, None]
    cy = (s / 2 + rng.uniform(-5, 5, n)).astype(np.float32)[:, None, None]
    theta = rng.uniform(-0.2, 0.2, n).astype(np.float32)[:, None, None]
    cos, sin = np.cos(theta), np.sin(theta)
    dx0, dy0 = xx[None] - cx, yy[None] - cy
    dx, dy = cos * dx0 + sin * dy0, -sin * dx0 + cos * dy0
    mask = np.empty((n, s, s), bool)
    for k in np.unique(fine):  # each image's own shape only
        rows = fine == k
        mask[rows] = _mask(int(k), dx[rows], dy[rows], r[rows])

    # Background: a random colour, a linear gradient and per-pixel texture noise.
    bg = rng.uniform(0, 255, (n, 1, 1, 3))
    grad = rng.uniform(-40, 40, (n, 1, 1, 2))
    img = bg + grad[..., :1] * (xx[None, ..., None] / s - 0.5) + grad[..., 1:] * (yy[None, ..., None] / s - 0.5)
    img += rng.normal(0, 14, (n, s, s, 3))
    # Foreground: a random colour pushed away from the background so the shape stays visible.
    fg = rng.uniform(0, 255, (n, 1, 1, 3))
    far = np.where(bg < 128, 255.0, 0.0)
    fg = np.where(np.abs(fg - bg).sum(-1, keepdims=True) < 200, 0.5 * (fg + far), fg)
    shape = rng.normal(0, 10, (n, s, s, 3))
    shape += fg
    np.copyto(img, shape, where=mask[..., None])

    # Clutter: four random dots and a thin random line, in random colours.
    for _ in range(4):
        px, py = rng.integers(0, s - 2, n), rng.integers(0, s - 2, n)
        col = rng.uniform(0, 255, (n, 3))
        for oy in (0, 1):
            for ox in (0, 1):
                img[np.arange(n), py + oy, px + ox] = col
    a, b = rng.uniform(0, s, (n, 2)), rng.uniform(0, s, (n, 2))
    t = np.linspace(0, 1, 24)
    lx = np.clip((a[:, :1] + (b[:, :1] - a[:, :1]) * t).astype(int), 0, s - 1)
    ly = np.clip((a[:, 1:] + (b[:, 1:] - a[:, 1:]) * t).astype(int), 0, s - 1)
    img[np.arange(n)[:, None], ly, lx] = rng.uniform(0, 255, (n, 1, 3))
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


def generate(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns `n` images (uint8 [n, 32, 32, 3]), fine labels and coarse labels (int32 [n])."""
    if n < 0:
        raise ValueError(f"shapes: n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    fine = rng.integers(0, len(FINE_NAMES), n).astype(np.int32)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    for start in range(0, n, _CHUNK):
        images[start:start + _CHUNK] = _draw(rng, fine[start:start + _CHUNK])
    coarse = np.asarray(FINE_TO_COARSE, np.int32)[fine]
    return images, fine, coarse


@functools.cache
def _digest(source: str) -> str:
    return hashlib.sha256(Path(source).read_bytes()).hexdigest()[:12]


def cache_file(n: int, seed: int) -> Path:
    """Where a drawn split is kept between processes: Keras's dataset cache, named by the split and by a digest of
    this module's source, so a changed generator never reads an older drawing."""
    return Path(keras_cache()) / f"mtl_keras_shapes-{n}-{seed}-{_digest(__file__)}.npz"


def _read(path: Path, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The split kept at `path`, or None where it is missing, unreadable, damaged (each member's CRC is checked as
    it is read) or not a split of `n` images."""
    if not path.is_file():  # also never opens a FIFO or a device in its place
        return None
    try:
        with np.load(path, allow_pickle=False) as kept:
            images, fine, coarse = kept["images"], kept["fine"], kept["coarse"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if images.shape != (n, IMAGE_SIZE, IMAGE_SIZE, 3) or images.dtype != np.uint8 or fine.shape != (n,) \
            or fine.dtype != np.int32 or coarse.dtype != np.int32:
        return None
    if not ((fine >= 0) & (fine < len(FINE_NAMES))).all() \
            or not np.array_equal(coarse, np.asarray(FINE_TO_COARSE, np.int32)[fine]):
        return None
    return images, fine, coarse


def _keep(path: Path, images: np.ndarray, fine: np.ndarray, coarse: np.ndarray) -> None:
    """Writes the split to `path` through a temporary file and a rename; a cache that cannot be written (a
    read-only or full disk) is left alone: the next process draws again."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic.replacing(path, "wb") as f:
            np.savez(f, images=images, fine=fine, coarse=coarse)
    except OSError:
        pass


@functools.lru_cache(maxsize=2)
def _split(n: int, seed: int) -> Split:
    """One split: drawn once (about 2 s for 12,000 images) and kept in Keras's dataset cache, read from there by
    later processes, and shared read-only within a process."""
    path = cache_file(n, seed)
    arrays = _read(path, n)
    if arrays is None:
        arrays = generate(n, seed)
        _keep(path, *arrays)
    for a in arrays:
        a.flags.writeable = False
    return Split(*arrays)


def load(settings=None) -> Source:
    """The `shapes` dataset: 12,000 training images (seed 0) and 2,000 test images (seed 1); no settings used.
    Its arrays are read-only and shared by every load in the process; later processes read the drawing from
    Keras's dataset cache ($KERAS_HOME/datasets, else ~/.keras/datasets; 43 MB)."""
    info = DatasetInfo("shapes", FINE_NAMES, COARSE_NAMES, FINE_TO_COARSE)
    return Source(info, _split(TRAIN_SIZE, seed=0), _split(TEST_SIZE, seed=1))
