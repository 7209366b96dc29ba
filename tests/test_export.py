"""Export layout, serving signature, ONNX graph, and the parity checker (pass and fail)."""

import json

import numpy as np
import onnx
import pytest

from conftest import run_module

pytestmark = pytest.mark.slow


def _version_dir(trained_run):
    root, _ = trained_run
    return root / "export" / "tiny" / "1"


def test_tf_serving_layout(trained_run):
    version = _version_dir(trained_run)
    assert (version / "saved_model.pb").is_file() and (version / "variables").is_dir()
    assert (version / "model.onnx").is_file()
    names = json.loads((version / "assets.extra" / "classes.json").read_text())
    assert names["fine"][0] == "disk" and names["coarse"] == ["curved", "angular", "strokes"]
    assert not [p for p in version.parent.iterdir() if p.name.startswith(".tmp")]


def test_serving_signature_names_and_shapes(trained_run):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(_version_dir(trained_run)))
    sig = loaded.signatures["serving_default"]
    _, inputs = sig.structured_input_signature
    assert list(inputs) == ["image"] and inputs["image"].shape.as_list() == [None, 32, 32, 3]
    assert inputs["image"].dtype == tf.float32
    out = sig(image=tf.zeros((5, 32, 32, 3)))
    assert {k: v.shape.as_list() for k, v in out.items()} == {"fine": [5, 10], "coarse": [5, 3]}
    ops = {node.op for f in sig.graph.as_graph_def().library.function for node in f.node_def}
    assert "Erfc" not in ops and "Erf" not in ops


def test_onnx_graph_names_opset_dynamic_batch(trained_run):
    import onnxruntime as ort

    path = _version_dir(trained_run) / "model.onnx"
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in proto.graph.input] == ["image"]
    assert sorted(o.name for o in proto.graph.output) == ["coarse", "fine"]
    # Exact GELU becomes Erfc, which no ONNX path converts: the tanh form must stay.
    assert not {"Erf", "Erfc"} & {n.op_type for n in proto.graph.node}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        fine, coarse = session.run(["fine", "coarse"], {"image": np.zeros((batch, 32, 32, 3), np.float32)})
        assert fine.shape == (batch, 10) and coarse.shape == (batch, 3)


def test_checker_passes_on_good_export(trained_run):
    version = _version_dir(trained_run)
    proc = run_module("mtl_keras.check_onnx", f"--saved_model={version}", f"--onnx={version / 'model.onnx'}",
                      "--check_dataset=shapes", "--num_real=64")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "96 inputs, atol 1e-05: PASS" in proc.stdout
    assert "fine" in proc.stdout and "coarse" in proc.stdout


def test_checker_fails_on_perturbed_onnx_weights(trained_run, tmp_path):
    version = _version_dir(trained_run)
    proto = onnx.load(version / "model.onnx")
    biggest = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
    weights = onnx.numpy_helper.to_array(biggest)
    noisy = weights + np.random.default_rng(0).normal(0, 0.5, weights.shape).astype(weights.dtype)
    biggest.CopyFrom(onnx.numpy_helper.from_array(noisy, biggest.name))
    onnx.save(proto, tmp_path / "bad.onnx")
    proc = run_module("mtl_keras.check_onnx", f"--saved_model={version}", f"--onnx={tmp_path / 'bad.onnx'}")
    assert proc.returncode == 1
    assert "FAIL" in proc.stdout and "max |diff|" in proc.stdout


def test_checker_missing_file_is_one_line(trained_run, tmp_path):
    version = _version_dir(trained_run)
    proc = run_module("mtl_keras.check_onnx", f"--saved_model={version}", f"--onnx={tmp_path / 'none.onnx'}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"check_onnx: error: --onnx={tmp_path / 'none.onnx'}: no such file"
    proc = run_module("mtl_keras.check_onnx", f"--saved_model={tmp_path}", f"--onnx={version / 'model.onnx'}")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].endswith(f"--saved_model={tmp_path}: no saved_model.pb there")


def test_versions_increment_and_never_overwrite(tmp_path):
    from mtl_keras import export
    from mtl_keras.models import build_model

    model = build_model("vit", (16, 16, 3), {"fine": 4, "coarse": 2}, variant="Pico/4")
    first = export.export(model, str(tmp_path), "m", onnx=False)
    second = export.export(model, str(tmp_path), "m", onnx=False)
    assert (first.name, second.name) == ("1", "2")
    with pytest.raises(FileExistsError, match="exists"):
        export.export(model, str(tmp_path), "m", version=2, onnx=False)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "2"]
