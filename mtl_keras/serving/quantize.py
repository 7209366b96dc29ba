"""int8 ONNX: quantize the fp32 export, time both on the calibration images, ship int8 only when faster.

`write_int8` is what export calls. It quantizes with `Int8Settings` (the defaults were chosen by measurement,
BUILD_NOTES.md "int8"), then times fp32 and int8 in onnxruntime on the calibration images at batch 1 and 32,
calls interleaved so a loaded machine slows both alike, and keeps `model.int8.onnx` only when int8 runs at
<= `max_latency_ratio` of fp32 at both batch sizes. The decision and its figures are returned and written
beside the model (assets.extra/int8.json), so a slower int8 file is never shipped silently.

Memory: the default (dynamic) needs no calibration at all. For static int8, MinMax calibration adds
ReduceMin/ReduceMax nodes to the graph and keeps two numbers per tensor and batch; histogram methods (percentile,
entropy) keep every activation of every calibration image, which for ResNet-152 at 224 px reached ~22 GB.
Calibration runs `calibration_batch` images at a time.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from mtl_keras.errors import ExportError

FORMATS = ("qoperator", "qdq")
MODES = ("static", "dynamic")
ACTIVATION_TYPES = ("quint8", "qint8")
CALIBRATIONS = ("minmax", "percentile", "entropy")
LATENCY_BATCHES = (1, 32)


@dataclasses.dataclass(frozen=True)
class Int8Settings:
    """How to quantize. Defaults: see BUILD_NOTES.md "int8" for every combination measured."""
    mode: str = "dynamic"  # dynamic (activation scales computed per call) or static (calibrated)
    quant_format: str = "qoperator"  # static only: qoperator (QLinearConv / QLinearMatMul) or qdq (Q/DQ pairs)
    op_types: tuple[str, ...] = ("MatMul", "Gemm")  # softmax, LayerNorm, GELU (and Conv) stay float
    per_channel: bool = False
    reduce_range: bool = False  # 7-bit weights: only for CPUs without VNNI (this one has AVX512_VNNI)
    activation_type: str = "quint8"
    calibration: str = "minmax"
    calibration_batch: int = 16  # images per calibration run: bounds its memory
    max_latency_ratio: float = 1.0  # keep int8 only when int8 / fp32 latency <= this at batch 1 and 32

    def __post_init__(self):
        for name, value, allowed in (("mode", self.mode, MODES), ("quant_format", self.quant_format, FORMATS),
                                     ("activation_type", self.activation_type, ACTIVATION_TYPES),
                                     ("calibration", self.calibration, CALIBRATIONS)):
            if value not in allowed:
                raise ExportError(f"int8 {name} {value!r} is not one of {', '.join(allowed)}")
        if not self.op_types:
            raise ExportError("int8 op_types is empty: name at least one ONNX op type, e.g. MatMul")
        if self.calibration_batch < 1:
            raise ExportError(f"int8 calibration_batch must be >= 1, got {self.calibration_batch}")


def quantize(onnx_path: Path, path: Path, calibration_images: np.ndarray | None,
             settings: Int8Settings = Int8Settings()) -> None:
    """Writes the int8 model of `onnx_path` to `path` (calibration images: float32 raw pixels, static only)."""
    from onnxruntime import quantization as q

    types = {"quint8": q.QuantType.QUInt8, "qint8": q.QuantType.QInt8}
    common = dict(op_types_to_quantize=list(settings.op_types), per_channel=settings.per_channel,
                  reduce_range=settings.reduce_range, weight_type=q.QuantType.QInt8)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference + constant folding; the symbolic pass needs sympy, which nothing else needs.
        q.quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        if settings.mode == "dynamic":
            q.quantize_dynamic(str(prepared), str(path), **common)
            return
        if calibration_images is None or not len(calibration_images):
            raise ExportError("static int8 needs calibration images; pass some or use dynamic mode")
        methods = {"minmax": q.CalibrationMethod.MinMax, "percentile": q.CalibrationMethod.Percentile,
                   "entropy": q.CalibrationMethod.Entropy}
        q.quantize_static(
            str(prepared), str(path), _Batches(calibration_images, settings.calibration_batch, q),
            quant_format=q.QuantFormat.QDQ if settings.quant_format == "qdq" else q.QuantFormat.QOperator,
            activation_type=types[settings.activation_type], calibrate_method=methods[settings.calibration],
            extra_options={"CalibPercentile": 99.99}, **common)


def _Batches(images: np.ndarray, batch: int, q):
    """A CalibrationDataReader that hands out `batch` images at a time (converted batch by batch)."""
    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.starts = iter(range(0, len(images), batch))

        def get_next(self):
            start = next(self.starts, None)
            return None if start is None else {"image": np.asarray(images[start:start + batch], np.float32)}

    return Reader()


def session(path: Path, threads: int = 0):
    """An onnxruntime CPU session: default options (as `runtime.load`) with `threads` 0, else that many
    intra-op threads and no spinning."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare_latency(sessions: dict[str, object], images: np.ndarray, batches=LATENCY_BATCHES,
                    seconds: float = 2.0, min_calls: int = 5) -> dict[str, dict[int, float]]:
    """Median milliseconds per call of each session at each batch size, calls interleaved round-robin so that
    load from other processes falls on all of them alike; each batch size gets ~`seconds` (at least
    `min_calls` calls per session) after one warmup call each."""
    out = {name: {} for name in sessions}
    for batch in batches:
        x = np.resize(np.asarray(images, np.float32), (batch, *images.shape[1:]))  # repeats images if few
        feeds = {name: (s, {s.get_inputs()[0].name: x}) for name, s in sessions.items()}
        times = {name: [] for name in sessions}
        for s, feed in feeds.values():
            s.run(None, feed)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or min(map(len, times.values())) < min_calls:
            for name, (s, feed) in feeds.items():
                start = time.perf_counter()
                s.run(None, feed)
                times[name].append((time.perf_counter() - start) * 1e3)
        for name in sessions:
            out[name][batch] = round(float(np.median(times[name])), 4)
    return out


