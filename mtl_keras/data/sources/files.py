"""Your own images as a dataset: a class-hierarchy folder tree or a CSV label file.

    python -m mtl_keras.train --flagfile=configs/quickstart.flags --dataset=folder --data_dir=ROOT
    python -m mtl_keras.train --flagfile=configs/quickstart.flags --dataset=csv --data_dir=labels.csv

`folder`: ROOT/COARSE/FINE/*.{jpg,jpeg,png,bmp,gif} (nested folders below FINE are fine). Optional
ROOT/train, ROOT/val, ROOT/test trees are the splits; a missing val or test split is carved from train,
stratified per fine class with a fixed seed, so the same files always give the same splits.
`csv`: columns path,fine,coarse[,split], paths relative to the CSV's folder, classes as names or as ids.
Class ids are the sorted names; the fine -> coarse map comes from the data and must be a function.

Partial labels: images directly in ROOT/COARSE/ (not in a FINE folder) and CSV rows with an empty fine cell
carry the coarse label only (fine id -1: no fine loss, left out of fine metrics). A CSV row with an empty coarse
cell takes its fine class's superclass from the other rows (the hierarchy says which it is); a fine class that
no row places in a superclass is an error.

Files are listed once, then decoded and resized to `image_size` x `image_size` x 3 in tf.data (parallel map,
no Python per image). When the decoded pixels fit in `cache_mb` they are decoded once into the same uint8
arrays the built-in datasets use; otherwise splits hold `FileImages` and `pipeline.pipeline` streams the files
every epoch. Files that cannot be decoded are found by that first pass, skipped with a warning naming each,
and listed in `DatasetInfo.skipped_files`; the streaming pipeline also drops (never dies on) a file that
breaks later.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from absl import logging

from mtl_keras.data.images import FileImages, decode_files, why_undecodable
from mtl_keras.data.splits import assign_splits, train_subset
from mtl_keras.data.types import DatasetInfo, Source, Split
from mtl_keras.errors import DatasetError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
SPLITS = ("train", "val", "test")
_KINDS = ", ".join(EXTENSIONS)
_IGNORED = {"thumbs.db", "desktop.ini", "__macosx"}  # OS litter; dot-files are ignored too
_NAMED_WARNINGS = 20


def _hidden(entry: os.DirEntry | Path) -> bool:
    return entry.name.startswith(".") or entry.name.lower() in _IGNORED


def _scan(folder: Path) -> tuple[list[Path], list[Path]]:
    """Sorted visible subfolders and files of `folder`."""
    entries = sorted((e for e in os.scandir(folder) if not _hidden(e)), key=lambda e: e.name)
    return [Path(e.path) for e in entries if e.is_dir()], [Path(e.path) for e in entries if e.is_file()]


def _is_image(path: str | Path) -> bool:
    return str(path).lower().endswith(EXTENSIONS)


def _raise_other_files(others: list[str], where: str) -> None:
    if others:
        more = f" (and {len(others) - 1} more such files)" if len(others) > 1 else ""
        raise DatasetError(f"{others[0]}{more}: not a {_KINDS} file; convert or remove files of other "
                           f"kinds from {where}")


def _walk_tree(tree: Path, split: int, records: list, parents: dict[str, tuple[str, Path]]) -> None:
    """Appends (path, fine, coarse, split) for every image of TREE/COARSE/FINE/...; errors are one line."""
    coarse_dirs, files = _scan(tree)
    misplaced = [f for f in files if _is_image(f)]  # other files at the top (README, LICENSE) are not data
    if misplaced:
        raise DatasetError(f"{misplaced[0]}: images go in {tree}/COARSE/FINE/, not in {tree} itself")
    if not coarse_dirs:
        raise DatasetError(f"{tree} has no class folders: expected {tree}/COARSE/FINE/*.jpg (or {_KINDS})")
    others: list[str] = []
    for coarse_dir in coarse_dirs:
        fine_dirs, files = _scan(coarse_dir)
        # Images right in COARSE/ carry the coarse label only; other files there are not data.
        records.extend((str(f), None, coarse_dir.name, split) for f in files if _is_image(f))
        others.extend(str(f) for f in files if not _is_image(f))
        if not fine_dirs and not any(_is_image(f) for f in files):
            raise DatasetError(f"{coarse_dir}: empty coarse class, no fine-class folders or images in it")
        for fine_dir in fine_dirs:
            fine = fine_dir.name
            seen = parents.setdefault(fine, (coarse_dir.name, fine_dir))
            if seen[0] != coarse_dir.name:
                raise DatasetError(f"fine class {fine!r} is under two coarse classes: {seen[1]} and {fine_dir}; "
                                   f"fine names must be unique, rename one")
            count = len(records)
            for folder, subdirs, names in os.walk(fine_dir, followlinks=True):
                subdirs[:] = sorted(d for d in subdirs if not _hidden(Path(d)))
                for name in sorted(n for n in names if not _hidden(Path(n))):
                    path = os.path.join(folder, name)
                    if _is_image(name):
                        records.append((path, fine, coarse_dir.name, split))
                    else:
                        others.append(path)
            if len(records) == count:
                raise DatasetError(f"{fine_dir}: empty class, no {_KINDS} files in it")
    _raise_other_files(others, str(tree))


def list_folder(root: str) -> tuple[list, str]:
    """Records (path, fine name, coarse name, split id) of every image under ROOT; the source for messages."""
    top = Path(root).expanduser()
    if not top.is_dir():
        raise DatasetError(f"--data_dir={root}: no such folder; expected ROOT/COARSE/FINE/*.jpg (or {_KINDS})")
    folders, _ = _scan(top)
    split_dirs = {d.name: d for d in folders if d.name in SPLITS}
    if split_dirs and ("train" not in split_dirs or len(split_dirs) != len(folders)):
        others = ", ".join(d.name for d in folders if d.name not in SPLITS) or "none"
        raise DatasetError(f"{top} mixes split folders ({', '.join(split_dirs)}) with class folders ({others})"
                           f"; use ROOT/train/COARSE/FINE (ROOT/val, ROOT/test optional) or no split folders")
    records: list = []
    parents: dict[str, tuple[str, Path]] = {}
    for name, tree in sorted(split_dirs.items(), key=lambda kv: SPLITS.index(kv[0])) or [("train", top)]:
        _walk_tree(tree, SPLITS.index(name), records, parents)
    return records, str(top)


def list_csv(csv_file: str) -> tuple[list, str]:
    """Records (path, fine, coarse, split id) from a CSV label file; errors name the file and line."""
    path = Path(csv_file).expanduser()
    if not path.is_file():
        raise DatasetError(f"--data_dir={csv_file}: no such CSV file; expected columns path,fine,coarse[,split]")
    records, others, lines = [], [], {}
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets often write a BOM
        reader = csv.reader(f)
        header = [h.strip().lower() for h in next(reader, [])]
        missing = [c for c in ("path", "fine", "coarse") if c not in header]
        if missing:
            raise DatasetError(f"{path}: header lacks column {', '.join(missing)}; expected path,fine,coarse"
                               f"[,split] in the first line")
        column = {c: header.index(c) for c in ("path", "fine", "coarse", "split") if c in header}
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DatasetError(f"{where}: {len(row)} fields, the header has {len(header)}")
            value = {c: row[i].strip() for c, i in column.items()}
            if not value["path"]:
                raise DatasetError(f"{where}: empty path")
            if not value["fine"] and not value["coarse"]:
                raise DatasetError(f"{where}: empty fine and coarse; a row needs at least one label")
            split = value.get("split") or "train"
            if split not in SPLITS:
                raise DatasetError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
            file = os.path.join(path.parent, os.path.expanduser(value["path"]))
            record = (file, value["fine"] or None, value["coarse"] or None, SPLITS.index(split))
            (records if _is_image(file) else others).append(record)
            if value["fine"] and value["coarse"]:
                lines.setdefault(value["fine"], {}).setdefault(value["coarse"], []).append(reader.line_num)
    _raise_other_files([r[0] for r in others], str(path))
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


def _class_ids(values: list[str | None], source: str, head: str) -> tuple[tuple[str, ...], np.ndarray]:
    """Names and ids of one head: ids as given when every value is an integer, else the sorted names; -1 where a
    value is missing (None: a partial label)."""
    given = [v for v in values if v is not None]
    if not given:
        raise DatasetError(f"{source}: no image has a {head} label")
    if all(v.isdigit() for v in given):
        ids = np.asarray([-1 if v is None else int(v) for v in values], np.int32)
        unused = sorted(set(range(ids.max() + 1)) - set(ids.tolist()))
        if unused:
            raise DatasetError(f"{source}: {head} ids {', '.join(map(str, unused[:5]))} have no rows; ids must "
                               f"run 0..N-1 (or use class names)")
        return tuple(str(i) for i in range(ids.max() + 1)), ids
    names = tuple(sorted(set(given)))
    ids = np.searchsorted(np.asarray(names), np.asarray([v or "" for v in values])).astype(np.int32)
    return names, np.where(np.asarray([v is None for v in values]), -1, ids).astype(np.int32)


def load(settings) -> Source:
    """The splits of a `folder` tree or `csv` label file (`settings`: a config.DataConfig); see the module
    docstring. Its val and test splits are its own (or carved with a fixed seed), never --seed's."""
    kind, data_dir, image_size = settings.dataset, settings.data_dir, settings.folder_image_size
    validation_fraction, test_fraction = settings.validation_fraction, settings.folder_test_fraction
    max_train_examples, cache_mb = settings.max_train_examples, settings.folder_cache_mb
    if not data_dir:
        raise DatasetError(f"--dataset={kind} needs --data_dir="
                           f"{'ROOT (the image folder tree)' if kind == 'folder' else 'FILE.csv'}")
    records, source = list_folder(data_dir) if kind == "folder" else list_csv(data_dir)
    paths = np.asarray([r[0] for r in records], object)
    fine_names, fine = _class_ids([r[1] for r in records], source, "fine")
    coarse_names, coarse = _class_ids([r[2] for r in records], source, "coarse")
    fine_to_coarse = np.zeros(len(fine_names), np.int32)
    fine_to_coarse[fine[fine >= 0]] = coarse[fine >= 0]
    split = assign_splits(np.asarray([r[3] for r in records], np.int8), fine, validation_fraction, test_fraction)
    unseen = sorted(set(fine[split > 0].tolist()) - set(fine[split == 0].tolist()) - {-1})
    if unseen:
        raise DatasetError(f"{source}: fine class {fine_names[unseen[0]]!r} has val/test images but none to "
                           f"train on")
    train = train_subset(split, max_train_examples)
    keep = np.concatenate([train, np.flatnonzero(split == 1), np.flatnonzero(split == 2)])
    in_memory = len(keep) * image_size * image_size * 3 <= cache_mb * 2 ** 20
    images, ok = decode_files(paths[keep], image_size if in_memory else None)
    bad = paths[keep][~ok]
    for path in bad[:_NAMED_WARNINGS]:
        logging.warning("skipping %s: cannot decode it (%s)", path, why_undecodable(path))
    if len(bad) > _NAMED_WARNINGS:
        logging.warning("skipping %d more files that cannot be decoded (a training run lists all in "
                        "WORKDIR/skipped_files.txt)", len(bad) - _NAMED_WARNINGS)
    if not ok.any():
        raise DatasetError(f"{source}: none of its {len(keep)} image files could be decoded, e.g. {bad[0]} "
                           f"({why_undecodable(bad[0])})")
    info = DatasetInfo(kind, fine_names, coarse_names, tuple(fine_to_coarse.tolist()),
                            skipped_files=tuple(bad.tolist()))
    bounds = np.cumsum([0, len(train), np.count_nonzero(split == 1), np.count_nonzero(split == 2)])
    edges = np.cumsum([0] + [np.count_nonzero(ok[a:b]) for a, b in zip(bounds[:-1], bounds[1:])])
    keep = keep[ok]
    if in_memory and not ok.all():
        images = images[ok]  # the one copy, only when files failed; the splits below are views

    def part(s: int) -> Split:
        rows = slice(edges[s], edges[s + 1])
        pixels = images[rows] if in_memory else FileImages(paths[keep[rows]], image_size)
        return Split(pixels, fine[keep[rows]], coarse[keep[rows]])

    return Source(info, part(0), part(2), val=part(1))
