"""Which int8 quantization is faster than fp32 here, and what does it cost in accuracy? One table per model.

    python benchmarks/int8_options.py --workdir=RUN --onnx=EXPORT/1/model.onnx [--data_dir=DIR] [--only=a,b]

For every named option set below: quantizes RUN's fp32 ONNX (calibrated on the first 256 training images, as
export does), times fp32 and int8 at batch 1 and 32 (onnxruntime CPU, calls interleaved, `compare_latency`),
and measures test accuracy per head of both on the run's whole test split. `--data_dir` overrides the run's
(a run from another checkout). The export's default (`Int8Settings()`) was chosen from these tables
(BUILD_NOTES.md "int8").
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

MM = ("MatMul", "Gemm")
MMC = ("Conv", "MatMul", "Gemm")
OPTIONS = {  # name -> Int8Settings fields
    "old_qdq_all_pct": dict(quant_format="qdq", op_types=(), per_channel=True, activation_type="qint8",
                            calibration="percentile"),
    "qdq_mmc_minmax": dict(quant_format="qdq", op_types=MMC),
    "qdq_mmc_s8_pc": dict(quant_format="qdq", op_types=MMC, activation_type="qint8", per_channel=True),
    "qop_mmc_minmax": dict(quant_format="qoperator", op_types=MMC),
    "qop_mmc_pc": dict(quant_format="qoperator", op_types=MMC, per_channel=True),
    "qop_mm_minmax": dict(quant_format="qoperator", op_types=MM),
    "qop_conv_minmax": dict(quant_format="qoperator", op_types=("Conv",)),
    "qop_mmc_s8": dict(quant_format="qoperator", op_types=MMC, activation_type="qint8"),
    "qop_mmc_rr": dict(quant_format="qoperator", op_types=MMC, reduce_range=True),
    "qop_mmc_pct": dict(quant_format="qoperator", op_types=MMC, calibration="percentile"),
    "dyn_mm": dict(mode="dynamic", op_types=MM),
    "dyn_mmc": dict(mode="dynamic", op_types=MMC),
}


def main() -> None:
    import onnx

    from mtl_keras.data import datasets
    from mtl_keras.data.images import fit_images
    from mtl_keras.serving import quantize, runs, runtime

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, type=Path, help="training run (config.json, classes.json)")
    parser.add_argument("--onnx", required=True, type=Path, help="its fp32 model.onnx")
    parser.add_argument("--data_dir", default=None, help="override the run's --data_dir")
    parser.add_argument("--only", default="", help="comma-separated option names (default: all)")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing seconds per batch size")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (0: its default)")
    args = parser.parse_args()

    config, _, _ = runs.read_run(args.workdir, need_model=False)
    data = dataclasses.replace(config.data, download=False, **({"data_dir": args.data_dir} if args.data_dir else {}))
    splits = datasets.prepare(data, config.run.seed)
    fp32 = runtime.load(args.onnx, "--onnx")
    calibration = fit_images(splits.train.images[:runs.CALIBRATION_IMAGES], fp32.shape).astype(np.float32)
    labelled = list(runs.labelled_batches(splits.test, splits.info, fp32.shape))
    ops = sorted({n.op_type for n in onnx.load(args.onnx).graph.node})
    all_ops = tuple(op for op in ops if op not in ("Shape", "Reshape", "Transpose", "Concat", "Gather", "Squeeze",
                                                    "Unsqueeze", "Identity", "Cast"))
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
          f"{args.threads or 'default'} thread(s), {args.onnx}, "
          f"{sum(len(b[0]) for b in labelled)} test images, ops: {' '.join(ops)}")
    print(f"{'option':<16} {'fp32 b1':>8} {'int8 b1':>8} {'ratio':>6} {'fp32 b32':>9} {'int8 b32':>9} {'ratio':>6} "
          f"{'fine drop':>9} {'coarse drop':>11} {'quant s':>7}")
    names = [n for n in args.only.split(",") if n] or list(OPTIONS)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            fields = dict(OPTIONS[name])
            if fields.get("op_types") == ():
                fields["op_types"] = all_ops  # the old default: every op type onnxruntime can quantize
            settings = quantize.Int8Settings(**fields)
            path = Path(tmp) / f"{name}.onnx"
            start = time.perf_counter()
            quantize.quantize(args.onnx, path, calibration, settings)
            seconds = time.perf_counter() - start
            ms = quantize.compare_latency({"fp32": quantize.session(args.onnx, args.threads),
                                           "int8": quantize.session(path, args.threads)},
                                          calibration, seconds=args.seconds)
            drop = runtime_drop(fp32, runtime.load(path), labelled)
            r1, r32 = ms["int8"][1] / ms["fp32"][1], ms["int8"][32] / ms["fp32"][32]
            print(f"{name:<16} {ms['fp32'][1]:>8.3f} {ms['int8'][1]:>8.3f} {r1:>6.2f} {ms['fp32'][32]:>9.2f} "
                  f"{ms['int8'][32]:>9.2f} {r32:>6.2f} {drop.get('fine', float('nan')):>9.2f} "
                  f"{drop.get('coarse', float('nan')):>11.2f} {seconds:>7.1f}", flush=True)
    print("# fp32 accuracy: " + ", ".join(f"{h} {a:.2%}" for h, a in runtime_drop.fp32.items()))


def runtime_drop(fp32, int8, labelled) -> dict[str, float]:
    """Test-accuracy drop in points per head (the package's `int8_accuracy_drop`)."""
    from mtl_keras.serving import verify

    report = verify.int8_accuracy_drop(fp32, int8, labelled)
    runtime_drop.fp32 = {h: r["fp32_accuracy"] for h, r in report.items()}
    return {h: r["drop_points"] for h, r in report.items()}


if __name__ == "__main__":
    main()
