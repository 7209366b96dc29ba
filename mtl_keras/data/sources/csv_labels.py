"""The rows of a `csv` dataset: columns path,fine,coarse[,split] (any order, header in the first line), image
paths relative to the CSV's folder, classes as names or as ids; files.py turns them into splits.

Every error is one line naming the file and line. What a hostile or careless file could do and does not:
- read files elsewhere: a path that is absolute, starts with ~ or resolves (symlinks too) outside the CSV's
  folder is refused unless `allow_outside` (--csv_allow_outside_paths);
- put one image in train and test: a file listed twice (by device and inode, so through a symlink or a hard
  link too) counts once when both rows say the same, and is an error naming both lines when they do not;
- slip past the fine -> coarse check: a head whose cells are all numbers holds ids, normalised to their
  integer ('01' and '1' are id 1) before any check; negative, fractional or > int32 ids are refused;
- end in a traceback: a non-UTF-8 file, a NUL byte or a field over csv's 128 KB limit are one line.
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path

from absl import logging

from mtl_keras.data.sources.folder_tree import SPLITS, is_image, raise_other_files
from mtl_keras.errors import DatasetError

MAX_ID = 2 ** 31 - 1  # ids are int32 labels
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)  # what looks like an id to a user


def _rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line, {column: stripped cell}) of every non-blank row below the header."""
    raw = path.read_bytes()
    raw = raw.removeprefix(b"\xef\xbb\xbf")  # spreadsheets often write a BOM
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DatasetError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save the file as UTF-8, "
                           f"e.g. `iconv -f latin1 -t utf-8`") from None
    if "\0" in text:  # csv accepts it since Python 3.11; as a class name it reached the exported model
        raise DatasetError(f"{path}:{text[:text.index(chr(0))].count(chr(10)) + 1}: a NUL byte; is it a label "
                           f"file? (save it as UTF-8 text)")
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = []
    try:
        header = [h.strip().lower() for h in next(reader, [])]
        missing = [c for c in ("path", "fine", "coarse") if c not in header]
        if missing:
            raise DatasetError(f"{path}: header lacks column {', '.join(missing)}; expected path,fine,coarse"
                               f"[,split] in the first line")
        column = {c: header.index(c) for c in ("path", "fine", "coarse", "split") if c in header}
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DatasetError(f"{path}:{reader.line_num}: {len(row)} fields, the header has {len(header)}")
            rows.append((reader.line_num, {c: row[i].strip() for c, i in column.items()}))
    except csv.Error as e:  # a field over csv.field_size_limit(), a NUL byte, ...
        raise DatasetError(f"{path}:{reader.line_num}: not a CSV row ({e}); is it a label file?") from None
    return rows


def _normalise_ids(path: Path, rows: list, head: str) -> None:
    """When every `head` cell looks like a number the head holds ids: each becomes its integer's text, so '01'
    and '1' are one class for every check that follows; other numbers are refused, naming the line."""
    cells = [(line, value[head]) for line, value in rows if value[head]]
    if not cells or not all(_NUMBER.fullmatch(cell) for _, cell in cells):
        return  # class names
    for line, value in rows:
        cell = value[head]
        if not cell:
            continue
        if not cell.isdigit():
            raise DatasetError(f"{path}:{line}: {head} id {cell!r} is not a whole number 0, 1, 2, ... (ids run "
                               f"0..N-1; or use class names)")
        if int(cell) > MAX_ID:
            raise DatasetError(f"{path}:{line}: {head} id {cell} is above {MAX_ID}, the largest id (ids run 0..N-1)")
        value[head] = str(int(cell))


