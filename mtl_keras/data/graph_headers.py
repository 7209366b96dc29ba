"""The pixels an encoded image costs to decode, read from its header inside a TensorFlow graph: what
serving_bytes checks before it decodes a request's image (headers.py reads files the same way in Python).

PNG's IHDR, BMP's info header, JPEG's frame through libjpeg itself (extract_jpeg_shape: the decoder's own marker
scan, so a stuffed `FF 00` cannot hide a frame), and for a GIF the frames times the largest of the logical screen
and every frame's own size: giflib allocates each frame at its size (one 20000 x 20000 frame behind a 1 x 1
screen took 2.4 GB in one request), and the frames are walked block by block in a tf.while_loop.

`damage` says what a bare signature or a file cut short lacks (IHDR, IEND, SOF, EOI, a GIF's first frame), so
serving_bytes can name the image instead of passing on its decoder's error, which names none.
"""

from __future__ import annotations

import tensorflow as tf

GIF_MAGIC = b"GIF8"  # what TensorFlow's decode_image takes for a GIF (giflib itself then checks only "GIF")


def _bytes(contents: tf.Tensor, pad: int = 16) -> tf.Tensor:
    """The string as int64 bytes, with `pad` zero bytes after it: a read past the end is a zero, not an error."""
    raw = tf.cast(tf.io.decode_raw(contents, tf.uint8), tf.int64)
    return tf.concat([tf.reshape(raw, [-1]), tf.zeros([pad], tf.int64)], 0)


def _gif_walk(contents: tf.Tensor):
    """Walks a GIF block by block: (frames, max width, max height over the screen and every frame, whether
    it is cut short before its first frame's data ends)."""
    data = _bytes(contents)
    n = tf.size(data, tf.int64) - 16

    zero, one = tf.constant(0, tf.int64), tf.constant(1, tf.int64)

    def byte(i):
        return tf.gather(data, tf.clip_by_value(tf.cast(i, tf.int64), 0, n + 15))

    def u16(i):
        return byte(i) + 256 * byte(i + 1)

    def table(flags):  # a colour table's size from its packed flags
        return tf.where(flags >= 128, 3 * tf.bitwise.left_shift(one, flags % 8 + 1), zero)

    # State: position, at a block (0) or in an extension's (1) or an image's (2) sub-blocks, frames, width,
    # height, images whose data ended.
    start = (13 + table(byte(10)), zero, zero, u16(6), u16(8), zero)

    def step(i, sub, frames, width, height, ended):
        c = byte(i)
        image = tf.equal(sub, 0) & tf.equal(c, 0x2C)
        extension = tf.equal(sub, 0) & tf.equal(c, 0x21)
        at_block = tf.where(image, i + 10 + table(byte(i + 9)) + 1, tf.where(extension, i + 2, n))  # else: end
        in_sub = i + c + 1  # c is the sub-block's length; 0 ends the sub-blocks
        return (tf.where(tf.equal(sub, 0), at_block, in_sub),
                tf.where(tf.equal(sub, 0), 2 * tf.cast(image, tf.int64) + tf.cast(extension, tf.int64),
                         tf.where(tf.equal(c, 0), zero, sub)),
                frames + tf.cast(image, tf.int64),
                tf.where(image, tf.maximum(width, u16(i + 5)), width),
                tf.where(image, tf.maximum(height, u16(i + 7)), height),
                ended + tf.cast(tf.equal(sub, 2) & tf.equal(c, 0), tf.int64))

    i, sub, frames, width, height, ended = tf.while_loop(lambda i, *_: i < n, step, start)
    # A whole GIF ends at a block (its trailer, or nothing after the last frame's data, which giflib also
    # decodes). TensorFlow decodes the first frame of a GIF cut in a later one, so only a cut before the first
    # frame's data ended counts.
    return frames, width, height, (n < 13) | (((i > n) | (sub > 0)) & tf.equal(ended, 0))


def gif_pixels(contents: tf.Tensor) -> tf.Tensor:
    """frames x max width x max height (int64) over the logical screen and every image descriptor."""
    frames, width, height, _ = _gif_walk(contents)
    return tf.maximum(frames, 1) * width * height


