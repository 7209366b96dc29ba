"""The image files of a `folder` dataset: ROOT[/SPLIT]/COARSE/FINE/**/*.{jpg,jpeg,png,bmp,gif}, listed in sorted
order with their labels (files.py turns them into splits). Also the file rules the CSV listing shares: the
image extensions and split names. Symlinks are followed, but never into a loop or to the same data twice (`_Seen`).
"""

from __future__ import annotations

import os
from pathlib import Path

from absl import logging

from mtl_keras.errors import DatasetError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
SPLITS = ("train", "val", "test")
KINDS = ", ".join(EXTENSIONS)
_IGNORED = {"thumbs.db", "desktop.ini", "__macosx"}  # OS litter; dot-files are ignored too


def _hidden(entry: os.DirEntry | Path) -> bool:
    return entry.name.startswith(".") or entry.name.lower() in _IGNORED


def _utf8(path: str | Path) -> None:
    """Names become class names and JSON / SavedModel strings: one that is not UTF-8 is refused in one line."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:  # os.fsdecode kept the undecodable bytes as surrogates
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        raise DatasetError(f"{shown}: the name is not UTF-8 text; rename it (e.g. `convmv -f latin1 -t utf8 "
                           f"--notest -r FOLDER`)") from None


def _scan(folder: Path) -> tuple[list[Path], list[Path]]:
    """Sorted visible subfolders and files of `folder`."""
    entries = sorted((e for e in os.scandir(folder) if not _hidden(e)), key=lambda e: e.name)
    for e in entries:
        _utf8(e.path)
    return [Path(e.path) for e in entries if e.is_dir()], [Path(e.path) for e in entries if e.is_file()]


class _Seen:
    """What a folder listing has read, by (device, inode), so symlinks cannot repeat data: a folder reached twice
    (a symlink loop such as `cat/up -> ..`, which once turned 48 images into 1,008 examples with the same files in
    train and test, or a second link to a folder) and a link back to a folder above the tree are errors; a file
    reached twice (a link or a hard link) counts once when its labels agree and is an error when they do not.
    Links to folders elsewhere (ROOT -> /data/c10, COARSE/FINE -> /photos/cats) read as usual."""

    def __init__(self, top: Path):
        self.above = {self._key(p) for p in Path(os.path.realpath(top)).parents}
        self.folders: dict[tuple[int, int], str] = {}
        self.files: dict[tuple[int, int], int] = {}  # -> index in the records
        self.repeated: list[tuple[str, str]] = []  # (path, the first path of the same file)

    @staticmethod
    def _key(path) -> tuple[int, int]:
        st = os.stat(path)
        return st.st_dev, st.st_ino

    def folder(self, path) -> None:
        key = self._key(path)
        if key in self.above:
            raise DatasetError(f"{path}: symlink loop, it leads to {os.path.realpath(path)}, a folder above the "
                               f"data; remove the link")
        first = self.folders.setdefault(key, str(path))
        if first != str(path):
            raise DatasetError(f"{path} is the folder {first} again (a symlink loop or a second link to it), so its "
                               f"images would count twice; remove the link")

    def add(self, record: tuple, records: list) -> None:
        """Appends `record` (path, fine, coarse, split) unless its file is already listed."""
        try:
            key = self._key(record[0])
        except OSError:  # a dangling link: the decoder names it
            records.append(record)
            return
        first = self.files.setdefault(key, len(records))
        if first == len(records):
            records.append(record)
        elif records[first][1:] != record[1:]:
            raise DatasetError(f"{record[0]} is the file {records[first][0]} again (a link) with other labels or "
                               f"split; an image needs one place in the tree, remove one")
        else:
            self.repeated.append((record[0], records[first][0]))


def is_image(path: str | Path) -> bool:
    return str(path).lower().endswith(EXTENSIONS)


def raise_other_files(others: list[str], where: str) -> None:
    if others:
        more = f" (and {len(others) - 1} more such files)" if len(others) > 1 else ""
        raise DatasetError(f"{others[0]}{more}: not a {KINDS} file; convert or remove files of other "
                           f"kinds from {where}")


def _walk_tree(tree: Path, split: int, records: list, parents: dict[str, tuple[str, Path]], seen: _Seen) -> None:
    """Appends (path, fine, coarse, split) for every image of TREE/COARSE/FINE/...; errors are one line."""
    seen.folder(tree)
    coarse_dirs, files = _scan(tree)
    misplaced = [f for f in files if is_image(f)]  # other files at the top (README, LICENSE) are not data
    if misplaced:
        raise DatasetError(f"{misplaced[0]}: images go in {tree}/COARSE/FINE/, not in {tree} itself")
    if not coarse_dirs:
        raise DatasetError(f"{tree} has no class folders: expected {tree}/COARSE/FINE/*.jpg (or {KINDS})")
    others: list[str] = []
    for coarse_dir in coarse_dirs:
        seen.folder(coarse_dir)
        fine_dirs, files = _scan(coarse_dir)
        # Images right in COARSE/ carry the coarse label only; other files there are not data.
        for f in files:
            if is_image(f):
                seen.add((str(f), None, coarse_dir.name, split), records)
        others.extend(str(f) for f in files if not is_image(f))
        if not fine_dirs and not any(is_image(f) for f in files):
            raise DatasetError(f"{coarse_dir}: empty coarse class, no fine-class folders or images in it")
        for fine_dir in fine_dirs:
            fine = fine_dir.name
            parent = parents.setdefault(fine, (coarse_dir.name, fine_dir))
            if parent[0] != coarse_dir.name:
                raise DatasetError(f"fine class {fine!r} is under two coarse classes: {parent[1]} and {fine_dir}; "
                                   f"fine names must be unique, rename one")
            count = len(records)
            for folder, subdirs, names in os.walk(fine_dir, followlinks=True):
                seen.folder(folder)  # before os.walk descends: a loop ends here, at its first repeat
                subdirs[:] = sorted(d for d in subdirs if not _hidden(Path(d)))
                for name in sorted(n for n in names if not _hidden(Path(n))):
                    path = os.path.join(folder, name)
                    _utf8(path)
                    if is_image(name):
                        seen.add((path, fine, coarse_dir.name, split), records)
                    else:
                        others.append(path)
            if len(records) == count:
                raise DatasetError(f"{fine_dir}: empty class, no {KINDS} files in it")
    raise_other_files(others, str(tree))


def list_folder(root: str) -> tuple[list, str]:
    """Records (path, fine name, coarse name, split id) of every image under ROOT; the source for messages."""
    top = Path(root).expanduser()
    if not top.is_dir():
        raise DatasetError(f"--data_dir={root}: no such folder; expected ROOT/COARSE/FINE/*.jpg (or {KINDS})")
    folders, _ = _scan(top)
    split_dirs = {d.name: d for d in folders if d.name in SPLITS}
    if split_dirs and ("train" not in split_dirs or len(split_dirs) != len(folders)):
        others = ", ".join(d.name for d in folders if d.name not in SPLITS) or "none"
        raise DatasetError(f"{top} mixes split folders ({', '.join(split_dirs)}) with class folders ({others})"
                           f"; use ROOT/train/COARSE/FINE (ROOT/val, ROOT/test optional) or no split folders")
    records: list = []
    parents: dict[str, tuple[str, Path]] = {}
    seen = _Seen(top)
    if split_dirs:
        seen.folder(top)
    for name, tree in sorted(split_dirs.items(), key=lambda kv: SPLITS.index(kv[0])) or [("train", top)]:
        _walk_tree(tree, SPLITS.index(name), records, parents, seen)
    if seen.repeated:
        path, first = seen.repeated[0]
        more = f" (and {len(seen.repeated) - 1} more such files)" if len(seen.repeated) > 1 else ""
        logging.warning("counting %s once: %s is the same file (a link)%s", first, path, more)
    return records, str(top)
