"""Export layout, serving signature, ONNX graph, and the parity checker (pass and fail)."""

import json

import numpy as np
import onnx
import pytest

from conftest import main_in_process, run_module

pytestmark = pytest.mark.slow


def _version_dir(trained_run):
    return trained_run.version


def test_tf_serving_layout(trained_run):
    version = _version_dir(trained_run)
    assert (version / "saved_model.pb").is_file() and (version / "variables").is_dir()
    assert (version / "model.onnx").is_file()
    names = json.loads((version / "assets.extra" / "classes.json").read_text())
    assert names["fine"][0] == "disk" and names["coarse"] == ["curved", "angular", "strokes"]
    assert not [p for p in version.parent.iterdir() if p.name.startswith(".tmp")]


def test_saved_model_stores_each_weight_once(trained_run):
    """Keras's ExportArchive with track(model) stored every weight twice (keras-team/keras #23553): twice the
    SavedModel size and twice the variable memory of whatever loads it (TF Serving, the ONNX converter)."""
    import keras
    import tensorflow as tf

    import mtl_keras.models  # noqa: F401  (registers the custom layers)

    model = keras.models.load_model(trained_run.work / "model.keras", compile=False)
    reader = tf.train.load_checkpoint(str(_version_dir(trained_run) / "variables" / "variables"))
    stored = sum(int(np.prod(shape)) for shape in reader.get_variable_to_shape_map().values())
    assert stored == model.count_params() + 1  # + the object graph's scalar entry


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


