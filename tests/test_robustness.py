"""Runs that survive and scale: kill and resume, NaN guard, corrupt checkpoints, mixed precision,
data parallelism on TensorFlow and JAX, determinism."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, run_module

pytestmark = pytest.mark.slow
# ~93 steps an epoch of a few seconds: long enough to kill the run in the middle of an epoch.
RESUME_FLAGS = ["--dataset=shapes", "--variant=Pico/4", "--epochs=4", "--batch_size=32",
                "--max_train_examples=3000", "--learning_rate=2e-3", "--noexport", "--seed=3"]
QUICK = ["--dataset=shapes", "--variant=Pico/4", "--epochs=2", "--batch_size=64", "--max_train_examples=640"]


def _epochs_logged(history) -> list[int]:
    if not history.is_file():
        return []
    with open(history) as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def test_kill_9_mid_epoch_then_resume(tmp_path):
    work = tmp_path / "w"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "mtl_keras.train", *RESUME_FLAGS, f"--workdir={work}"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(_epochs_logged(work / "history.csv")) < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)  # into epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(_epochs_logged(work / "history.csv"))
    assert 1 <= done < 4, "the run should have been killed mid-way"
    assert not (work / "metrics.json").exists()

    again = run_module("mtl_keras.train", *RESUME_FLAGS, f"--workdir={work}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"Resumed from epoch {done}" in again.stdout
    assert _epochs_logged(work / "history.csv") == [0, 1, 2, 3]
    resumed = json.loads((work / "metrics.json").read_text())

    straight = run_module("mtl_keras.train", *RESUME_FLAGS, f"--workdir={tmp_path / 'straight'}")
    assert straight.returncode == 0
    baseline = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    for head in ("fine_accuracy", "coarse_accuracy"):
        assert abs(resumed[head] - baseline[head]) < 0.12, (resumed, baseline)


def test_nan_loss_stops_with_epoch_and_step(tmp_path):
    # (A NaN after a good epoch keeps that epoch's checkpoint: tests/test_callbacks.py.)
    proc = run_module("mtl_keras.train", *QUICK, "--learning_rate=1e30", "--warmup_epochs=0",
                      f"--workdir={tmp_path / 'nan'}", "--noexport")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train: error: loss became nan at epoch 1, step ") and "no checkpoint" in last
    assert not (tmp_path / "nan" / "metrics.json").exists()


def test_truncated_checkpoint_is_one_line(tmp_path):
    work = tmp_path / "w"
    first = run_module("mtl_keras.train", *QUICK, f"--workdir={work}", "--noexport")
    assert first.returncode == 0
    weights = work / "checkpoints" / "epoch-2.weights.h5"
    weights.write_bytes(weights.read_bytes()[:1000])
    proc = run_module("mtl_keras.train", *QUICK, f"--workdir={work}", "--noexport")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"train: error: checkpoint {weights} cannot be read (")
    assert last.endswith(f"delete {work / 'checkpoints'} to start the run over")


def test_bfloat16_training_exports_float32(tmp_path):
    proc = run_module("mtl_keras.train", *QUICK, "--mixed_precision=bfloat16", f"--workdir={tmp_path / 'w'}",
                      f"--export_dir={tmp_path / 'e'}", "--model_name=bf16", "--noint8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "bfloat16" in proc.stdout
    metrics = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert metrics["onnx_parity_ok"] is True
    import onnx

    proto = onnx.load(tmp_path / "e" / "bf16" / "1" / "model.onnx")
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert not any(t.data_type == onnx.TensorProto.BFLOAT16 for t in proto.graph.initializer)


def test_mirrored_on_two_logical_cpus(tmp_path):
    common = [*QUICK, "--epochs=3", "--noexport", "--seed=5"]
    two = run_module("mtl_keras.train", *common, "--cpu_devices=2", "--distribution=mirrored",
                     f"--workdir={tmp_path / 'two'}")
    assert two.returncode == 0, two.stderr[-2000:]
    assert "2 replica(s)" in two.stdout
    one = run_module("mtl_keras.train", *common, "--distribution=none", f"--workdir={tmp_path / 'one'}")
    assert one.returncode == 0 and "1 replica(s)" in one.stdout

    def losses(name):
        with open(tmp_path / name / "history.csv") as f:
            return [float(r["loss"]) for r in csv.DictReader(f)]

    for curve in (losses("two"), losses("one")):
        assert curve[-1] < curve[0]  # both learn
    assert abs(losses("two")[-1] - losses("one")[-1]) < 0.3


def test_deterministic_runs_repeat_to_the_last_digit(tmp_path):
    flags = [*QUICK, "--deterministic", "--noexport", "--seed=7"]
    a = run_module("mtl_keras.train", *flags, f"--workdir={tmp_path / 'a'}")
    b = run_module("mtl_keras.train", *flags, f"--workdir={tmp_path / 'b'}")
    assert a.returncode == 0 and b.returncode == 0
    ma, mb = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in "ab")
    timings = ("train_seconds", "train_images_per_second")  # wall-clock figures, the rest must repeat
    assert {k: v for k, v in ma.items() if k not in timings} == {k: v for k, v in mb.items() if k not in timings}
    assert (tmp_path / "a" / "history.csv").read_text() == (tmp_path / "b" / "history.csv").read_text()


def test_trunks_heads_losses_on_jax_backend():
    pytest.importorskip("jax")
    env = {**os.environ, "PYTHONPATH": str(REPO), "KERAS_BACKEND": "jax",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "scripts" / "jax_backend.py")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.split("JSON:")[-1])
    assert report["backend"] == "jax" and report["tensorflow_imported"] is False
    assert len(report["runs"]) == 5
    for run in report["runs"]:
        assert run["outputs"] == {"fine": [3, 10], "coarse": [3, 3]} and run["loss"] == run["loss"]  # not NaN
    assert report["data_parallel"]["replicas"] == 2 and len(report["data_parallel"]["loss"]) == 2


def test_train_cli_on_jax_exports_through_tensorflow(tmp_path):
    pytest.importorskip("jax")
    env = {**os.environ, "PYTHONPATH": str(REPO), "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "mtl_keras.train", *QUICK, "--epochs=1", "--noint8",
                           f"--workdir={tmp_path / 'w'}", f"--export_dir={tmp_path / 'e'}", "--model_name=jx"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "e" / "jx" / "1" / "model.onnx").is_file()
    assert "keras vs saved_model" in proc.stdout and proc.stdout.count("PASS") >= 2
    # The TensorFlow process's checks reach metrics.json as on the TensorFlow backend.
    metrics = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert metrics["onnx_parity_ok"] is True and [c["pair"] for c in metrics["parity"]] == [
        "keras vs saved_model", "saved_model vs onnx"]
    assert metrics["parity"][0]["num_inputs"] == 32 + 256
