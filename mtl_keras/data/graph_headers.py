"""The pixels an encoded image costs to decode, read from its header inside a TensorFlow graph: what
serving_bytes checks before it decodes a request's image (headers.py reads files the same way in Python).

PNG's IHDR, BMP's info header, JPEG's frame through libjpeg itself (extract_jpeg_shape: the decoder's own marker
scan, so a stuffed `FF 00` cannot hide a frame), and for a GIF the frames times the largest of the logical screen
and every frame's own size: giflib allocates each frame at its size (one 20000 x 20000 frame behind a 1 x 1
screen took 2.4 GB in one request), and the frames are walked block by block in a tf.while_loop.
"""

from __future__ import annotations

import tensorflow as tf

GIF_MAGIC = b"GIF8"  # what TensorFlow's decode_image takes for a GIF (giflib itself then checks only "GIF")


def _bytes(contents: tf.Tensor, pad: int = 16) -> tf.Tensor:
    """The string as int64 bytes, with `pad` zero bytes after it: a read past the end is a zero, not an error."""
    raw = tf.cast(tf.io.decode_raw(contents, tf.uint8), tf.int64)
    return tf.concat([tf.reshape(raw, [-1]), tf.zeros([pad], tf.int64)], 0)


def gif_pixels(contents: tf.Tensor) -> tf.Tensor:
    """frames x max width x max height (int64) over the logical screen and every image descriptor."""
    data = _bytes(contents)
    n = tf.size(data, tf.int64) - 16

    zero, one = tf.constant(0, tf.int64), tf.constant(1, tf.int64)

    def byte(i):
        return tf.gather(data, tf.clip_by_value(tf.cast(i, tf.int64), 0, n + 15))

    def u16(i):
        return byte(i) + 256 * byte(i + 1)

    def table(flags):  # a colour table's size from its packed flags
        return tf.where(flags >= 128, 3 * tf.bitwise.left_shift(one, flags % 8 + 1), zero)

    # State: position, in sub-blocks (1) or at a block (0), frames, width, height.
    start = (13 + table(byte(10)), zero, zero, u16(6), u16(8))

    def step(i, sub, frames, width, height):
        c = byte(i)
        image = tf.equal(sub, 0) & tf.equal(c, 0x2C)
        extension = tf.equal(sub, 0) & tf.equal(c, 0x21)
        at_block = tf.where(image, i + 10 + table(byte(i + 9)) + 1, tf.where(extension, i + 2, n))  # else: end
        in_sub = i + c + 1  # c is the sub-block's length; 0 ends the sub-blocks
        return (tf.where(tf.equal(sub, 0), at_block, in_sub),
                tf.where(tf.equal(sub, 0), one, tf.where(tf.equal(c, 0), zero, sub)),
                frames + tf.cast(image, tf.int64),
                tf.where(image, tf.maximum(width, u16(i + 5)), width),
                tf.where(image, tf.maximum(height, u16(i + 7)), height))

    _, _, frames, width, height = tf.while_loop(lambda i, *_: i < n, step, start)
    return tf.maximum(frames, 1) * width * height


def header_pixels(contents: tf.Tensor) -> tf.Tensor:
    """What decoding one encoded image costs in pixels (int64, width x height x frames) from its headers; 0 for
    a string no decoder reads (the format check refuses it)."""
    data = _bytes(contents)

    def number(offset: int, size: int, big_endian: bool = False, signed: bool = False) -> tf.Tensor:
        raw = data[offset:offset + size]  # a string cut short reads as zeros; its decoder fails
        weights = tf.constant([256 ** i for i in range(size)][::-1] if big_endian else [256 ** i for i in range(size)],
                              tf.int64)
        value = tf.reduce_sum(raw * weights)
        return tf.abs(tf.where(value >= 2 ** (8 * size - 1), value - 2 ** (8 * size), value)) if signed else value

    def starts(magic: bytes) -> tf.Tensor:
        return tf.equal(tf.strings.substr(contents, 0, len(magic)), magic)

    def bmp() -> tf.Tensor:  # a negative height is a top-down BMP; a 12-byte header is OS/2's, 16-bit sizes
        return tf.cond(tf.equal(number(14, 4), 12), lambda: number(18, 2) * number(20, 2),
                       lambda: number(18, 4, signed=True) * number(22, 4, signed=True))

    return tf.case([(starts(b"\x89PNG"), lambda: number(16, 4, True) * number(20, 4, True)),
                    (starts(b"BM"), bmp),
                    (starts(GIF_MAGIC), lambda: gif_pixels(contents)),
                    (tf.io.is_jpeg(contents),
                     lambda: tf.reduce_prod(tf.cast(tf.io.extract_jpeg_shape(contents)[:2], tf.int64)))],
                   default=lambda: tf.constant(0, tf.int64), exclusive=True)