def test_checker_passes_on_good_export_three_ways(trained_run, tmp_path):
    import shutil

    from mtl_keras.serving import quantize

    version = _version_dir(trained_run)
    # The export ships int8 only when it timed faster; the checker's int8 part gets one either way.
    shutil.copy(version / "model.onnx", tmp_path / "model.onnx")
    from mtl_keras.data.sources import shapes

    calibration = shapes.generate(256, seed=5)[0].astype(np.float32)  # training-like images, as export uses
    quantize.quantize(tmp_path / "model.onnx", tmp_path / "model.int8.onnx", calibration)
    proc = run_module("mtl_keras.check_onnx", f"--saved_model={version}", f"--onnx={tmp_path / 'model.onnx'}",
                      f"--keras_model={trained_run.work / 'model.keras'}", "--check_dataset=shapes",
                      "--num_real=64", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    assert [c["pair"] for c in report["comparisons"]] == ["keras vs saved_model", "saved_model vs onnx",
                                                         "serving_default vs serving_bytes"]
    for comparison in report["comparisons"]:
        assert comparison["num_inputs"] == 96
        assert {o["name"] for o in comparison["outputs"]} == {"fine", "coarse"}
        for o in comparison["outputs"]:
            assert o["max_abs_diff"] <= 1e-5  # mean_abs_diff: test_compare_measures_each_output_and_...
            assert o["argmax_agreement"] == 1.0
    assert set(report["int8"]) == {"fine", "coarse"}
    assert report["int8"]["fine"]["drop_points"] <= 1.0


def test_compare_measures_each_output_and_fails_when_nothing_is_compared():
    from mtl_keras.serving import verify

    a = np.array([[0.1, 0.9], [0.6, 0.4]], np.float32)
    b = a + np.array([[2e-6, -2e-6], [0.0, 6e-6]], np.float32)
    result = verify.compare({"fine": a, "coarse": a}, {"fine": b, "coarse": a}, 1e-5)
    assert result.ok and result.num_inputs == 2
    fine = next(o for o in result.outputs if o.name == "fine")
    assert fine.max_abs_diff == pytest.approx(6e-6, rel=1e-2) and fine.mean_abs_diff == pytest.approx(2.5e-6, rel=1e-2)
    assert not verify.compare({"fine": a}, {"fine": a[:, ::-1]}, 1.0).ok  # argmax disagrees
    for reference, candidate in (({}, {}), ({"fine": a}, {"coarse": a})):
        result = verify.compare(reference, candidate, 1e-5)
        assert not result.ok and "no output in common: nothing was compared" in result.problems


def test_checker_table_output(trained_run):
    version = _version_dir(trained_run)
    proc = run_module("mtl_keras.check_onnx", f"--saved_model={version}", f"--onnx={version / 'model.onnx'}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "saved_model vs onnx: 32 inputs, atol 1e-05" in proc.stdout and proc.stdout.strip().endswith("PASS")
    assert "mean |diff|" in proc.stdout


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


def test_checker_missing_file_is_one_line(trained_run, tmp_path, capsys, monkeypatch):
    version = _version_dir(trained_run)
    status, _, err = main_in_process("check_onnx", [f"--saved_model={version}", f"--onnx={tmp_path / 'none.onnx'}"],
                                     capsys, monkeypatch)
    assert status == 1 and "Traceback" not in err
    assert err.strip().splitlines() == [f"check_onnx: error: --onnx={tmp_path / 'none.onnx'}: no such file"]
    status, _, err = main_in_process("check_onnx", [f"--saved_model={tmp_path}", f"--onnx={version / 'model.onnx'}"],
                                     capsys, monkeypatch)
    assert status == 1
    assert err.strip().splitlines() == [f"check_onnx: error: --saved_model={tmp_path}: no saved_model.pb there"]


def test_versions_increment_and_never_overwrite(tmp_path):
    from mtl_keras.serving import export
    from mtl_keras.models import build_model

    model = build_model("vit", (16, 16, 3), {"fine": 4, "coarse": 2}, variant="Pico/4")
    first = export.export(model, str(tmp_path), "m", onnx=False)
    second = export.export(model, str(tmp_path), "m", onnx=False)
    assert (first.name, second.name) == ("1", "2")
    from mtl_keras.errors import ExportError

    with pytest.raises(ExportError, match="exists"):
        export.export(model, str(tmp_path), "m", version=2, onnx=False)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [".lock", "1", "2"]  # .lock: export.py


def _swap_output_names(proto):
    """Renames graph output `fine` to `coarse` and back, wherever the names occur."""
    swap = {"fine": "coarse", "coarse": "fine"}
    for node in proto.graph.node:
        node.output[:] = [swap.get(o, o) for o in node.output]
        node.input[:] = [swap.get(i, i) for i in node.input]
    for out in proto.graph.output:
        out.name = swap.get(out.name, out.name)
    return proto


def test_checker_fails_on_swapped_output_names(trained_run, tmp_path, capsys, monkeypatch):
    version = _version_dir(trained_run)
    onnx.save(_swap_output_names(onnx.load(version / "model.onnx")), tmp_path / "swapped.onnx")
    status, _, err = main_in_process("check_onnx", [f"--saved_model={version}", f"--onnx={tmp_path / 'swapped.onnx'}"],
                                     capsys, monkeypatch)
    # The class names travel with the export: loading the swapped file already finds them another model's.
    assert status == 1 and len(err.strip().splitlines()) == 1, err[-2000:]
    assert "names 10 fine classes for the model's 3 fine outputs" in err, err[-2000:]


def _softmax_onnx(path, classes: dict[str, int]) -> None:
    """A valid two-head ONNX model with the export's interface (image -> fine, coarse) and other class counts:
    the mean colour times a random matrix, softmaxed (what the checker needs, without exporting a model)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("ReduceMean", ["image"], ["colour"], axes=[1, 2], keepdims=0)]
    weights = []
    for head, n in classes.items():
        weights.append(numpy_helper.from_array(rng.normal(size=(3, n)).astype(np.float32), f"w_{head}"))
        nodes += [helper.make_node("MatMul", ["colour", f"w_{head}"], [f"logits_{head}"]),
                  helper.make_node("Softmax", [f"logits_{head}"], [head], axis=-1)]
    graph = helper.make_graph(
        nodes, "other", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 32, 32, 3])],
        [helper.make_tensor_value_info(h, TensorProto.FLOAT, [None, n]) for h, n in classes.items()], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_checker_fails_on_other_class_count(trained_run, tmp_path, capsys, monkeypatch):
    _softmax_onnx(tmp_path / "other.onnx", {"fine": 5, "coarse": 3})
    status, out, _ = main_in_process("check_onnx", [f"--saved_model={_version_dir(trained_run)}",
                                                    f"--onnx={tmp_path / 'other.onnx'}"], capsys, monkeypatch)
    assert status == 1 and "fine: shape (32, 10) vs (32, 5)" in out


def test_onnx_metadata_has_class_names_and_flags(trained_run):
    meta = {p.key: p.value for p in onnx.load(_version_dir(trained_run) / "model.onnx").metadata_props}
    assert json.loads(meta["fine_classes"])[:3] == ["disk", "ring", "half_disk"]
    assert json.loads(meta["coarse_classes"]) == ["curved", "angular", "strokes"]
    assert "--variant=Mu/4" in meta["training_flags"] and meta["model_name"] == "quickstart"


def test_int8_shipped_only_as_its_recorded_decision_says(trained_run):
    proc, version = trained_run.proc, _version_dir(trained_run)
    metrics = json.loads((trained_run.work / "metrics.json").read_text())
    decision = metrics["int8_export"]
    assert decision == json.loads((version / "assets.extra" / "int8.json").read_text())
    assert set(decision["latency_ms"]) == {"fp32", "int8"} and set(decision["latency_ratio"]) == {"1", "32"}
    assert decision["kept"] == (max(decision["latency_ratio"].values()) <= decision["settings"]["max_latency_ratio"])
    assert (version / "model.int8.onnx").is_file() == decision["kept"]
    assert decision["summary"] in proc.stdout  # the one line the user sees
    if decision["kept"]:  # a shipped int8 model is verified
        for head in ("fine", "coarse"):
            r = metrics["int8"][head]  # fine chance 10 %, coarse 40 %; the fp32 model: 93.65 % / 94.65 %
            assert r["int8_accuracy"] > 0.88, r
            assert r["drop_points"] == pytest.approx(100 * (r["fp32_accuracy"] - r["int8_accuracy"]), abs=0.01)
            assert metrics["int8"][head]["drop_points"] <= 2.0, metrics["int8"]  # measured 0.35-0.40 points
    else:
        assert "int8" not in metrics


def test_warmup_records_are_prediction_logs(trained_run):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = _version_dir(trained_run) / "assets.extra" / "tf_serving_warmup_requests"
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path))]
    requests = [log.predict_log.request for log in logs]
    assert [(r.model_spec.name, r.model_spec.signature_name) for r in requests] == [
        ("quickstart", "serving_default")] * 2 + [("quickstart", "serving_bytes")] * 2
    assert tf.make_ndarray(requests[1].inputs["image"]).shape == (8, 32, 32, 3)
    encoded = tf.make_ndarray(requests[3].inputs["image_bytes"])
    assert encoded.shape == (8,) and encoded[0].startswith(b"\x89PNG")
    # Each record must run on its signature, as TF Serving replays it at load.
    loaded = tf.saved_model.load(str(_version_dir(trained_run)))
    out = loaded.signatures["serving_bytes"](image_bytes=tf.constant(encoded))
    assert out["fine_classes"].shape == (8, 5)


def test_saved_model_cli_show_and_run(trained_run, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    cli = Path(sys.executable).parent / "saved_model_cli"
    version = str(_version_dir(trained_run))
    show = subprocess.run([str(cli), "show", "--dir", version, "--tag_set", "serve",
                           "--signature_def", "serving_default"], capture_output=True, text=True, timeout=120)
    assert show.returncode == 0, show.stderr
    assert "inputs['image'] tensor_info" in show.stdout and "shape: (-1, 32, 32, 3)" in show.stdout
    assert "outputs['fine'] tensor_info" in show.stdout and "outputs['coarse'] tensor_info" in show.stdout
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", images)
    run = subprocess.run([str(cli), "run", "--dir", version, "--tag_set", "serve", "--signature_def",
                          "serving_default", "--inputs", f"image={tmp_path / 'x.npy'}",
                          "--outdir", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    from mtl_keras.serving import runtime

    expected = runtime.load(Path(version) / "model.onnx")(images)
    for head in ("fine", "coarse"):
        np.testing.assert_allclose(np.load(tmp_path / "o" / f"{head}.npy"), expected[head], atol=1e-5)


def test_rest_style_json_body_through_the_signature(trained_run):
    import tensorflow as tf

    from mtl_keras.data.sources import shapes

    images, fine, _ = shapes.generate(3, seed=11)
    body = json.dumps({"instances": images.astype(float).tolist()})  # what a REST client POSTs
    instances = json.loads(body)["instances"]
    loaded = tf.saved_model.load(str(_version_dir(trained_run)))
    out = loaded.signatures["serving_default"](image=tf.constant(instances, tf.float32))
    predictions = [{k: v[i].numpy().tolist() for k, v in out.items()} for i in range(len(instances))]
    assert len(predictions) == 3 and all(set(p) == {"fine", "coarse"} for p in predictions)
    assert all(len(p["fine"]) == 10 and len(p["coarse"]) == 3 for p in predictions)
    np.testing.assert_allclose([sum(p["fine"]) for p in predictions], 1.0, rtol=1e-5)


def test_export_cli_from_workdir_adds_a_version(trained_run, tmp_path, capsys, monkeypatch):
    work = trained_run.work
    # No --model_name: the run folder's name, resolved, so WORK/checkpoints/.. names the model "quickstart" (its
    # unresolved name '..' put the version outside --export_dir).
    export = tmp_path / "e"
    proc = run_module("mtl_keras.export", f"--workdir={work / 'checkpoints' / '..'}", f"--export_dir={export}",
                      "--noint8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (export / "quickstart" / "1" / "saved_model.pb").is_file() and sorted(tmp_path.iterdir()) == [export]
    assert not (export / "quickstart" / "1" / "model.int8.onnx").exists()
    clash = [f"--workdir={work}", f"--export_dir={export}", "--model_name=quickstart", "--version=1", "--noint8"]
    status, _, err = main_in_process("export", clash, capsys, monkeypatch)
    assert status == 1 and len(err.strip().splitlines()) == 1 and "exists" in err, err[-2000:]
    status, _, err = main_in_process("export", [f"--workdir={tmp_path / 'nowhere'}"], capsys, monkeypatch)
    assert status == 1 and len(err.strip().splitlines()) == 1 and "has no model.keras" in err, err[-2000:]
    status, _, err = main_in_process("export", [f"--workdir={tmp_path / 'run 1'}", f"--export_dir={export}"],
                                     capsys, monkeypatch)
    assert status == 1 and err.strip().splitlines() == [
        f"export: error: --workdir={tmp_path / 'run 1'}: its folder name 'run 1' cannot name the model; pass "
        "--model_name=NAME (letters, digits, '_' or '-')"]


def test_failed_export_leaves_no_version_folder(tmp_path, monkeypatch):
    import errno

    from mtl_keras.serving import export
    from mtl_keras.models import build_model

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "write_onnx", disk_full)
    model = build_model("vit", (16, 16, 3), {"fine": 4, "coarse": 2}, variant="Pico/4")
    with pytest.raises(OSError, match="No space left"):
        export.export(model, str(tmp_path), "m")
    assert [p.name for p in (tmp_path / "m").iterdir()] == [".lock"]  # no version, no temporary folder


# serving_bytes: encoded images in, probabilities and top-k class names out.

def _image_files(folder):
    """Five shapes images as files of every kind the folder dataset reads, at sizes that take each decode path:
    PNG and BMP at the model's 32 px, an 80 px JPEG (DCT-scaled decode + antialiased resize), a 40 px GIF
    (palette) and a grey PNG."""
    from PIL import Image

    from mtl_keras.data.sources import shapes

    images, _, _ = shapes.generate(5, seed=7)
    folder.mkdir()
    kinds = [("a.png", 32, "RGB"), ("b.jpg", 80, "RGB"), ("c.bmp", 32, "RGB"), ("d.gif", 40, "P"), ("e.png", 32, "L")]
    paths = []
    for image, (name, size, mode) in zip(images, kinds):
        Image.fromarray(image).resize((size, size), Image.BILINEAR).convert(mode).save(folder / name)
        paths.append(folder / name)
    return paths


def test_bytes_signature_sees_the_folder_datasets_pixels(trained_run, tmp_path):
    import tensorflow as tf

    from mtl_keras.data import images as images_lib
    from mtl_keras.serving import signatures

    paths = _image_files(tmp_path / "imgs")
    pixels, ok = images_lib.decode_files([str(p) for p in paths], 32)  # what --dataset=folder decodes
    assert ok.all()
    encoded = [p.read_bytes() for p in paths]
    np.testing.assert_array_equal(signatures.decode_batch(tf.constant(encoded), (32, 32, 3)).numpy(), pixels)
    loaded = tf.saved_model.load(str(_version_dir(trained_run)))
    out = signatures.run_bytes(loaded, encoded)
    reference = loaded.signatures["serving_default"](image=tf.constant(pixels, tf.float32))
    names = json.loads((_version_dir(trained_run) / "assets.extra" / "classes.json").read_text())
    for head, k in (("fine", 5), ("coarse", 3)):  # --top_k 5 by default; coarse has 3 classes
        np.testing.assert_allclose(out[head], reference[head].numpy(), atol=1e-5)
        assert out[f"{head}_classes"].shape == out[f"{head}_scores"].shape == (5, k)
        best = reference[head].numpy().argmax(-1)
        assert [c.decode() for c in out[f"{head}_classes"][:, 0]] == [names[head][i] for i in best]
        np.testing.assert_allclose(out[f"{head}_scores"], -np.sort(-reference[head].numpy())[:, :k], atol=1e-5)


def test_undecodable_image_is_an_invalid_argument_naming_it(trained_run, tmp_path):
    import tensorflow as tf

    from mtl_keras.serving import signatures

    loaded = tf.saved_model.load(str(_version_dir(trained_run)))
    good = _image_files(tmp_path / "imgs")[0].read_bytes()
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes\[1\] is not a JPEG, PNG, BMP or GIF"):
        signatures.run_bytes(loaded, [good, b"<html>not found</html>", good])
    with pytest.raises(tf.errors.InvalidArgumentError):  # a PNG cut short: the decoder's own InvalidArgument
        signatures.run_bytes(loaded, [good[:60]])
    assert signatures.run_bytes(loaded, [good])["fine"].shape == (1, 10)  # and the model still serves


def _tf_serving_rest_inputs(body: str) -> tuple[str, dict[str, list]]:
    """What TF Serving's REST layer makes of a row-format request: the signature name, and per input name the
    instances' values batched along a new first axis, each {"b64": "..."} object base64-decoded to bytes."""
    import base64

    request = json.loads(body)

    def value(v):
        return base64.b64decode(v["b64"]) if isinstance(v, dict) and list(v) == ["b64"] else v

    rows = request["instances"]
    return request.get("signature_name", "serving_default"), {name: [value(r[name]) for r in rows] for name in rows[0]}


def test_rest_b64_request_through_the_bytes_signature(trained_run, tmp_path):
    import base64

    import tensorflow as tf

    from mtl_keras.data import images as images_lib

    paths = _image_files(tmp_path / "imgs")[:2]
    body = json.dumps({"signature_name": "serving_bytes", "instances": [
        {"image_bytes": {"b64": base64.b64encode(p.read_bytes()).decode()}} for p in paths]})
    name, inputs = _tf_serving_rest_inputs(body)
    loaded = tf.saved_model.load(str(_version_dir(trained_run)))
    out = loaded.signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})
    # Row-format response: one object per instance; string outputs come back as JSON strings.
    def row(value):
        value = value.tolist() if isinstance(value, np.ndarray) else value
        if isinstance(value, bytes):  # one answer per image: label, level
            return value.decode()
        return [x.decode() if isinstance(x, bytes) else x for x in value]

    predictions = [{k: row(v[i].numpy()) for k, v in out.items()} for i in range(len(paths))]
    assert set(predictions[0]) == {"fine", "coarse", "fine_classes", "fine_scores", "coarse_classes", "coarse_scores",
                                   "label", "level"}
    pixels, _ = images_lib.decode_files([str(p) for p in paths], 32)
    reference = loaded.signatures["serving_default"](image=tf.constant(pixels, tf.float32))
    names = json.loads((_version_dir(trained_run) / "assets.extra" / "classes.json").read_text())
    for i, p in enumerate(predictions):
        fine = reference["fine"].numpy()[i]
        np.testing.assert_allclose(p["fine"], fine, atol=1e-5)
        assert p["fine_classes"][0] == names["fine"][fine.argmax()] and len(p["fine_classes"]) == 5
        assert p["fine_scores"][0] == pytest.approx(fine.max(), abs=1e-5)
        assert p["coarse_classes"][0] in names["coarse"] and len(p["coarse_classes"]) == 3
        assert p["level"] in ("fine", "coarse")
        assert p["label"] == (p["fine_classes"][0] if p["level"] == "fine" else p["coarse_classes"][0])


