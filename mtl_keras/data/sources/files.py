"""Your own images as a dataset: a class-hierarchy folder tree or a CSV label file.

    mtl-keras train --config=quickstart --dataset=folder --data_dir=ROOT
    mtl-keras train --config=quickstart --dataset=csv --data_dir=labels.csv

`folder`: ROOT/COARSE/FINE/*.{jpg,jpeg,png,bmp,gif} (nested folders below FINE are fine). Optional
ROOT/train, ROOT/val, ROOT/test trees are the splits; a missing val or test split is carved from train,
stratified per fine class with a fixed seed, so the same files always give the same splits.
`csv`: columns path,fine,coarse[,split], paths relative to the CSV's folder, classes as names or as ids.
Class ids are the sorted names; the fine -> coarse map comes from the data and must be a function.

Partial labels: images directly in ROOT/COARSE/ (not in a FINE folder) and CSV rows with an empty fine cell
carry the coarse label only (fine id -1: no fine loss, left out of fine metrics). A CSV row with an empty coarse
cell takes its fine class's superclass from the other rows (the hierarchy says which it is); a fine class that
no row places in a superclass is an error.

Files are listed once, then decoded and resized to `image_size` x `image_size` x 3 by the input pipeline's
decoder (tf.data's parallel map, or Pillow in threads for the host pipeline: the same pixels, host_images.py).
When the decoded pixels fit in `cache_mb` they are decoded once into the same uint8 arrays the built-in
datasets use; otherwise splits hold `FileImages` and the input pipeline streams the files
every epoch. Files that cannot be decoded are found by that first pass, skipped with a warning naming each,
and listed in `DatasetInfo.skipped_files`; the streaming pipeline also drops (never dies on) a file that
breaks later. Files whose header says they hold more than `max_image_pixels` are skipped the same way, never
decoded (decompression bombs).

Listing (folder_tree.py, csv_labels.py): symlinks never make a file count twice (a loop or a second link to a
folder is an error); a CSV's ids are normalised ('01' is id 1), a repeated path counts once when its row is the
same and is an error otherwise, and its paths must stay inside its folder unless `csv_allow_outside_paths`.
"""

from __future__ import annotations

import numpy as np
from absl import logging

from mtl_keras.data import feeds
from mtl_keras.data.headers import too_large
from mtl_keras.data.host_images import FileImages, decoder
from mtl_keras.data.sources.csv_labels import list_csv
from mtl_keras.data.sources.folder_tree import list_folder
from mtl_keras.data.splits import assign_splits, train_subset
from mtl_keras.data.types import DatasetInfo, Source, Split
from mtl_keras.errors import DatasetError

_NAMED_WARNINGS = 20


def _class_ids(values: list[str | None], source: str, head: str) -> tuple[tuple[str, ...], np.ndarray]:
    """Names and ids of one head: ids as given when every value is a whole number (0-9 digits), else the sorted
    names; -1 where a value is missing (None: a partial label). A CSV's ids arrive normalised (csv_labels.py)."""
    given = [v for v in values if v is not None]
    if not given:
        raise DatasetError(f"{source}: no image has a {head} label")
    if all(v.isascii() and v.isdigit() for v in given):
        number = {v: int(v) for v in set(given)}
        spellings = {}
        for v, n in sorted(number.items()):
            if spellings.setdefault(n, v) != v:  # folders '01' and '1': one id, two classes
                raise DatasetError(f"{source}: {head} ids {spellings[n]!r} and {v!r} are the same id {n}; "
                                   f"spell each id one way")
        present = np.unique(list(number.values()))
        if present[-1] >= len(present):  # ids must be exactly 0..K-1 (the first 5 missing lie below K + 5)
            unused = np.setdiff1d(np.arange(min(present[-1], len(present) + 5)), present)[:5]
            raise DatasetError(f"{source}: {head} ids {', '.join(map(str, unused))} have no rows; ids must "
                               f"run 0..N-1 (or use class names)")
        ids = np.asarray([-1 if v is None else number[v] for v in values], np.int32)
        return tuple(str(i) for i in range(len(present))), ids
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
    records, source = list_folder(data_dir) if kind == "folder" else list_csv(
        data_dir, settings.csv_allow_outside_paths)
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
    # A file above --max_image_pixels (read from its header) is never decoded and is skipped like a file that
    # cannot be decoded: named in a warning, counted, listed in skipped_files.txt; the others train.
    max_pixels = settings.max_image_pixels
    input_pipeline = feeds.resolve(settings.input_pipeline)  # the pipeline's decoder: its pixels, its failures
    decode_files, why_undecodable = decoder(input_pipeline)

    def why_skipped(path: str) -> str:
        return (max_pixels and too_large(path, max_pixels)) or f"cannot decode it ({why_undecodable(path)})"

    images, ok = decode_files(paths[keep], image_size if in_memory else None, max_pixels)
    bad = paths[keep][~ok]
    for path in bad[:_NAMED_WARNINGS]:
        logging.warning("skipping %s: %s", path, why_skipped(path))
    if len(bad) > _NAMED_WARNINGS:
        logging.warning("skipping %d more files that cannot be decoded or are too large (a training run lists "
                        "all in WORKDIR/skipped_files.txt)", len(bad) - _NAMED_WARNINGS)
    if not ok.any():
        raise DatasetError(f"{source}: none of its {len(keep)} image files could be decoded, e.g. {bad[0]}: "
                           f"{why_skipped(bad[0])}")
    info = DatasetInfo(kind, fine_names, coarse_names, tuple(fine_to_coarse.tolist()),
                            skipped_files=tuple(bad.tolist()))
    bounds = np.cumsum([0, len(train), np.count_nonzero(split == 1), np.count_nonzero(split == 2)])
    edges = np.cumsum([0] + [np.count_nonzero(ok[a:b]) for a, b in zip(bounds[:-1], bounds[1:])])
    keep = keep[ok]
    if in_memory and not ok.all():
        images = images[ok]  # the one copy, only when files failed; the splits below are views

    def part(s: int) -> Split:
        rows = slice(edges[s], edges[s + 1])
        pixels = images[rows] if in_memory else FileImages(paths[keep[rows]], image_size, input_pipeline)
        return Split(pixels, fine[keep[rows]], coarse[keep[rows]])

    return Source(info, part(0), part(2), val=part(1))
