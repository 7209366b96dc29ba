"""Writes one version folder for serving: TF Serving SavedModel, ONNX and int8 ONNX (see runs.py for a run).

Layout (EXPORT_DIR/MODEL_NAME is a TF Serving model base path):

    EXPORT_DIR/MODEL_NAME/VERSION/saved_model.pb, variables/   signatures serving_default: image -> fine, coarse
                                                                and serving_bytes: image_bytes -> probabilities + top k
    EXPORT_DIR/MODEL_NAME/VERSION/assets.extra/classes.json     class names of both heads and how answers are
                                                                decoded (fine_to_coarse, coarse_head, hedge
                                                                threshold; serving/answers.py)
    EXPORT_DIR/MODEL_NAME/VERSION/assets.extra/tf_serving_warmup_requests   PredictionLog records, both signatures
    EXPORT_DIR/MODEL_NAME/VERSION/model.onnx                    opset 17, dynamic batch, same names (--onnx_converter)
    EXPORT_DIR/MODEL_NAME/VERSION/model.int8.onnx               int8 (quantize.py), only when faster than fp32
    EXPORT_DIR/MODEL_NAME/VERSION/assets.extra/int8.json        the int8 decision: latencies, settings, kept

The version folder is built under a hidden temporary name, EXPORT_DIR/MODEL_NAME/.tmp-VERSION-XXXXXXXX, and
renamed into place, so a server polling the base path never sees a half-written model (TF Serving takes only
folders named by an integer as versions), and an existing version is never overwritten. The version is picked,
and the temporary folder made, under EXPORT_DIR/MODEL_NAME/.lock: concurrent exports each reserve their own
(the temporary folders count as taken versions). An export holds a flock on its temporary folder until the
rename; a `.tmp-*` folder that nobody holds was left by an interrupted export (kill -9, a crash, a power
cut; the kernel drops the lock with its holder) and the next export to the folder removes it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from mtl_keras import atomic, locks
from mtl_keras.config import DataConfig, ServingConfig
from mtl_keras.errors import ExportError
from mtl_keras.serving import answers, onnx_convert, quantize, signatures

ONNX_OPSET = onnx_convert.ONNX_OPSET
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
INT8_REPORT = "int8.json"  # in assets.extra: quantize.write_int8's decision and figures
WARMUP_FILE = "tf_serving_warmup_requests"
MAX_VERSION = 2 ** 63 - 1  # TF Serving's versions are int64
TMP_PREFIX = ".tmp-"  # TMP_PREFIX + VERSION + "-" + random: a version folder being written


def _reserved_version(tmp: Path) -> int | None:
    """The version a temporary folder .tmp-VERSION-XXXXXXXX is being written for."""
    number = tmp.name[len(TMP_PREFIX):].split("-", 1)[0]
    return int(number) if number.isdigit() else None


def next_version(model_dir: Path) -> int:
    """The next free integer version under `model_dir` (1 when there is none): after the versions there and
    those reserved by exports in progress (their temporary folders)."""
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    versions += filter(None, (_reserved_version(p) for p in model_dir.glob(TMP_PREFIX + "*")))
    return max(versions, default=0) + 1


def remove_stale_tmp(model_dir: Path) -> list[Path]:
    """Removes the temporary folders of interrupted exports (those no process holds) and returns them; call it
    holding the folder lock, so no export is between making its folder and locking it."""
    removed = []
    for tmp in sorted(model_dir.glob(TMP_PREFIX + "*")):
        try:
            fd = locks.hold(tmp)
        except BlockingIOError:  # an export in progress
            continue
        except OSError:  # not a folder, or gone
            continue
        if fd is None:  # the filesystem cannot tell: leave it
            continue
        try:
            shutil.rmtree(tmp, ignore_errors=True)
        finally:
            os.close(fd)
        removed.append(tmp)
    return removed


def _reserve(model_dir: Path, version: int | None) -> tuple[int, Path, int | None]:
    """(version, its temporary folder, the descriptor holding that folder): the version is `version`, or the
    next free one; stale temporary folders go first."""
    with locks.folder_lock(model_dir):
        for stale in remove_stale_tmp(model_dir):
            print(f"removed {stale}, left by an interrupted export")
        if version is None:
            version = next_version(model_dir)
            if version > MAX_VERSION:
                raise ExportError(f"the next version under {model_dir} would be {version}, past {MAX_VERSION} "
                                  "(TF Serving reads versions as int64); give a free --version below it")
        elif (model_dir / str(version)).exists():
            raise ExportError(f"export version {model_dir / str(version)} exists; pick another --version or remove it")
        elif version in {_reserved_version(p) for p in model_dir.glob(TMP_PREFIX + "*")}:
            raise ExportError(f"export version {model_dir / str(version)} is being written by another export; "
                              "pick another --version")
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{version}-", dir=model_dir))
        return version, tmp, locks.hold(tmp)


def _publish(tmp: Path, model_dir: Path, version: int, explicit: bool) -> Path:
    """Renames `tmp` to MODEL_DIR/VERSION; should a writer that takes no lock have made that version meanwhile,
    the next free one (or, for an `explicit` version, an ExportError)."""
    with locks.folder_lock(model_dir):
        final = model_dir / str(version)
        if final.exists():
            if explicit:
                raise ExportError(f"export version {final} exists; pick another --version or remove it")
            final = model_dir / str(next_version(model_dir))
        os.rename(tmp, final)  # atomic on one filesystem
    return final


def write_onnx(saved_model_dir: Path, path: Path, metadata: dict[str, str],
               converter: str = ServingConfig.onnx_converter, model=None) -> None:
    """`path` converted by `converter` (see onnx_convert.py; tf2onnx converts the SavedModel's serving signature,
    exactly what TF Serving runs; keras, Keras's own ONNX export of `model`)."""
    onnx_convert.convert(converter, path, metadata, saved_model_dir=saved_model_dir, model=model)




def image_metadata(shape: tuple[int, int, int]) -> dict[str, str]:
    """ONNX's standard `Image.*` metadata (onnx docs/MetadataProps.md) for the `image` input, which is marked
    with the IMAGE type denotation: raw 8-bit sRGB values 0-255, as float32 NHWC (`image_layout`)."""
    return {"Image.BitmapPixelFormat": "Gray8" if shape[-1] == 1 else "Rgb8", "Image.ColorSpaceGamma": "SRGB",
            "Image.NominalPixelRange": "NominalRange_0_255", "image_layout": "NHWC"}


def export(model, export_dir: str, model_name: str, *, class_names: dict | None = None,
           flags_text: str = "", version: int | None = None, onnx: bool = True,
           calibration_images: np.ndarray | None = None, warmup_images: np.ndarray | None = None,
           top_k: int = ServingConfig.top_k, onnx_converter: str = ServingConfig.onnx_converter,
           max_pixels: int = DataConfig.max_image_pixels,
           int8_settings: quantize.Int8Settings = quantize.Int8Settings()) -> Path:
    """Writes EXPORT_DIR/MODEL_NAME/VERSION atomically and returns it.

    int8 ONNX is tried when `calibration_images` are given (with `onnx`) and kept only when faster
    (quantize.write_int8; its decision in assets.extra/int8.json); the warmup file when `warmup_images` are
    (records for both signatures); serving_bytes answers the `top_k` classes per head and refuses images
    whose header holds more than `max_pixels` (the run's --max_image_pixels); model.onnx comes from
    `onnx_converter` (tf2onnx or keras).
    """
    model_dir = Path(export_dir) / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    explicit = version is not None
    version, tmp, held = _reserve(model_dir, version)
    try:
        signatures.write_saved_model(model, tmp, class_names, top_k, max_pixels)
        extra = tmp / "assets.extra"
        extra.mkdir(exist_ok=True)
        if class_names:
            (extra / "classes.json").write_text(json.dumps(class_names, indent=1))
        if warmup_images is not None:
            signatures.write_warmup(extra / WARMUP_FILE, model_name, warmup_images)
        if onnx:
            metadata = {"model_name": model_name, "training_flags": flags_text}
            metadata |= {f"{head}_classes": json.dumps(class_names[head]) for head in ("fine", "coarse")
                         if head in (class_names or {})}
            metadata |= answers.Decoding.from_dict(class_names or {}).metadata()
            metadata |= image_metadata(tuple(model.input_shape[1:]))
            write_onnx(tmp, tmp / ONNX_FILE, metadata, onnx_converter, model)
            if calibration_images is not None:
                decision = quantize.write_int8(tmp / ONNX_FILE, tmp / INT8_FILE, calibration_images, int8_settings)
                (extra / INT8_REPORT).write_text(json.dumps(decision, indent=1))
        os.chmod(tmp, 0o777 & ~atomic.umask())  # mkdtemp makes it 0700; servers often run as another user
        return _publish(tmp, model_dir, version, explicit)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if held is not None:
            os.close(held)  # after the rename or the removal: nobody takes a live folder for a stale one
