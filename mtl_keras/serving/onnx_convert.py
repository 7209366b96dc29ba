"""The two ONNX converters (`--onnx_converter`), each ending in the same graph interface: input `image` (float32
raw pixels, dynamic batch), outputs `fine` / `coarse`, opset 17, the run's metadata, `onnx.checker` passed.

    tf2onnx  tf2onnx.convert.from_function on the saved SavedModel's serving_default signature: exactly the graph
             TF Serving runs (reloaded from disk).
    keras    Keras's own `model.export(path, format="onnx")`. On the TensorFlow backend (Keras 3.15) it traces the
             in-memory model's call in an ExportArchive and also hands it to tf2onnx.convert.from_function (after
             its numpy-2 patch of tf2onnx): the second path shares the converter library, not the traced graph.
             With Keras 3.15 its names come out as `image`, `coarse`, `fine` already; other names are renamed.

Either converter's file is then checked by serving/verify.py against the SavedModel and the Keras model.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
import tensorflow as tf

from mtl_keras.errors import ExportError
from mtl_keras.serving import signatures

ONNX_OPSET = 17


def _rename(proto: onnx.ModelProto, names: dict[str, str]) -> None:
    """Renames graph values everywhere they occur (graph inputs and outputs, node inputs and outputs)."""
    for node in proto.graph.node:
        node.input[:] = [names.get(i, i) for i in node.input]
        node.output[:] = [names.get(o, o) for o in node.output]
    for value in [*proto.graph.input, *proto.graph.output]:
        value.name = names.get(value.name, value.name)


def from_saved_model(saved_model_dir: Path) -> onnx.ModelProto:
    """tf2onnx on the SavedModel's serving_default signature (what TF Serving runs)."""
    import tf2onnx

    loaded = tf.saved_model.load(str(saved_model_dir))  # keep a reference: it owns the variables
    serving = loaded.signatures[signatures.DEFAULT]
    spec = serving.structured_input_signature[1][signatures.IMAGE_INPUT]
    fn = tf.function(lambda image: serving(image=image))
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=[spec], opset=ONNX_OPSET)
    return proto


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


def convert(converter: str, path: Path, metadata: dict[str, str], *, saved_model_dir: Path, model=None) -> None:
    """Writes `path` with `converter` (tf2onnx: from `saved_model_dir`; keras: from `model`), the metadata
    props and `onnx.checker` passed."""
    if converter == "tf2onnx":
        proto = from_saved_model(saved_model_dir)
    elif converter == "keras":
        if model is None:
            raise ExportError("--onnx_converter=keras needs the Keras model")
        proto = from_keras(model)
    else:
        raise ExportError(f"--onnx_converter={converter}: use tf2onnx or keras")
    onnx.helper.set_model_props(proto, {**metadata, "onnx_converter": converter})
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
