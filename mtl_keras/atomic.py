"""Atomic file writes: a reader (a resuming run, TF Serving, a test) never sees half a file."""

from __future__ import annotations

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


def write_text(path: str | Path, text: str) -> Path:
    """Writes `text` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp's 0600 would hide the run's records from other users
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, value, indent: int = 1) -> Path:
    return write_text(path, json.dumps(value, indent=indent) + "\n")
