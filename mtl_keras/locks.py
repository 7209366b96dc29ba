"""One training run per workdir: an exclusive `flock` on WORKDIR/.lock, held for the whole run; and the short
`folder_lock` / `hold` an export takes on its model folder and on its temporary version folder.

Two runs on one workdir would interleave checkpoints, history.csv and model.keras. The kernel drops a flock
when its holder exits, even on `kill -9`, so a crashed run never leaves a stale lock; the file itself stays
and records the last holder (pid, host, start) only to name it in the refusal.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from mtl_keras.errors import RunError

LOCK_NAME = ".lock"


def refuse_links(folder: str | Path, flag: str) -> None:
    """RunError naming the first symbolic link inside `folder` (the folder itself may be one): a run, an export
    or a grid writes its files there, and a link planted there (WORKDIR/.lock or history.csv -> a file
    elsewhere) once made training truncate and overwrite its target. Links are not followed while looking."""
    for parent, folders, files in os.walk(folder):
        for name in sorted(folders + files):
            path = os.path.join(parent, name)
            if os.path.islink(path):
                raise RunError(f"{path} is a symbolic link (to {os.readlink(path)}); {flag} is written in place, "
                               f"never through a link: remove the link")


def _open_lock(path: Path) -> int:
    """WORKDIR/.lock or FOLDER/.lock opened for writing, never through a symbolic link (O_NOFOLLOW)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise RunError(f"{path} is a symbolic link (to {os.readlink(path)}); a lock file is never written through "
                       f"a link: remove it") from None


def _holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text())
        return f"pid {h['pid']} on {h['host']} (started {h['started']})"
    except (OSError, ValueError, KeyError, TypeError):  # the holder is between taking the lock and writing it
        return "another process"


@contextlib.contextmanager
def workdir_lock(workdir: str | Path, flag: str):
    """Holds WORKDIR/.lock for the `with` block; raises RunError naming the holder (and `flag`, e.g.
    --workdir=W) when another process holds it."""
    path = Path(workdir) / LOCK_NAME
    fd = _open_lock(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"{flag} is in use by {_holder(path)}; wait for it or use another --workdir") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        refuse_links(workdir, flag)  # held: no other run of ours adds files meanwhile
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the lock


@contextlib.contextmanager
def folder_lock(folder: str | Path):
    """Holds FOLDER/.lock exclusively for the `with` block, waiting for another holder: for short critical
    sections (an export picking its version), not for a whole run."""
    fd = _open_lock(Path(folder) / LOCK_NAME)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def hold(folder: str | Path) -> int | None:
    """An open descriptor holding an exclusive flock on the folder itself (closing it lets go), or None
    where the filesystem cannot lock a folder; raises BlockingIOError when another process holds it."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise
    except OSError:  # e.g. NFS, where flock is emulated with fcntl locks and needs a file open for writing
        os.close(fd)
        return None
    return fd
