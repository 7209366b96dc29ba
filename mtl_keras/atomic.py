"""Atomic file writes: a reader (a resuming run, TF Serving, a test) never sees half a file."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


def umask() -> int:
    """The process's umask: read from /proc on Linux; elsewhere set and restored (a moment other threads see)."""
    try:
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


@contextlib.contextmanager
def replacing(path: str | Path, mode: str = "w"):
    """The open file (`mode` "w" or "wb") of a temporary file in `path`'s folder, renamed to `path` when the block
    ends, or removed when it raises."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp's 0600 would hide the file from other users
        with os.fdopen(fd, mode) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Writes `text` to `path` through a temporary file in the same folder and a rename."""
    with replacing(path) as f:
        f.write(text)
    return Path(path)


def write_json(path: str | Path, value, indent: int = 1) -> Path:
    return write_text(path, json.dumps(value, indent=indent) + "\n")
