"""What a finished run's records must hold for the results table, checked before any training: a record of the
wrong shape (a metrics.json that is a list, an accuracy that is a string, a history.csv that is not CSVLogger's,
predicted ids past the class names) once crashed the table only after the rest of the grid had trained, and
left results.md stale."""

from __future__ import annotations

import numbers
from pathlib import Path

import numpy as np

from mtl_keras.errors import ExperimentError
from mtl_keras.experiments.tables import COMPUTE, HEADS, METRICS, VAL_METRICS


def _bad(path: Path, why: str, hint: str) -> ExperimentError:
    return ExperimentError(f"{path} {why}; {hint}")


def check_metrics(metrics, path: Path, hint: str) -> None:
    """metrics.json: an object whose table figures are numbers (or null)."""
    if not isinstance(metrics, dict):
        raise _bad(path, f"holds a JSON {type(metrics).__name__}, not an object of metrics", hint)
    for key in (*METRICS, *VAL_METRICS, *(k for k, _, _ in COMPUTE)):
        value = metrics.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise _bad(path, f"has {key} = {value!r}, not a number", hint)


def check_classes(classes, path: Path, hint: str) -> None:
    """classes.json: lists of fine and coarse names and a fine -> coarse map into the coarse names."""
    if not isinstance(classes, dict) or not all(isinstance(classes.get(h), list) and classes[h] for h in HEADS):
        raise _bad(path, "does not hold the fine and coarse class names", hint)
    tree = classes.get("fine_to_coarse")
    if not isinstance(tree, list) or len(tree) != len(classes["fine"]) or not all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(classes["coarse"]) for c in tree):
        raise _bad(path, "has no fine_to_coarse map into its coarse classes", hint)


def check_history(path: Path, hint: str) -> None:
    """history.csv, where there is one: CSVLogger's columns, numbers per epoch."""
    from mtl_keras import reports

    if not path.is_file():
        return
    try:
        reports.read_history(path)
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise _bad(path, f"cannot be read as a training history ({type(e).__name__}: {e})"[:300], hint) from None


def check_predictions(found: tuple[dict, dict] | None, classes: dict, path: Path, hint: str) -> None:
    """Test labels and predictions: whole numbers, as many of each, ids within the class names (-1: no label)."""
    if found is None:
        return
    true, pred = found
    for head in true:
        if head not in HEADS:
            continue
        t, p, n = np.asarray(true[head]), np.asarray(pred[head]), len(classes[head])
        if t.dtype.kind not in "iu" or p.dtype.kind not in "iu" or t.shape != p.shape or t.ndim != 1:
            raise _bad(path, f"holds {head} ids that are not two lists of whole numbers of one length", hint)
        if len(p) and (p.min() < 0 or p.max() >= n or t.min() < -1 or t.max() >= n):
            raise _bad(path, f"holds {head} ids outside 0..{n - 1}, the run's {n} {head} classes", hint)
