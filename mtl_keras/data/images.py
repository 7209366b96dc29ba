"""Images: `fit_images` (the one place channels and size adapt) and decoding image files in tf.data (its Pillow
twin, and `FileImages`, are in host_images.py)."""

from __future__ import annotations

import re

import numpy as np
import tensorflow as tf

from mtl_keras.data.graph_headers import header_pixels
from mtl_keras.data.headers import too_large

_NO_LIMIT = 2 ** 63  # no pixel limit: the header check still refuses anything but a regular file


def fit_images(images, shape: tuple[int, int, int]):
    """Images (uint8 or float, [N, h, w, c]) as `shape` (H, W, C): the one place channels and size adapt.

    Grey -> RGB repeats the channel, RGB -> grey averages; a size mismatch is resized bilinearly.
    Works eagerly on numpy and inside tf.data; returns the input dtype where nothing needed resizing.
    """
    if not (isinstance(images, np.ndarray) or tf.is_tensor(images)):
        images = np.asarray(images)  # array-likes such as FileImages
    x = tf.convert_to_tensor(images)
    channels = x.shape[-1]
    if channels != shape[2]:
        if channels == 1:
            x = tf.repeat(x, shape[2], axis=-1)
        elif shape[2] == 1:
            x = tf.cast(tf.round(tf.reduce_mean(tf.cast(x, tf.float32), -1, keepdims=True)), x.dtype)
        else:
            raise ValueError(f"cannot map {channels} image channels to {shape[2]}")
    if tuple(x.shape[1:3]) != tuple(shape[:2]):
        x = tf.cast(tf.clip_by_value(tf.image.resize(tf.cast(x, tf.float32), shape[:2]), 0, 255), x.dtype)
    return x.numpy() if isinstance(images, np.ndarray) else x


def decode(path: tf.Tensor, size: int) -> tf.Tensor:
    """One image file as uint8 [size, size, 3]: any of the formats, grey/RGBA/palette/CMYK, any size."""
    return decode_bytes(tf.io.read_file(path), size)


def decode_bytes(contents: tf.Tensor, size: int, max_pixels: int | None = None) -> tf.Tensor:
    """One encoded JPEG / PNG / BMP / GIF string as uint8 [size, size, 3], exactly as `decode` reads a file (the
    SavedModel's serving_bytes signature runs this too, so a served image gets the pixels training saw). With
    `max_pixels`, an image whose headers say decoding costs more (graph_headers.py) is an InvalidArgument before
    any decoder runs: the guard for callers that hold bytes, not a file that headers.py has checked."""
    if max_pixels is not None:
        pixels = header_pixels(contents)
        check = tf.debugging.Assert(pixels <= max_pixels, [tf.strings.format(
            "the image holds {} pixels, above --max_image_pixels={} (a guard against decompression bombs)",
            (pixels, max_pixels))])
        with tf.control_dependencies([check]):
            contents = tf.identity(contents)

    def jpeg() -> tf.Tensor:
        # libjpeg can decode at 1/2, 1/4 or 1/8 scale (DCT scaling): a phone photo bound for 32 px decodes
        # many times faster at 1/8 than in full, and the resize below still starts from >= `size` pixels.
        side = tf.reduce_min(tf.io.extract_jpeg_shape(contents)[:2])
        return tf.case([(side >= size * r, lambda r=r: jpeg_at(r))
                        for r in (8, 4, 2)], default=lambda: jpeg_at(1))

    def jpeg_at(ratio: int) -> tf.Tensor:
        # libjpeg's accurate integer IDCT, Pillow's: the host pipeline (host_images.py) then decodes the same
        # pixels (TF's default INTEGER_FAST differed from it by up to 5 levels on 4:2:0 JPEGs).
        return tf.io.decode_jpeg(contents, channels=3, ratio=ratio, dct_method="INTEGER_ACCURATE")

    image = tf.cond(tf.io.is_jpeg(contents), jpeg,
                    lambda: tf.io.decode_image(contents, channels=3, expand_animations=False))
    same = tf.reduce_all(tf.shape(image)[:2] == size)
    # Antialiased resize: a plain bilinear downscale of a large photo to 32 px aliases badly.
    image = tf.cond(same, lambda: tf.identity(image), lambda: tf.cast(tf.clip_by_value(
        tf.round(tf.image.resize(image, (size, size), antialias=True)), 0, 255), tf.uint8))
    # The static shape after the cond, not inside its true branch: in a SavedModel's map_fn the runtime ran that
    # branch's EnsureShape on a 40 px GIF bound for the resize branch and failed the request.
    return tf.ensure_shape(image, (size, size, 3))


def without_autotune_thread(ds: tf.data.Dataset) -> tf.data.Dataset:
    """`ds` without tf.data's autotuning thread. With it (TensorFlow 2.21), deleting an iterator that had run for
    over a minute sometimes waited, idle, for that thread's next tuning pass, up to a minute later: the quick
    start sat 52 s after its last epoch (BUILD_NOTES.md). Without it, `AUTOTUNE` parallelism is the core count
    and prefetching still runs ahead of the model; the batches are the same."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def decode_files(paths, size: int | None, max_pixels: int | None = None) -> tuple[np.ndarray | None, np.ndarray]:
    """Decodes every file in tf.data: (uint8 [N, size, size, 3] or None when size is None, ok mask [N]).

    `size=None` only validates (decodes without keeping pixels). Failed files leave zeros and ok False, as do
    files whose header says they hold more than `max_pixels` and anything but a regular file (a FIFO would hang
    the read, a link to /dev/zero never ends it): those are never opened by a decoder (see headers.py).
    """
    paths = np.asarray(paths, object).astype(str)
    ok = np.zeros(len(paths), bool)
    images = np.zeros((len(paths), size, size, 3), np.uint8) if size else None
    work = (lambda p: decode(p, size)) if size else (
        lambda p: tf.shape(tf.io.decode_image(tf.io.read_file(p), channels=3, expand_animations=False))[0])
    # The header check costs ~10 us a file in Python (50,000 files: 0.5 s), far below decoding them.
    limit = _NO_LIMIT if max_pixels is None else max_pixels
    index = np.flatnonzero([too_large(p, limit) is None for p in paths])
    ds = tf.data.Dataset.from_tensor_slices((index.astype(np.int64), paths[index]))
    ds = ds.map(lambda i, p: (i, work(p)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = without_autotune_thread(ds.ignore_errors().batch(256).prefetch(2))
    for index, pixels in ds.as_numpy_iterator():  # Python per batch
        ok[index] = True
        if images is not None:
            images[index] = pixels
    return images, ok


def why_skipped(path: str, max_pixels: int | None = None) -> str:
    """Why `decode_files` left one file out, for the warning (runs only for the few failures)."""
    return too_large(path, _NO_LIMIT if max_pixels is None else max_pixels) or \
        f"cannot decode it ({why_undecodable(path)})"


def why_undecodable(path: str) -> str:
    """Why one file failed to decode (sources/files.py first checks for a decompression bomb)."""
    try:
        tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return "decodes now (changed while loading?)"
    except tf.errors.NotFoundError:
        return "no such file"
    except tf.errors.OpError as e:
        text = re.sub(r"\{\{.*?\}\}\s*", "", e.message).strip()  # drop TF's {{function_node ...}} prefix
        return text.splitlines()[0][:120] if text else type(e).__name__