def test_top_k_sets_the_classes_per_head(tmp_path):
    import tensorflow as tf

    from mtl_keras.models import build_model
    from mtl_keras.serving import export, signatures

    model = build_model("vit", (16, 16, 3), {"fine": 4, "coarse": 2}, variant="Pico/4")
    version = export.export(model, str(tmp_path), "m", onnx=False, top_k=3)  # no class names: ids as names
    loaded = tf.saved_model.load(str(version))
    image = signatures.encode_png(np.full((1, 16, 16, 3), 128, np.uint8))
    out = signatures.run_bytes(loaded, image)
    assert out["fine_classes"].shape == (1, 3) and out["coarse_classes"].shape == (1, 2)  # 2 < 3: all of them
    assert {c.decode() for c in out["fine_classes"][0]} <= {"0", "1", "2", "3"}


def test_bytes_signature_refuses_images_over_the_pixel_limit(tmp_path):
    """A decompression bomb (a small file whose header claims a huge image) is refused from its header, by
    index, before any decoder allocates it; the limit is the run's --max_image_pixels."""
    import struct
    import zlib

    import tensorflow as tf

    from mtl_keras.models import build_model
    from mtl_keras.serving import export, signatures

    model = build_model("vit", (16, 16, 3), {"fine": 4, "coarse": 2}, variant="Pico/4")
    version = export.export(model, str(tmp_path), "m", onnx=False, max_pixels=40 * 40)
    loaded = tf.saved_model.load(str(version))
    small, large = (signatures.encode_png(np.full((1, side, side, 3), 9, np.uint8))[0] for side in (40, 41))
    jpeg = tf.io.encode_jpeg(np.zeros((30, 60, 3), np.uint8)).numpy()  # 1,800 pixels
    gif = b"GIF89a" + struct.pack("<HH", 50, 40) + b"\x00" * 8
    # A 100000 x 100000 PNG header (what a 420 KB bomb says): refused before zlib would inflate a byte of it.
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    bmp = b"BM" + b"\x00" * 12 + struct.pack("<Iii", 40, 50, -50)  # top-down (negative height): 2,500 pixels
    for index, bad, pixels in ((1, large, 1681), (0, jpeg, 1800), (0, gif, 2000), (2, bomb, 10**10), (0, bmp, 2500)):
        batch = [small] * index + [bad] + [small]
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=rf"image_bytes\[{index}\] holds {pixels} pixels, "
                                 "more than the limit of 1600 set at export"):
            signatures.run_bytes(loaded, batch)
    assert signatures.run_bytes(loaded, [small, small])["fine"].shape == (2, 4)  # and the model still serves


