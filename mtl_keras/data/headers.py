"""How many pixels an image file decodes to, read from its header without decoding it: the guard against
decompression bombs (a 420 KB 12000 x 12000 PNG decoded to 4.3 GB; a 23000 x 23000 one killed `predict`).

The figure must be what the decoder allocates, read the way the decoder reads the file:
- JPEG: libjpeg's marker scan. A byte 0xFF followed by 0x00 is no marker (libjpeg skips it), so a walker that
  took `FF 00` for a segment with a length landed on a fake 16 x 16 frame header planted in an EXIF block while
  libjpeg decoded the real 16000 x 16000 one (7.0 GB). Every frame header before the first scan counts.
- GIF: giflib allocates every frame at the frame's own size, whatever the logical screen says (a 1 x 1 screen
  over one 20000 x 20000 frame took 5.6 GB), and TensorFlow reads all frames: frames x the largest of the
  screen and every frame.
- Signatures as TensorFlow's decode_image sniffs them: anything starting `GIF8` is a GIF to it (`GIF8zz`
  decodes). WebP and JPEG XL, which it also decodes, are refused: this reader does not size them.
Only regular files are opened (without blocking, so a FIFO cannot hang the caller) and read: a link to
/dev/zero was read without end. Plain Python, no TensorFlow, no Pillow; `predict` and the folder / CSV loader
call `too_large` before they decode a file.
"""

from __future__ import annotations

import os
import re
import stat
import struct

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_HEAD = 64 * 1024  # enough for every header but a JPEG with large EXIF / ICC segments, which is read on
_OTHER_DECODABLE = ((re.compile(rb"RIFF....WEBP", re.S), "WebP"), (re.compile(rb"\xff\x0a"), "JPEG XL"),
                    (re.compile(rb"\x00\x00\x00\x0cJXL \r\n\x87\n"), "JPEG XL"))


class NotRegularFile(ValueError):
    """A FIFO, a device, a socket or a folder where an image file was expected: never read."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK,
                       "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def check_regular(path: str) -> None:
    """NotRegularFile unless `path` (links followed) is a regular file; OSError when it cannot be stat'ed."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotRegularFile(f"{_kind(mode)}, not an image file; it is not read")


def image_pixels(path: str) -> tuple[int, int, int] | None:
    """(width, height, frames) that decoding a PNG / JPEG / GIF / BMP costs, from its headers; None for a file
    TensorFlow would not decode either. ValueError when the file claims to be an image but its header cannot be
    read or its kind is not sized here; NotRegularFile (a ValueError) for anything but a regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opened for reading would block until a writer came
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotRegularFile(f"{_kind(mode)}, not an image file; it is not read")
    with os.fdopen(fd, "rb") as f:
        head = f.read(_HEAD)
        if head.startswith(b"\x89PNG\r\n\x1a\n"):
            if head[12:16] != b"IHDR" or len(head) < 24:
                raise ValueError("damaged PNG header")
            return (*struct.unpack(">II", head[16:24]), 1)
        if head.startswith(b"GIF8"):  # TensorFlow's test; giflib then checks only "GIF"
            return _gif(head + f.read())
        if head.startswith(b"BM"):
            if len(head) < 26:
                raise ValueError("damaged BMP header")
            size = struct.unpack("<I", head[14:18])[0]
            width, height = struct.unpack("<HH", head[18:22]) if size == 12 else struct.unpack("<ii", head[18:26])
            return abs(width), abs(height), 1  # a negative height is a top-down BMP
        if head.startswith(b"\xff\xd8\xff"):
            return _jpeg(head, f)
        for signature, name in _OTHER_DECODABLE:
            if signature.match(head):
                raise ValueError(f"a {name} image: only PNG, JPEG, GIF and BMP images are read")
    return None


def _jpeg(head: bytes, f) -> tuple[int, int, int]:
    """The largest frame header (SOF) before the first scan, found as libjpeg finds markers (next_marker):
    bytes up to an 0xFF are skipped, 0xFF fill bytes too, and `FF 00` is a stuffed zero, not a marker."""
    data, i, frames = bytearray(head), 2, []

    def need(n: int) -> bool:  # data[i:i + n] read; False when the file ends first
        nonlocal data
        while len(data) < i + n:
            more = f.read(_HEAD)
            if not more:
                return False
            data += more
        return True

    while need(2):
        if data[i] != 0xFF:  # stray bytes between segments: libjpeg skips them
            found = data.find(b"\xff", i)
            i = found if found >= 0 else len(data)
            continue
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x00:  # a stuffed zero: no marker, the scan for the next 0xFF goes on after it
            i += 2
        elif marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
        elif marker in (0xD9, 0xDA):  # end of image, or the first scan: libjpeg has read its frame header
            break
        else:
            if not need(4):
                break
            length = struct.unpack(">H", data[i + 2:i + 4])[0]
            if marker in _JPEG_SOF:
                if not need(9):
                    break
                height, width = struct.unpack(">HH", data[i + 5:i + 9])
                frames.append((width, height))
            i += 2 + length
    if not frames:
        raise ValueError("JPEG without a frame header")
    return max(w for w, _ in frames), max(h for _, h in frames), 1


def _gif(data: bytes) -> tuple[int, int, int]:
    """(width, height, frames): the largest of the logical screen and every frame's own size, and the number of
    frames (giflib allocates each frame at its size; TensorFlow reads them all)."""
    if len(data) < 13:
        raise ValueError("damaged GIF header")
    width, height, flags = struct.unpack("<HHB", data[6:11])
    i, frames = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0), 0
    padded = data + bytes(16)  # a descriptor cut short reads as zeros (giflib has allocated nothing for it)
    try:
        while data[i] != 0x3B:  # trailer
            if data[i] == 0x2C:  # image descriptor, optional local colour table, LZW minimum code size
                frame_width, frame_height = struct.unpack("<HH", padded[i + 5:i + 9])
                frames, width, height = frames + 1, max(width, frame_width), max(height, frame_height)
                local = data[i + 9]
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
    (also for files that are not images, which the decoder then refuses). Anything but a regular file is refused
    here, whatever the limit."""
    try:
        size = image_pixels(path)
    except NotRegularFile as e:
        return str(e)
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