def write_int8(onnx_path: Path, path: Path, calibration_images: np.ndarray | None,
               settings: Int8Settings = Int8Settings(), timing_seconds: float = 2.0, threads: int = 1) -> dict:
    """Quantizes `onnx_path` into `path`, times it against fp32, and removes `path` again when int8 is not
    faster (ratio > settings.max_latency_ratio at any batch size). Returns the decision and its figures.

    Timed with `threads` intra-op threads (1): on a shared CPU, a thread pool that spins while other processes
    hold the cores turns their load into noise larger than the difference measured (fp32 batch 1 of the CIFAR
    model read 12.8 and 22.2 ms in consecutive measurements at load average 8 with the default pool)."""
    quantize(onnx_path, path, calibration_images, settings)
    images = calibration_images if calibration_images is not None and len(calibration_images) else None
    if images is None:
        shape = [d if isinstance(d, int) else 1 for d in session(onnx_path).get_inputs()[0].shape[1:]]
        images = np.random.default_rng(0).integers(0, 256, (32, *shape)).astype(np.float32)
    latency = compare_latency({"fp32": session(onnx_path, threads), "int8": session(path, threads)}, images,
                              seconds=timing_seconds)
    ratio = {b: round(latency["int8"][b] / latency["fp32"][b], 3) for b in LATENCY_BATCHES}
    kept = all(r <= settings.max_latency_ratio for r in ratio.values())
    worst = max(ratio, key=ratio.get)
    line = (f"int8: {'kept' if kept else 'not shipped'}: {path.name} runs at {ratio[worst]:.2f}x the fp32 "
            f"latency at batch {worst} ({latency['int8'][worst]:.2f} vs {latency['fp32'][worst]:.2f} ms, "
            f"calibration images, onnxruntime CPU, {threads or 'default'} thread(s))"
            + ("" if kept else f", above the {settings.max_latency_ratio:g}x limit"))
    if not kept:
        path.unlink()
    print(line)
    return {"kept": kept, "summary": line, "latency_ms": {k: {str(b): v for b, v in d.items()}
                                                          for k, d in latency.items()},
            "latency_ratio": {str(b): r for b, r in ratio.items()}, "timing_threads": threads,
            "settings": dataclasses.asdict(settings)}
