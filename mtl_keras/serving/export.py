"""Writes one version folder for serving: TF Serving SavedModel, ONNX and int8 ONNX (see runs.py for a run).

Layout (EXPORT_DIR/MODEL_NAME is a TF Serving model base path):

    EXPORT_DIR/MODEL_NAME/VERSION/saved_model.pb, variables/   signature serving_default: image -> fine, coarse
    EXPORT_DIR/MODEL_NAME/VERSION/assets.extra/classes.json     class names of both heads
    EXPORT_DIR/MODEL_NAME/VERSION/assets.extra/tf_serving_warmup_requests   PredictionLog records
    EXPORT_DIR/MODEL_NAME/VERSION/model.onnx                    opset 17, dynamic batch, same names
    EXPORT_DIR/MODEL_NAME/VERSION/model.int8.onnx               int8 (quantize.py), only when faster than fp32
    EXPORT_DIR/MODEL_NAME/VERSION/assets.extra/int8.json        the int8 decision: latencies, settings, kept

The version folder is built under a hidden temporary name and renamed into place, so a server polling
the base path never sees a half-written model, and an existing version is never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from mtl_keras.errors import ExportError
from mtl_keras.serving import quantize

ONNX_OPSET = 17
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
INT8_REPORT = "int8.json"  # in assets.extra: quantize.write_int8's decision and figures
WARMUP_FILE = "tf_serving_warmup_requests"


def next_version(model_dir: Path) -> int:
    """The next free integer version under `model_dir` (1 when there is none)."""
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def input_spec(model):
    """The serving input: float32 raw pixels (0-255), any batch size, named `image`."""
    import tensorflow as tf

    return tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="image")


def write_onnx(saved_model_dir: Path, path: Path, metadata: dict[str, str]) -> None:
    """Converts the SavedModel's serving signature (exactly what TF Serving runs) to ONNX."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    loaded = tf.saved_model.load(str(saved_model_dir))  # keep a reference: it owns the variables
    serving = loaded.signatures["serving_default"]
    spec = serving.structured_input_signature[1]["image"]
    fn = tf.function(lambda image: serving(image=image))
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=[spec], opset=ONNX_OPSET)
    onnx.helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def write_warmup(path: Path, model_name: str, images: np.ndarray) -> None:
    """TF Serving warmup: a few PredictionLog records that load the model's kernels before traffic."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    with tf.io.TFRecordWriter(str(path)) as writer:
        for batch in (images[:1], images[:8]):
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name="serving_default"))
            request.inputs["image"].CopyFrom(tf.make_tensor_proto(batch.astype(np.float32)))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def export(model, export_dir: str, model_name: str, *, class_names: dict | None = None,
           flags_text: str = "", version: int | None = None, onnx: bool = True,
           calibration_images: np.ndarray | None = None, warmup_images: np.ndarray | None = None,
           int8_settings: quantize.Int8Settings = quantize.Int8Settings()) -> Path:
    """Writes EXPORT_DIR/MODEL_NAME/VERSION atomically and returns it.

    int8 ONNX is tried when `calibration_images` are given (with `onnx`) and kept only when faster
    (quantize.write_int8; its decision in assets.extra/int8.json); the warmup file when `warmup_images` are.
    """
    model_dir = Path(export_dir) / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = version or next_version(model_dir)
    final = model_dir / str(version)
    if final.exists():
        raise ExportError(f"export version {final} exists; pick another --version or remove it")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_dir))
    try:
        model.export(str(tmp), format="tf_saved_model", input_signature=[input_spec(model)], verbose=False)
        extra = tmp / "assets.extra"
        extra.mkdir(exist_ok=True)
        if class_names:
            (extra / "classes.json").write_text(json.dumps(class_names, indent=1))
        if warmup_images is not None:
            write_warmup(extra / WARMUP_FILE, model_name, warmup_images)
        if onnx:
            metadata = {"model_name": model_name, "training_flags": flags_text}
            metadata |= {f"{head}_classes": json.dumps(names) for head, names in (class_names or {}).items()}
            write_onnx(tmp, tmp / ONNX_FILE, metadata)
            if calibration_images is not None:
                decision = quantize.write_int8(tmp / ONNX_FILE, tmp / INT8_FILE, calibration_images, int8_settings)
                (extra / INT8_REPORT).write_text(json.dumps(decision, indent=1))
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; servers often run as another user
        os.rename(tmp, final)  # atomic on one filesystem; fails rather than replace an existing version
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
