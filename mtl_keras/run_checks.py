"""Checks a training run makes on its data before it writes anything: the class records of a resumed run, and
the hierarchy heads' need for a fine class under every coarse class."""

from __future__ import annotations

import json
from pathlib import Path

from mtl_keras.errors import RunError


def class_names(info) -> dict:
    """What WORKDIR/classes.json holds: the names of each head's classes and the fine -> coarse map."""
    return {"fine": list(info.fine_names), "coarse": list(info.coarse_names),
            "fine_to_coarse": list(info.fine_to_coarse)}


def check_same_classes(workdir: Path, info) -> None:
    """RunError when the data's classes are not those the workdir's checkpoint was trained on: the same flags
    over a --data_dir changed in place (a class folder added or renamed)."""
    try:
        saved = json.loads((workdir / "classes.json").read_text())
    except (OSError, ValueError):
        return  # no readable record: restoring the weights checks the class counts
    now = class_names(info)
    changed = [head for head in ("fine", "coarse") if not isinstance(saved, dict) or saved.get(head) != now[head]]
    if changed:
        head = changed[0]
        was = saved.get(head) if isinstance(saved, dict) else None
        raise RunError(f"the data's {head} classes changed since {workdir / 'checkpoints'} was written "
                       f"({len(now[head])} now, {len(was) if isinstance(was, list) else 'none'} in classes.json); "
                       f"use another --workdir, or delete {workdir / 'checkpoints'} to start the run over")


def check_hierarchy_heads(coarse_head: str, info) -> None:
    """RunError for a coarse class with no fine class under a head that derives coarse from fine: the marginal
    over no fine classes has no mass, so that class could never be predicted (0 % on it) or broke the build."""
    if coarse_head == "learned":
        return
    empty = sorted(set(range(len(info.coarse_names))) - set(info.fine_to_coarse))
    if empty:
        raise RunError(f"coarse class {info.coarse_names[empty[0]]!r} has no fine class (its images carry the "
                       f"coarse label only), so --coarse_head={coarse_head} can never predict it; use "
                       f"--coarse_head=learned")
