"""`export_run`: the one export-and-verify path of a training run.

Train calls it in-process on the TensorFlow backend and, on JAX, through `python -m mtl_keras.export` in a
TensorFlow-backend process (a SavedModel saved from JAX holds XlaCallModule ops that tf2onnx cannot
convert; the .keras file is backend-neutral), which writes the same result as JSON for train to merge into
metrics.json. Every caller gets the same artifacts and the same checks (verify.py).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from mtl_keras import config as config_lib
from mtl_keras.data import datasets, pipeline
from mtl_keras.data.images import fit_images
from mtl_keras.errors import ExportError, MtlError
from mtl_keras.flags import MAX_IMAGE_PIXELS
from mtl_keras.serving import export, quantize, runtime, verify

CALIBRATION_IMAGES = 256  # training images the int8 calibration sees
WARMUP_IMAGES = 8  # test images in the TF Serving warmup file


def labelled_batches(split, info, shape, batch_size: int = 256):
    """(float32 images of `shape`, {head: class ids}) batches of a split, streamed through the pipeline."""
    for images, labels, *_ in pipeline.pipeline(split, info, batch_size=batch_size, image_shape=shape):
        yield np.asarray(images), {head: np.asarray(v).argmax(-1) for head, v in labels.items()}


def read_run(workdir: str | Path, need_model: bool = True) -> tuple[config_lib.TrainConfig, dict, str]:
    """(config, class names, flags text) of a finished run folder; ExportError when it is not one."""
    run = Path(workdir)
    for name in ("model.keras",) * need_model + ("config.json", "classes.json"):
        if not (run / name).is_file():
            raise ExportError(f"--workdir={workdir} has no {name}: is it a finished training run?")
    config = config_lib.read_json(run / "config.json")
    pixels = config.data.max_image_pixels
    if isinstance(pixels, bool) or not isinstance(pixels, int) or not 1 <= pixels <= MAX_IMAGE_PIXELS:
        # The export's serving_bytes guard comes from here: 1e18 in a hand-edited file turned it off.
        raise ExportError(f"{run / 'config.json'} has max_image_pixels {pixels!r}, outside 1..{MAX_IMAGE_PIXELS:,} "
                          f"(the --max_image_pixels bounds); export the run that wrote it")
    flags_text = (run / "flags.txt").read_text() if (run / "flags.txt").is_file() else ""
    return config, json.loads((run / "classes.json").read_text()), flags_text


def run_splits(config: config_lib.TrainConfig, workdir: str | Path, int8: bool):
    """The run's dataset, read from its config.json without downloading; None where it can no longer be read
    (a moved --data_dir, a cache that is gone) and nothing needs it. int8 does: its timing and accuracy-drop
    check run on the run's images (one ExportError line suggesting --noint8). Without int8 the export goes on
    with one line: the warmup records and the parity check then use random pixels only."""
    try:
        return datasets.prepare(dataclasses.replace(config.data, download=False), config.run.seed)
    except (MtlError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if int8:
            raise ExportError(f"--workdir={workdir}: the run's dataset cannot be read ({reason}); int8 is timed and "
                              "checked on its images: make it readable again or pass --noint8") from None
        print(f"note: the run's dataset cannot be read ({reason}); warmup requests and the parity check use "
              "random pixels only")
        return None


def export_classes(config: config_lib.TrainConfig, classes: dict) -> dict:
    """What an export's classes.json holds: both heads' names and how answers are decoded (answers.Decoding:
    the fine-to-coarse map, the run's --coarse_head, the hedge threshold and temperature train chose)."""
    from mtl_keras.serving.answers import KEYS

    out = {h: classes[h] for h in ("fine", "coarse") if h in classes}
    out |= {k: classes[k] for k in KEYS if classes.get(k) is not None}
    if config.model.task == "mtl":
        out["coarse_head"] = config.model.coarse_head
    return out


def export_run(workdir: str | Path, *, export_dir: str, model_name: str, version: int | None = None,
               int8: bool = True, check: bool = True, atol: float = 1e-5, int8_max_drop: float = 1.0,
               num_random: int = 32, num_real: int = 256, top_k: int = config_lib.ServingConfig.top_k,
               onnx_converter: str = config_lib.ServingConfig.onnx_converter, model=None, splits=None,
               int8_settings: quantize.Int8Settings = quantize.Int8Settings()) -> dict:
    """Exports the run in `workdir` (its model.keras, or `model` when given) to EXPORT_DIR/MODEL_NAME/VERSION
    and, with `check`, verifies it; returns {"artifacts": {name: path}, "metrics": {...}, "ok": bool}.

    Test and calibration images are the first N of their splits (`splits`, or the run's dataset read from
    its config.json without downloading, see `run_splits`): a split of image files decodes only those. int8 is
    kept only when faster than fp32 (quantize.write_int8); its decision is metrics["int8_export"].
    """
    config, class_names, flags_text = read_run(workdir, need_model=model is None)
    if model is None:
        model = runtime.load(Path(workdir) / "model.keras", "--workdir").handle
    if splits is None:
        splits = run_splits(config, workdir, int8)
    shape = tuple(model.input_shape[1:])
    if splits is not None:
        real = fit_images(splits.test.images[:max(num_real, WARMUP_IMAGES)], shape).astype(np.float32)
        warmup = real[:WARMUP_IMAGES]
    else:  # (int8 is off: run_splits)
        real, warmup = np.zeros((0, *shape), np.float32), verify.random_pixels(shape, WARMUP_IMAGES, config.run.seed)
    calibration = fit_images(splits.train.images[:CALIBRATION_IMAGES], shape) if int8 else None
    version_dir = export.export(model, export_dir, model_name, flags_text=flags_text, version=version,
                                class_names=export_classes(config, class_names),
                                calibration_images=calibration, warmup_images=warmup, top_k=top_k,
                                onnx_converter=onnx_converter, int8_settings=int8_settings,
                                max_pixels=config.data.max_image_pixels)
    artifacts = {"saved_model": str(version_dir), "onnx": str(version_dir / export.ONNX_FILE)}
    int8_path = version_dir / export.INT8_FILE
    if int8_path.is_file():
        artifacts["onnx_int8"] = str(int8_path)
    decision_file = version_dir / "assets.extra" / export.INT8_REPORT
    decision = json.loads(decision_file.read_text()) if int8 and decision_file.is_file() else None
    result = {"artifacts": artifacts, "metrics": {"int8_export": decision} if decision else {}, "ok": True}
    if check:
        images = np.concatenate([verify.random_pixels(shape, num_random, config.run.seed), real[:num_real]])
        verification = verify.verify(
            version_dir, version_dir / export.ONNX_FILE, images, keras_model=model, atol=atol,
            int8=int8_path if int8_path.is_file() else None, int8_max_drop=int8_max_drop,
            labelled_batches=labelled_batches(splits.test, splits.info, shape) if splits is not None else None)
        print(verification.text())
        result |= {"metrics": result["metrics"] | verification.metrics(), "ok": verification.ok}
    return result