def _image_path(where: str, folder: Path, base: str, cell: str, allow_outside: bool) -> str:
    """The file a path cell names, confined to the CSV's folder (real path `base`) unless `allow_outside`."""
    if allow_outside:
        return os.path.join(folder, os.path.expanduser(cell))
    hint = "paths are relative to the CSV's folder; move the images under it or pass --csv_allow_outside_paths"
    if cell.startswith("~") or os.path.isabs(cell):
        raise DatasetError(f"{where}: image path {cell!r} is {'absolute' if os.path.isabs(cell) else 'under ~'}; "
                           f"{hint}")
    file = os.path.join(folder, cell)
    real = os.path.realpath(file)
    if os.path.commonpath([real, base]) != base:
        raise DatasetError(f"{where}: image path {cell!r} leads outside {folder} (to {real}); {hint}")
    return file


def _identity(file: str) -> object:
    """What makes two rows one image: the file's (device, inode), as the folder source compares files, so a hard
    link is the same image (its real path is another); the real path where it cannot be stat'ed (missing)."""
    try:
        st = os.stat(file)
    except OSError:
        return os.path.realpath(file)
    return st.st_dev, st.st_ino


def _cells(record: tuple) -> str:
    return f"{record[1] or ''},{record[2] or ''},{SPLITS[record[3]]}"


def list_csv(csv_file: str, allow_outside: bool = False) -> tuple[list, str]:
    """Records (path, fine, coarse, split id) from a CSV label file; the source for messages."""
    path = Path(csv_file).expanduser()
    if not path.is_file():
        raise DatasetError(f"--data_dir={csv_file}: no such CSV file; expected columns path,fine,coarse[,split]")
    rows = _rows(path)
    for head in ("fine", "coarse"):
        _normalise_ids(path, rows, head)
    base = os.path.realpath(path.parent)
    records, others, lines = [], [], {}
    first: dict[object, tuple[int, tuple]] = {}  # the file's identity -> (line, record) of its first row
    repeated = []
    for line, value in rows:
        where = f"{path}:{line}"
        if not value["path"]:
            raise DatasetError(f"{where}: empty path")
        if not value["fine"] and not value["coarse"]:
            raise DatasetError(f"{where}: empty fine and coarse; a row needs at least one label")
        split = value.get("split") or "train"
        if split not in SPLITS:
            raise DatasetError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
        file = _image_path(where, path.parent, base, value["path"], allow_outside)
        record = (file, value["fine"] or None, value["coarse"] or None, SPLITS.index(split))
        seen_line, seen = first.setdefault(_identity(file), (line, record))
        if seen_line != line:
            if seen[1:] != record[1:]:
                raise DatasetError(f"{where}: {value['path']!r} is the image of line {seen_line} again with other "
                                   f"labels or split ({_cells(seen)} there, {_cells(record)} here); give each "
                                   f"image one row")
            repeated.append((line, seen_line))
            continue
        (records if is_image(file) else others).append(record)
        if value["fine"] and value["coarse"]:
            lines.setdefault(value["fine"], {}).setdefault(value["coarse"], []).append(line)
    if repeated:
        logging.warning("%s: %d rows repeat an earlier row's image and labels (line %d repeats line %d); each "
                        "image counts once", path, len(repeated), *repeated[0])
    raise_other_files([r[0] for r in others], str(path))
    if not records:
        raise DatasetError(f"{path} has no rows below its header")
    clashes = [(fine, by) for fine, by in lines.items() if len(by) > 1]
    if clashes:
        fine, by = clashes[0]
        parts = " and ".join(f"{c!r} (line{'s' * (len(n) > 1)} {', '.join(map(str, n[:5]))}"
                             f"{', ...' * (len(n) > 5)})" for c, n in by.items())
        more = f"; {len(clashes) - 1} more fine classes clash" if len(clashes) > 1 else ""
        raise DatasetError(f"{path}: fine class {fine!r} maps to two coarse classes: {parts}{more}")
    parent = {fine: next(iter(by)) for fine, by in lines.items()}
    orphans = sorted({r[1] for r in records if r[1] is not None and r[1] not in parent})
    if orphans:
        raise DatasetError(f"{path}: fine class {orphans[0]!r} has no row with a coarse class, so its superclass "
                           f"is unknown; give it in at least one row")
    return [(f, fine, coarse or parent[fine], s) for f, fine, coarse, s in records], str(path)
