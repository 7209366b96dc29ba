"""The two ONNX converters (`--onnx_converter`), each ending in the same graph interface: input `image` (float32
raw pixels, dynamic batch), outputs `fine` / `coarse`, opset 17, the run's metadata, `onnx.checker` passed.

    tf2onnx  tf2onnx on the saved SavedModel's serving_default signature: exactly the graph TF Serving runs
             (reloaded from disk); in the child, in tf2onnx's `large_model` mode (see `from_saved_model`).
    keras    Keras's own `model.export(path, format="onnx")` of the model (for the child, saved as .keras
             and loaded there). On the TensorFlow backend (Keras 3.15) it traces the model's call in an
             ExportArchive and also hands it to tf2onnx.convert.from_function (after its numpy-2 patch of
             tf2onnx): the second path shares the converter library, not the traced graph. With Keras 3.15 its
             names come out as `image`, `coarse`, `fine` already; other names are renamed. It takes tf2onnx's
             default path, grappler included: about twice the tf2onnx path's memory on ResNet-152.

For a model with more than CHILD_ABOVE_BYTES of weights both run in a child process, `python -m
mtl_keras.serving.onnx_convert tf2onnx|keras SOURCE OUTPUT`, with pure-Python protobuf (CHILD_ENV); smaller
models convert in this process (tf2onnx's default path, grappler included), where a child would cost more time
than the memory it saves.

Why a child process, pure-Python protobuf and tf2onnx's `large_model` mode (measured on the seed ResNet-152,
66.6 M parameters, BUILD_NOTES.md "Export memory"): with the default upb protobuf, tf2onnx's optimizer passes
re-serialise every constant into its node's protobuf arena on each pass (`Node.update_proto`), and upb frees an
arena only with its message, so the 266 MB of weights grew past 12 GB; grappler's constant folding (skipped by
`large_model`) added a 7 GB peak of its own. Pure-Python protobuf frees replaced attributes as Python objects;
the protobuf implementation is fixed at import, hence the child. The tf2onnx child's peak was 2.56 GB; the keras
path, killed past 14 GB with upb, peaked at 5.5 GB with pure-Python protobuf.

Either converter's file is then checked by serving/verify.py against the SavedModel and the Keras model.
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx

from mtl_keras.errors import ExportError
from mtl_keras.serving import signatures

ONNX_OPSET = 17
CHILD_ENV = {"PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python", "TF_CPP_MIN_LOG_LEVEL": "2"}
# Weights above this convert in the child. In-process (upb protobuf) tf2onnx keeps about one more copy of the
# weights per optimizer pass: ~1 GB at this size, harmless below it (CCT-7/3x1's 15 MB), while the seed ViT
# (90 MB) and ResNet-152 (266 MB) go to the child.
CHILD_ABOVE_BYTES = 32 * 2**20


def _rename(proto: onnx.ModelProto, names: dict[str, str]) -> None:
    """Renames graph values everywhere they occur (graph inputs and outputs, node inputs and outputs)."""
    for node in proto.graph.node:
        node.input[:] = [names.get(i, i) for i in node.input]
        node.output[:] = [names.get(o, o) for o in node.output]
    for value in [*proto.graph.input, *proto.graph.output]:
        value.name = names.get(value.name, value.name)


def _inline_external(proto: onnx.ModelProto, tensors: dict[str, bytes]) -> None:
    """Moves the weights tf2onnx's large_model mode keeps aside (`tensors`, by location) back into the
    initializers, so the model is one ordinary .onnx file (under protobuf's 2 GB)."""
    for init in proto.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            location = {e.key: e.value for e in init.external_data}["location"]
            init.raw_data = tensors.pop(location)
            del init.external_data[:]
            init.data_location = onnx.TensorProto.DEFAULT


def from_saved_model(saved_model_dir: Path, large_model: bool = True) -> onnx.ModelProto:
    """tf2onnx on the SavedModel's serving_default signature (what TF Serving runs). With `large_model` (the
    child's way) constants are kept out of the graph while converting and there is no grappler pass; the weights
    are inlined again. Bounded memory also needs pure-Python protobuf: `convert_in_child`."""
    import tensorflow as tf
    import tf2onnx

    if large_model:
        import numpy as np

        if not hasattr(np, "product"):  # tf2onnx 1.17's large_model path (graph.py) calls np.product, gone in numpy 2
            np.product = np.prod  # (in the child process only)
    loaded = tf.saved_model.load(str(saved_model_dir))  # keep a reference: it owns the variables
    serving = loaded.signatures[signatures.DEFAULT]
    spec = serving.structured_input_signature[1][signatures.IMAGE_INPUT]
    fn = tf.function(lambda image: serving(image=image))
    proto, external = tf2onnx.convert.from_function(fn, input_signature=[spec], opset=ONNX_OPSET,
                                                    large_model=large_model)
    if large_model:
        _inline_external(proto, external.name_to_tensor_data)
    return proto


def _release_memory() -> None:
    """Collects garbage and hands freed heap pages back to the OS (glibc's malloc_trim; a no-op elsewhere)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def convert_in_child(converter: str, source: Path, path: Path, timeout_s: int = 3600) -> None:
    """Writes `path` with `converter` run on `source` (tf2onnx: a SavedModel folder; keras: a .keras file) in a
    child process (CHILD_ENV); one-line ExportError when the child fails, naming its last error line or the
    signal that ended it (SIGKILL: most likely out of memory)."""
    cmd = [sys.executable, "-m", "mtl_keras.serving.onnx_convert", converter, str(source), str(path)]
    _release_memory()  # what writing the SavedModel left behind, while the child needs it
    try:
        done = subprocess.run(cmd, env={**os.environ, **CHILD_ENV}, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise ExportError(f"ONNX conversion ({converter}) of {source} took over {timeout_s} s") from None
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        hint = " (most likely out of memory)" if -done.returncode == signal.SIGKILL else ""
        raise ExportError(f"ONNX conversion ({converter}) of {source} was killed by {name}{hint}")
    if done.returncode != 0 or not path.is_file():
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise ExportError(f"ONNX conversion ({converter}) of {source} failed: {lines[-1] if lines else 'no output'}")


def from_keras(model) -> onnx.ModelProto:
    """Keras's `model.export(format="onnx")`, its graph input named `image` and its outputs after the heads."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "keras.onnx"
        model.export(str(path), format="onnx", input_signature=[signatures.input_spec(model)],
                     opset_version=ONNX_OPSET, verbose=False)
        proto = onnx.load(str(path))
    heads = sorted(model.output_names)
    inputs, outputs = [i.name for i in proto.graph.input], [o.name for o in proto.graph.output]
    if len(inputs) != 1 or len(outputs) != len(heads):
        raise ExportError(f"--onnx_converter=keras gave inputs {inputs} and outputs {outputs}, expected one "
                          f"image input and the heads {heads}; use --onnx_converter=tf2onnx")
    names = {} if inputs == [signatures.IMAGE_INPUT] else {inputs[0]: signatures.IMAGE_INPUT}
    if sorted(outputs) != heads:  # TensorFlow's names (Identity:0, ...): tf2onnx lists a dict in sorted-key order
        names |= dict(zip(outputs, heads))
    _rename(proto, names)
    return proto


def _weight_bytes(saved_model_dir: Path) -> int:
    return sum(f.stat().st_size for f in (saved_model_dir / "variables").glob("*") if f.is_file())


def convert(converter: str, path: Path, metadata: dict[str, str], *, saved_model_dir: Path, model=None) -> None:
    """Writes `path` with `converter` (tf2onnx: from `saved_model_dir`; keras: from `model`), then adds the
    metadata props and passes `onnx.checker`. Models with more than CHILD_ABOVE_BYTES of weights convert in the
    child process (the keras path gets the model saved as a .keras file); smaller ones here, on tf2onnx's
    default path, which is cheaper than starting a child (a Mu/4 export: ~3 s here, ~10 s in a child)."""
    if converter not in ("tf2onnx", "keras"):
        raise ExportError(f"--onnx_converter={converter}: use tf2onnx or keras")
    if converter == "keras" and model is None:
        raise ExportError("--onnx_converter=keras needs the Keras model")
    size = _weight_bytes(saved_model_dir) if converter == "tf2onnx" else 4 * model.count_params()
    if size <= CHILD_ABOVE_BYTES:
        proto = from_saved_model(saved_model_dir, large_model=False) if converter == "tf2onnx" else from_keras(model)
    else:
        if converter == "tf2onnx":
            convert_in_child(converter, saved_model_dir, path)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                model.save(Path(tmp) / "model.keras")
                convert_in_child(converter, Path(tmp) / "model.keras", path)
        proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {**metadata, "onnx_converter": converter})
    if any(k.startswith("Image.") for k in metadata):  # the Image.* keys describe inputs denoted IMAGE
        proto.graph.input[0].type.denotation = "IMAGE"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _load_keras(path: Path):
    import keras

    import mtl_keras.models  # noqa: F401  (registers the custom layers)

    return keras.models.load_model(path, compile=False)


CHILD_CONVERTERS = {"tf2onnx": from_saved_model, "keras": lambda source: from_keras(_load_keras(source))}


def main(argv: list[str]) -> int:
    """The child: `python -m mtl_keras.serving.onnx_convert tf2onnx|keras SOURCE OUTPUT` (convert_in_child)."""
    if len(argv) != 3 or argv[0] not in CHILD_CONVERTERS:
        print("usage: python -m mtl_keras.serving.onnx_convert tf2onnx|keras SOURCE OUTPUT", file=sys.stderr)
        return 2
    converter, source, path = argv[0], Path(argv[1]), Path(argv[2])
    # Full collections at a tenth of Python's rate. The protobuf objects a conversion makes and drops keep the
    # oldest generation growing: ResNet-152's conversion ran 22 full collections, 11.5-11.9 s of its 46 CPU-seconds;
    # with this, 7 took 5.2-5.5 s, at the same peak (2.49-2.50 GB; BUILD_NOTES.md, "CI").
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 100)
    onnx.save(CHILD_CONVERTERS[converter](source), str(path))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