def test_checker_fails_when_the_bytes_signature_disagrees(trained_run):
    import dataclasses

    from mtl_keras.serving import runtime, verify

    saved = runtime.load(_version_dir(trained_run))
    images = verify.random_pixels(saved.shape, 4)
    assert verify.bytes_parity(saved, images, 1e-5).ok
    shifted = dataclasses.replace(saved, run_batch=lambda x: {k: np.roll(v, 1, -1)
                                                              for k, v in saved.run_batch(x).items()})
    problems = verify.bytes_parity(shifted, images, 1e-5).problems
    assert any(p.startswith("fine: max |diff|") for p in problems)
    assert "fine_scores: not the answered class's, then the largest probabilities" in problems, problems


@pytest.mark.parametrize("where", ["in-process", "child"])
def test_keras_onnx_converter_passes_the_same_checker(tmp_path, monkeypatch, where):
    from mtl_keras.models import build_model
    from mtl_keras.serving import export, onnx_convert, verify

    real, children = onnx_convert.convert_in_child, []

    def spy(converter, *args):
        children.append(converter)
        real(converter, *args)

    monkeypatch.setattr(onnx_convert, "convert_in_child", spy)
    if where == "child":  # every model counts as big: the model saved for the child, converted there
        monkeypatch.setattr(onnx_convert, "CHILD_ABOVE_BYTES", 0)
    model = build_model("vit", (16, 16, 3), {"fine": 4, "coarse": 2}, variant="Pico/4")
    version = export.export(model, str(tmp_path), "m", onnx_converter="keras")
    assert children == (["keras"] if where == "child" else [])
    proto = onnx.load(version / "model.onnx")
    assert [i.name for i in proto.graph.input] == ["image"]
    assert sorted(o.name for o in proto.graph.output) == ["coarse", "fine"]
    assert {p.key: p.value for p in proto.metadata_props}["onnx_converter"] == "keras"
    result = verify.verify(version, version / "model.onnx", verify.random_pixels((16, 16, 3), 8), keras_model=model)
    assert result.ok, result.text()
    assert [r.pair for r in result.comparisons] == ["keras vs saved_model", "saved_model vs onnx",
                                                    "serving_default vs serving_bytes"]


def test_a_failed_or_killed_conversion_child_is_one_line(tmp_path, monkeypatch):
    import subprocess

    from mtl_keras.errors import ExportError
    from mtl_keras.serving import onnx_convert

    with pytest.raises(ExportError, match=r"^ONNX conversion \(tf2onnx\) of .*nowhere failed: \S.*$"):
        onnx_convert.convert_in_child("tf2onnx", tmp_path / "nowhere", tmp_path / "m.onnx")
    killed = subprocess.CompletedProcess([], -9, "", "")
    monkeypatch.setattr(onnx_convert.subprocess, "run", lambda *a, **k: killed)
    with pytest.raises(ExportError, match=r"was killed by SIGKILL \(most likely out of memory\)$"):
        onnx_convert.convert_in_child("keras", tmp_path / "m.keras", tmp_path / "m.onnx")
