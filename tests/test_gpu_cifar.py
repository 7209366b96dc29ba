"""benchmarks/gpu_cifar.py: timing and MFU around `mtl_keras.train.run`, with no training code of its own."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest
from conftest import REPO, subprocess_env

BENCHMARK = REPO / "benchmarks" / "gpu_cifar.py"
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_cifar  # noqa: E402  (benchmarks/ is not a package: on sys.path above)


def test_peak_table_and_mfu_formula():
    assert gpu_cifar.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16", None)[0] == 989.0
    assert gpu_cifar.peak_tflops("NVIDIA H100 PCIe", "float32", None)[0] == 378.0
    assert gpu_cifar.peak_tflops("cpu (2 cores)", "float32", None)[0] is None
    assert gpu_cifar.peak_tflops("cpu (2 cores)", "float32", 2.5) == (2.5, "--peak_tflops=2.5")
    # 3 x 2 GFLOP x 500 images/s = 3 TFLOP/s of a 10 TFLOP/s peak
    assert gpu_cifar.mfu(2e9, 500.0, 10.0) == pytest.approx(0.3)
    assert gpu_cifar.mfu(2e9, 500.0, None) is None


def test_the_benchmark_trains_only_through_train_run():
    source = BENCHMARK.read_text()
    assert len(source.splitlines()) <= 150
    names = {n.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef)}
    assert not names & {"flip_crop", "mixup", "cutmix", "carve", "decode", "parse_args", "train_batches", "one_hot"}
    assert "train.run(config)" in source


@pytest.mark.slow
def test_benchmark_reports_mfu_of_a_real_run_on_cpu_with_a_fake_peak(tmp_path):
    work = tmp_path / "w"
    proc = subprocess.run([sys.executable, str(BENCHMARK), "--dataset=shapes", "--model=vit", "--variant=Pico/4",
                           "--epochs=2", "--batch_size=64", "--max_train_examples=256", "--validation_fraction=0.02",
                           "--noexport", "--peak_tflops=0.001", "--input_pipeline=host", f"--workdir={work}"],
                          cwd=REPO, capture_output=True, text=True,
                          check=False, timeout=600, env=subprocess_env(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["device"].startswith("cpu") and result["peak_tflops"] == 0.001
    assert len(result["per_epoch_images_per_s"]) == 2 and result["train_examples"] == 256
    assert result["images_per_s"] == pytest.approx(result["per_epoch_images_per_s"][1], rel=1e-3)
    expected = 3 * result["forward_gflops"] * 1e9 * result["images_per_s"] / 1e9
    assert result["mfu"] == pytest.approx(expected, rel=1e-3, abs=1e-4) and result["mfu"] > 0
    assert 0 <= result["fine_accuracy"] <= 1 and (work / "model.keras").is_file()
    # The run is train.py's, with its records.
    config = json.loads((work / "config.json").read_text())
    assert config["model"] == "vit" and (work / "metrics.json").is_file() and (work / "history.csv").is_file()
