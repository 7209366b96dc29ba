"""Image files decoded with Pillow, no TensorFlow: the host pipeline's twin of images.decode / decode_files, and
`FileImages`, files read like a uint8 array.

The pixels are tf.data's: TensorFlow decodes JPEGs with libjpeg's accurate integer IDCT
(dct_method="INTEGER_ACCURATE", images.py), which is Pillow's, and both scale the IDCT by the same 1/2, 1/4, 1/8
rule (the largest ratio leaving both sides >= the target); PNG / BMP / GIF are lossless. Files already at the
target size are therefore equal pixel for pixel. A resize is the same antialiased bilinear (triangle) filter in
both, rounded separately: they can differ by a level or two there (tests/test_host_pipeline.py bounds it).
"""

from __future__ import annotations

import concurrent.futures
import os

import numpy as np

from mtl_keras.data.headers import too_large
from mtl_keras.errors import DatasetError

DECODE_THREADS = min(8, os.cpu_count() or 1)  # Pillow releases the GIL while it decodes


def decode_file(path: str, size: int | None) -> np.ndarray:
    """One image file as uint8 [size, size, 3] (any format, grey/RGBA/palette, any size), as images.decode reads
    it; `size=None` decodes at the file's own size (validation)."""
    from PIL import Image

    with Image.open(path) as image:
        if image.format == "JPEG" and size:
            image.draft("RGB", (size, size))  # libjpeg's DCT scaling, as images.decode_bytes picks it
        image = image.convert("RGB")  # alpha dropped, grey repeated: decode_image(channels=3) does the same
        if size and image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
        return np.asarray(image, np.uint8)


def decode_files(paths, size: int | None, max_pixels: int | None = None) -> tuple[np.ndarray | None, np.ndarray]:
    """images.decode_files with Pillow in threads: (uint8 [N, size, size, 3] or None when size is None, ok [N])."""
    paths = np.asarray(paths, object).astype(str)
    ok = np.zeros(len(paths), bool)
    images = np.zeros((len(paths), size, size, 3), np.uint8) if size else None

    def one(i: int) -> None:
        if max_pixels is not None and too_large(paths[i], max_pixels) is not None:
            return
        try:
            pixels = decode_file(paths[i], size)
        except Exception:  # noqa: BLE001  (any undecodable file is skipped and named by why_undecodable)
            return
        ok[i] = True
        if images is not None:
            images[i] = pixels

    with concurrent.futures.ThreadPoolExecutor(DECODE_THREADS) as pool:
        list(pool.map(one, range(len(paths))))
    return images, ok


def why_undecodable(path: str) -> str:
    """Why Pillow cannot decode one file (the first line of its message)."""
    try:
        decode_file(path, None)
        return "decodes now (changed while loading?)"
    except FileNotFoundError:
        return "no such file"
    except Exception as e:  # noqa: BLE001
        text = str(e).strip()
        return text.splitlines()[0][:120] if text else type(e).__name__


def decoder(input_pipeline: str):
    """(decode_files, why_undecodable) of the pipeline that reads the files: "host" (Pillow) or "tf_data"."""
    if input_pipeline == "host":
        return decode_files, why_undecodable
    from mtl_keras.data import images  # TensorFlow

    return images.decode_files, images.why_undecodable


class FileImages:
    """Images still in files, read like a uint8 array [N, size, size, 3]: slicing stays lazy, and `np.asarray`,
    `astype` or an integer index decode them (with the decoder of `input_pipeline`); the pipelines stream them."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, paths, size: int, input_pipeline: str = "tf_data"):
        self.paths, self.image_size, self.input_pipeline = np.asarray(paths, object), size, input_pipeline

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.image_size, self.image_size, 3)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return np.asarray(self[[index]])[0]
        return FileImages(self.paths[index], self.image_size, self.input_pipeline)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        decode, why = decoder(self.input_pipeline)
        images, ok = decode(self.paths, self.image_size)
        if not ok.all():  # validated at load: the file changed since
            raise DatasetError(f"{self.paths[~ok][0]}: can no longer be decoded ({why(self.paths[~ok][0])})")
        return images if dtype is None else images.astype(dtype)

    def astype(self, dtype) -> np.ndarray:
        return np.asarray(self, dtype)
