"""One loader for every artifact a run leaves: `load(path)` opens a .keras model, a SavedModel version
folder or an .onnx file (or wraps a Keras model in memory) behind the same call, float32 raw pixels
[N, H, W, C] -> {"fine": probabilities, "coarse": probabilities}. Verification, predict and
benchmarks/inference.py all use it, so they run each artifact the same way.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mtl_keras.errors import ExportError

CLASSES_FILE = "classes.json"  # {"fine": [...], "coarse": [...]}: WORKDIR/ and VERSION/assets.extra/
BATCH = 256  # images per call of an artifact


@dataclasses.dataclass
class Runtime:
    kind: str  # keras, saved_model or onnx
    path: str
    shape: tuple[int, ...]  # one image, without the batch dimension
    names: dict[str, list[str]]  # head -> class names ({} when the artifact holds none)
    run_batch: Callable[[np.ndarray], dict[str, np.ndarray]]
    handle: object = None  # keeps what owns the variables (a loaded SavedModel) alive
    decoding: dict = dataclasses.field(default_factory=dict)  # answers.Decoding's keys the artifact carries

    def __call__(self, images: np.ndarray, batch_size: int = BATCH) -> dict[str, np.ndarray]:
        """Probabilities per head for float32 images, run `batch_size` images at a time."""
        images = np.asarray(images, np.float32)
        parts = [self.run_batch(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
        if not parts:
            parts = [self.run_batch(images)]
        return {head: np.concatenate([p[head] for p in parts]) for head in parts[0]}


def _read_classes(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as e:
        raise ExportError(f"{path} cannot be read ({e})") from None


def _class_names(path: Path) -> dict[str, list[str]]:
    names = _read_classes(path)
    return {head: list(names[head]) for head in ("fine", "coarse") if head in names}


def _checked(names: dict[str, list[str]], widths: dict[str, int], where: str) -> dict[str, list[str]]:
    """`names` when each head's list is as long as that output; ExportError otherwise: the names are another
    model's (a refused rerun once rewrote classes.json, and predict called a dog "cow")."""
    for head, given in names.items():
        if head in widths and widths[head] is not None and len(given) != widths[head]:
            raise ExportError(f"{where} names {len(given)} {head} classes for the model's {widths[head]} {head} "
                              f"outputs, so they are not this model's names; use the classes of the run that "
                              f"trained it")
    return names


def _decoding(path: Path) -> dict:
    from mtl_keras.serving.answers import KEYS

    values = _read_classes(path)
    return {k: values[k] for k in KEYS if k in values}


def from_keras_model(model, path: str = "<memory>", names: dict | None = None, rows: int = 0) -> Runtime:
    """A Keras model already in memory (what train has just fitted) as a `Runtime`. With `rows`, a smaller
    batch is run padded to `rows` images (evaluate.predict_batch), at the shape its other batches have."""
    from mtl_keras.evaluate import predict_batch

    def run_batch(x):
        return predict_batch(model, x, rows)

    widths = {head: t.shape[-1] for head, t in zip(model.output_names, model.outputs)}
    return Runtime("keras", path, tuple(model.input_shape[1:]), _checked(names or {}, widths, path), run_batch,
                   model)


def _keras(path: Path) -> Runtime:
    import keras

    import mtl_keras.losses  # noqa: F401  (registers the custom layers and losses for loading)
    import mtl_keras.models  # noqa: F401

    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # Keras raises many types for a file from elsewhere or damaged
        raise ExportError(f"{path} cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    names_file = path.parent / CLASSES_FILE
    widths = {head: t.shape[-1] for head, t in zip(model.output_names, model.outputs)}
    runtime = from_keras_model(model, str(path), _checked(_class_names(names_file), widths, str(names_file)))
    runtime.decoding = _decoding(names_file)
    return runtime


def _saved_model(path: Path) -> Runtime:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))  # keep a reference: it owns the variables
    serving = loaded.signatures["serving_default"]

    def run_batch(x):
        return {k: v.numpy() for k, v in serving(image=tf.constant(x)).items()}

    shape = tuple(serving.structured_input_signature[1]["image"].shape[1:])
    names_file = path / "assets.extra" / CLASSES_FILE
    widths = {head: spec.shape[-1] for head, spec in serving.structured_outputs.items()}
    return Runtime("saved_model", str(path), shape, _checked(_class_names(names_file), widths, str(names_file)),
                   run_batch, loaded, _decoding(names_file))


def _onnx(path: Path) -> Runtime:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's errors are long C++ messages
        raise ExportError(f"{path} cannot be opened by onnxruntime ({str(e).splitlines()[0][:200]})") from None
    meta = session.get_modelmeta().custom_metadata_map
    names = {k[:-len("_classes")]: json.loads(v) for k, v in meta.items() if k.endswith("_classes")}
    outputs = [o.name for o in session.get_outputs()]
    input_name = session.get_inputs()[0].name

    def run_batch(x):
        return dict(zip(outputs, session.run(outputs, {input_name: x})))

    shape = tuple(int(d) for d in session.get_inputs()[0].shape[1:])
    from mtl_keras.serving.answers import Decoding

    try:
        decoding = Decoding.from_metadata(meta).to_dict()
    except ValueError as e:
        raise ExportError(f"{path}: its decoding metadata cannot be read ({e})") from None
    widths = {o.name: o.shape[-1] if isinstance(o.shape[-1], int) else None for o in session.get_outputs()}
    return Runtime("onnx", str(path), shape, _checked(names, widths, f"{path}'s metadata"), run_batch, session,
                   decoding)


def load(path, flag: str = "--model") -> Runtime:
    """Opens `path`: a .keras file, a SavedModel folder (saved_model.pb) or an .onnx file; a Keras model in
    memory is wrapped as is. Anything else is one ExportError line naming `flag`."""
    if not isinstance(path, (str, Path)):  # compared over many images: each call at one shape
        return from_keras_model(path, rows=BATCH)
    p = Path(path)
    if p.suffix == ".onnx" and p.is_file():
        return _onnx(p)
    if p.suffix == ".keras" and p.is_file():
        return _keras(p)
    if (p / "saved_model.pb").is_file():
        return _saved_model(p)
    raise ExportError(f"{flag}={path} is neither a .keras file, an .onnx file nor a SavedModel folder "
                      f"(saved_model.pb)")