def header_pixels(contents: tf.Tensor) -> tf.Tensor:
    """What decoding one encoded image costs in pixels (int64, width x height x frames) from its headers; 0 for
    a string no decoder reads (the format check refuses it)."""
    data = _bytes(tf.strings.substr(contents, 0, 32), pad=32)  # every offset read is below 32

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


def _has(raw: tf.Tensor, pattern: bytes, start: tf.Tensor | int = 0, room: int = 0) -> tf.Tensor:
    """Whether `pattern` occurs in the uint8 bytes `raw` at a position >= `start` with `room` bytes after it."""
    k, n = len(pattern), tf.size(raw)
    count = tf.maximum(n - k - room + 1, 0)
    hit = tf.ones([count], tf.bool)
    for j, b in enumerate(pattern):
        hit &= tf.equal(raw[j:j + count], b)
    return tf.reduce_any(hit & (tf.range(count) >= start))


def _jpeg_damage(contents: tf.Tensor) -> tf.Tensor:
    raw = tf.io.decode_raw(contents, tf.uint8)
    n = tf.size(raw)
    # A frame header marker (SOFn: FF C0-CF but C4 DHT, C8 JPG, CC DAC): entropy-coded data stuffs every FF
    # as FF 00, so only header segments can hold one; any decodable JPEG has one and its EOI after it.
    marker = tf.equal(raw[:n - 1], 0xFF) & (raw[1:] >= 0xC0) & (raw[1:] <= 0xCF) & \
        tf.not_equal(raw[1:], 0xC4) & tf.not_equal(raw[1:], 0xC8) & tf.not_equal(raw[1:], 0xCC)
    first_sof = tf.reduce_min(tf.concat([tf.cast(tf.where(marker)[:, 0], tf.int32), [n]], 0))
    return tf.case([(tf.equal(first_sof, n), lambda: tf.constant("a JPEG with no frame header (SOF)")),
                    (~_has(raw, b"\xff\xd9", first_sof), lambda: tf.constant("a JPEG with no end marker (EOI)"))],
                   default=lambda: tf.constant(""))


def _png_damage(contents: tf.Tensor) -> tf.Tensor:
    short = tf.strings.length(contents) < 33  # the signature and the IHDR chunk
    # substr past the end is an error whose message holds the raw bytes: read a padded copy of the start
    head = tf.strings.join([tf.strings.substr(contents, 0, 16), b"\0" * 16])
    return tf.case([(short | tf.not_equal(tf.strings.substr(head, 12, 4), b"IHDR"),
                     lambda: tf.constant("a PNG with no IHDR header")),
                    (~_has(tf.io.decode_raw(contents, tf.uint8), b"IEND", 8, room=4),
                     lambda: tf.constant("a PNG with no IEND chunk"))],
                   default=lambda: tf.constant(""))


def _gif_damage(contents: tf.Tensor) -> tf.Tensor:
    frames, _, _, cut = _gif_walk(contents)
    return tf.case([(cut, lambda: tf.constant("a GIF whose first frame runs past its end")),
                    (tf.equal(frames, 0), lambda: tf.constant("a GIF with no image"))],
                   default=lambda: tf.constant(""))


def damage(contents: tf.Tensor) -> tf.Tensor:
    """Why one encoded image cannot be decoded, from its structure: "" when nothing is missing, else e.g. "a PNG
    with no IHDR header" (a bare signature) or "a JPEG with no end marker (EOI)" (a file cut short). What the
    decoders would refuse anyway, found first so serving_bytes can name the image; a string with no known
    magic number is "" (the format check refuses it). Each test is something TensorFlow's decoder also needs
    (it refuses a JPEG without EOI, a PNG without IEND), so what it decodes is not refused here."""
    def starts(magic: bytes) -> tf.Tensor:
        return tf.equal(tf.strings.substr(contents, 0, len(magic)), magic)

    return tf.case([(starts(b"\x89PNG"), lambda: _png_damage(contents)),
                    (starts(b"BM"), lambda: tf.where(tf.strings.length(contents) < 32,
                                                     tf.constant("a BMP with no complete header"),
                                                     tf.constant(""))),
                    (starts(GIF_MAGIC), lambda: _gif_damage(contents)),
                    (starts(b"\xff\xd8\xff"), lambda: _jpeg_damage(contents))],
                   default=lambda: tf.constant(""), exclusive=True)
