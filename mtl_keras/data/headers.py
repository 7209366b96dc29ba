"""How many pixels an image file decodes to, read from its header without decoding it: the guard against
decompression bombs (a 420 KB 12000 x 12000 PNG decoded to 4.3 GB; a 23000 x 23000 one killed `predict`).

TensorFlow's decoders allocate what the header says (a GIF: every frame of the logical screen, even when only
the first is kept), so the header's figure is what decoding costs. Plain Python, no TensorFlow, no Pillow;
`predict` and the folder / CSV loader call `too_large` before they decode a file.
"""

from __future__ import annotations

import struct

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_HEAD = 64 * 1024  # enough for every header but a JPEG with large EXIF / ICC segments, which is read on


def image_pixels(path: str) -> tuple[int, int, int] | None:
    """(width, height, frames) from a PNG / JPEG / GIF / BMP header; None for another kind of file.
    ValueError when the file claims to be one of those but its header cannot be read."""
    with open(path, "rb") as f:
        head = f.read(_HEAD)
        if head.startswith(b"\x89PNG\r\n\x1a\n"):
            if head[12:16] != b"IHDR" or len(head) < 24:
                raise ValueError("damaged PNG header")
            return (*struct.unpack(">II", head[16:24]), 1)
        if head[:6] in (b"GIF87a", b"GIF89a"):
            return _gif(head + f.read())
        if head.startswith(b"BM"):
            if len(head) < 26:
                raise ValueError("damaged BMP header")
            size = struct.unpack("<I", head[14:18])[0]
            width, height = struct.unpack("<HH", head[18:22]) if size == 12 else struct.unpack("<ii", head[18:26])
            return abs(width), abs(height), 1  # a negative height is a top-down BMP
        if head.startswith(b"\xff\xd8\xff"):
            return _jpeg(head, f)
    return None


def _jpeg(head: bytes, f) -> tuple[int, int, int]:
    """The first start-of-frame segment's size (what libjpeg allocates), walking the segments from SOI."""
    data, i = bytearray(head), 2

    def need(n: int) -> None:  # data[i:i + n] read, or the file ended before a frame header
        nonlocal data
        while len(data) < i + n:
            more = f.read(_HEAD)
            if not more:
                raise ValueError("JPEG without a frame header")
            data += more

    while True:
        need(2)
        if data[i] != 0xFF:  # stray bytes between segments: libjpeg skips them too
            found = data.find(b"\xff", i)
            i = found if found >= 0 else len(data)
            continue
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _JPEG_SOF:
            need(9)
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height, 1
        elif marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
        else:
            need(4)
            i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]


def _gif(data: bytes) -> tuple[int, int, int]:
    """Logical screen size and the number of frames (TensorFlow decodes them all)."""
    if len(data) < 13:
        raise ValueError("damaged GIF header")
    width, height, flags = struct.unpack("<HHB", data[6:11])
    i, frames = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0), 0
    try:
        while data[i] != 0x3B:  # trailer
            if data[i] == 0x2C:  # image descriptor, optional local colour table, LZW minimum code size
                frames, local = frames + 1, data[i + 9]
                i += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0) + 1
            elif data[i] == 0x21:  # extension: label, then sub-blocks
                i += 2
            else:
                break
            while data[i]:  # data sub-blocks up to the empty one
                i += data[i] + 1
            i += 1
    except IndexError:
        pass  # a truncated GIF: the frames counted so far
    return width, height, max(frames, 1)


def too_large(path: str, limit: int) -> str | None:
    """Why `path` must not be decoded under `limit` pixels (width x height x frames), or None when it may be
    (also for files that are not images, which the decoder then refuses)."""
    try:
        size = image_pixels(path)
    except ValueError as e:
        return f"{e}; its size cannot be read, so it is not decoded"
    except OSError:
        return None  # the decoder names what is wrong with it
    if size is None or size[0] * size[1] * size[2] <= limit:
        return None
    width, height, frames = size
    frames_text = f" x {frames} frames" if frames > 1 else ""
    return (f"{width} x {height}{frames_text} = {width * height * frames:,} pixels, above --max_image_pixels="
            f"{limit} (a guard against decompression bombs; raise it to read this image)")
