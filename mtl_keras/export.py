"""Exports a trained model for serving: a TF Serving SavedModel and an ONNX file in one version folder.

Layout (EXPORT_DIR is the TF Serving model base path's parent):

    EXPORT_DIR/MODEL_NAME/VERSION/saved_model.pb, variables/   signature serving_default: image -> fine, coarse
    EXPORT_DIR/MODEL_NAME/VERSION/assets.extra/classes.json     class names of both heads
    EXPORT_DIR/MODEL_NAME/VERSION/model.onnx                    opset 17, dynamic batch, same names

The version folder is built under a hidden temporary name and renamed into place, so a server polling
the base path never sees a half-written model, and an existing version is never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import keras
import tensorflow as tf

ONNX_OPSET = 17
ONNX_FILE = "model.onnx"


def next_version(model_dir: Path) -> int:
    """The next free integer version under `model_dir` (1 when there is none)."""
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def input_spec(model: keras.Model) -> tf.TensorSpec:
    """The serving input: float32 raw pixels (0-255), any batch size, named `image`."""
    return tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="image")


def _write_onnx(saved_model_dir: Path, spec: tf.TensorSpec, path: Path) -> None:
    """Converts the SavedModel's serving signature (exactly what TF Serving runs) to ONNX."""
    import tf2onnx

    loaded = tf.saved_model.load(str(saved_model_dir))  # keep a reference: it owns the variables
    fn = tf.function(lambda image: loaded.signatures["serving_default"](image=image))
    tf2onnx.convert.from_function(fn, input_signature=[spec], opset=ONNX_OPSET, output_path=str(path))


def export(model: keras.Model, export_dir: str, model_name: str, *, class_names: dict | None = None,
           version: int | None = None, onnx: bool = True) -> Path:
    """Writes SavedModel (+ ONNX) to EXPORT_DIR/MODEL_NAME/VERSION atomically; returns the version folder."""
    model_dir = Path(export_dir) / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = version or next_version(model_dir)
    final = model_dir / str(version)
    if final.exists():
        raise FileExistsError(f"export version {final} exists; pick another --version or remove it")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_dir))
    try:
        spec = input_spec(model)
        model.export(str(tmp), format="tf_saved_model", input_signature=[spec], verbose=False)
        if class_names:
            (tmp / "assets.extra").mkdir(exist_ok=True)
            (tmp / "assets.extra" / "classes.json").write_text(json.dumps(class_names, indent=1))
        if onnx:
            _write_onnx(tmp, spec, tmp / ONNX_FILE)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; servers often run as another user
        os.rename(tmp, final)  # atomic on one filesystem; fails rather than replace an existing version
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
