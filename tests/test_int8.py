"""int8 export (serving/quantize.py): what gets quantized, the keep-only-when-faster decision, bad settings.

Timing itself is not tested here (speed lives in benchmarks/int8_options.py and benchmarks/inference.py): the
decision tests inject the latencies.
"""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mtl_keras.errors import ExportError
from mtl_keras.serving import quantize


@pytest.fixture(scope="module")
def mlp_onnx(tmp_path_factory):
    """A two-head MLP with the export's names (image -> fine, coarse): MatMul, Add, Relu, Softmax."""
    rng = np.random.default_rng(0)
    weights = {"w1": rng.normal(0, 0.1, (12, 32)), "b1": np.zeros(32), "wf": rng.normal(0, 0.3, (32, 5)),
               "wc": rng.normal(0, 0.3, (32, 2))}
    nodes = [helper.make_node("Reshape", ["image", "flat"], ["x"]),
             helper.make_node("Div", ["x", "scale"], ["xs"]),
             helper.make_node("MatMul", ["xs", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["h"]),
             helper.make_node("MatMul", ["h", "wf"], ["lf"]), helper.make_node("Softmax", ["lf"], ["fine"]),
             helper.make_node("MatMul", ["h", "wc"], ["lc"]), helper.make_node("Softmax", ["lc"], ["coarse"])]
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    inits += [numpy_helper.from_array(np.array([-1, 12], np.int64), "flat"),
              numpy_helper.from_array(np.array(255.0, np.float32), "scale")]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 2, 2, 3])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", k]) for n, k in (("fine", 5), ("coarse", 2))],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path_factory.mktemp("mlp") / "model.onnx"
    onnx.save(model, path)
    return path


def _images(n=40):
    return np.random.default_rng(1).integers(0, 256, (n, 2, 2, 3)).astype(np.float32)


def _ops(path):
    return {n.op_type for n in onnx.load(path).graph.node}


def test_static_quantizes_matmul_in_qoperator_form_and_leaves_softmax_float(mlp_onnx, tmp_path):
    quantize.quantize(mlp_onnx, tmp_path / "q.onnx", _images(), quantize.Int8Settings(mode="static"))
    ops = _ops(tmp_path / "q.onnx")
    assert "QLinearMatMul" in ops and "MatMul" not in ops and "Softmax" in ops
    assert "QLinearSoftmax" not in ops and "QuantizeLinear" in ops and "DequantizeLinear" in ops
    from mtl_keras.serving import runtime

    fp32, int8 = runtime.load(mlp_onnx)(_images()), runtime.load(tmp_path / "q.onnx")(_images())
    for head in ("fine", "coarse"):  # int8 close to fp32 on the calibration images themselves
        assert np.abs(fp32[head] - int8[head]).max() < 0.05, head


def test_default_dynamic_needs_no_calibration_and_static_does(mlp_onnx, tmp_path):
    quantize.quantize(mlp_onnx, tmp_path / "d.onnx", None)
    ops = _ops(tmp_path / "d.onnx")
    assert {"DynamicQuantizeLinear", "MatMulInteger"} & ops and "MatMul" not in ops and "Softmax" in ops
    from mtl_keras.serving import runtime

    fp32, int8 = runtime.load(mlp_onnx)(_images()), runtime.load(tmp_path / "d.onnx")(_images())
    assert max(np.abs(fp32[h] - int8[h]).max() for h in ("fine", "coarse")) < 0.05
    with pytest.raises(ExportError, match="static int8 needs calibration images"):
        quantize.quantize(mlp_onnx, tmp_path / "s.onnx", None, quantize.Int8Settings(mode="static"))


def test_calibration_reads_bounded_batches():
    from onnxruntime import quantization as q

    reader = quantize._Batches(_images(10), 4, q)
    sizes = []
    while (batch := reader.get_next()) is not None:
        sizes.append(len(batch["image"]))
        assert batch["image"].dtype == np.float32
    assert sizes == [4, 4, 2]


@pytest.mark.parametrize("int8_ms, kept", [((0.5, 10.0), True), ((0.5, 21.0), False), ((1.5, 10.0), False)])
def test_int8_file_kept_only_when_faster_at_both_batch_sizes(mlp_onnx, tmp_path, monkeypatch, capsys,
                                                             int8_ms, kept):
    def fake_latency(sessions, images, **kwargs):
        return {"fp32": {1: 1.0, 32: 20.0}, "int8": dict(zip((1, 32), int8_ms))}

    monkeypatch.setattr(quantize, "compare_latency", fake_latency)
    decision = quantize.write_int8(mlp_onnx, tmp_path / "model.int8.onnx", _images())
    assert decision["kept"] is kept and (tmp_path / "model.int8.onnx").exists() is kept
    assert decision["latency_ratio"] == {"1": int8_ms[0], "32": int8_ms[1] / 20.0}
    assert decision["settings"]["mode"] == "dynamic" and json.dumps(decision)
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == [decision["summary"]]
    assert printed[0].startswith("int8: kept" if kept else "int8: not shipped")


def test_a_looser_latency_limit_ships_a_slower_int8(mlp_onnx, tmp_path, monkeypatch):
    monkeypatch.setattr(quantize, "compare_latency",
                        lambda sessions, images, **kw: {"fp32": {1: 1.0, 32: 1.0}, "int8": {1: 2.0, 32: 2.0}})
    decision = quantize.write_int8(mlp_onnx, tmp_path / "m.onnx", _images(),
                                   quantize.Int8Settings(max_latency_ratio=float("inf")))
    assert decision["kept"] and (tmp_path / "m.onnx").is_file()


@pytest.mark.parametrize("field, value, message", [
    ("quant_format", "qd", "int8 quant_format 'qd' is not one of qoperator, qdq"),
    ("calibration", "histogram", "int8 calibration 'histogram' is not one of minmax, percentile, entropy"),
    ("op_types", (), "int8 op_types is empty"),
    ("calibration_batch", 0, "int8 calibration_batch must be >= 1, got 0")])
def test_bad_settings_are_one_line(field, value, message):
    with pytest.raises(ExportError, match=message) as err:
        quantize.Int8Settings(**{field: value})
    assert "\n" not in str(err.value)
