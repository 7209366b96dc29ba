"""The package as a user installs it: the wheel holds every config and the `mtl-keras` command, and a
non-editable install works from a folder outside the clone (the README's quick start as shipped: train,
export, int8 and parity; then check it again and classify an image file). The install and the quick-start run
are the session's shared fixtures (conftest.installed, conftest.trained_run)."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from conftest import REPO, require, run_checked

CONFIG_DIR = REPO / "mtl_keras" / "configs"
TF_NOISE = ("absl::InitializeLog", "cudart_stub.cc", "cuInit", "shuffle=True")


@pytest.mark.slow
def test_wheel_holds_every_config_and_the_command(installed):
    names = zipfile.ZipFile(installed.wheel).namelist()
    shipped = {p.relative_to(REPO).as_posix() for p in CONFIG_DIR.rglob("*.flags")}
    assert len(shipped) > 50 and shipped <= set(names), sorted(shipped - set(names))[:5]
    [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "mtl-keras = mtl_keras.cli:" in zipfile.ZipFile(installed.wheel).read(entry_points).decode()
    assert installed.where.startswith(str(installed.site)), installed.where  # the wheel's copy, not the clone's


@pytest.mark.slow
def test_installed_command_lists_trains_exports_checks_and_predicts_outside_the_clone(installed, trained_run,
                                                                                     tmp_path):
    image_lib = require("PIL.Image")
    mtl_keras, env = installed.bin / "mtl-keras", installed.env

    listing = run_checked([mtl_keras, "configs"], tmp_path, env).stdout
    assert "quickstart " in listing and "cifar10_study/a_vit_mu4 " in listing

    # The README's quick start exactly as shipped (conftest.trained_run): 8 epochs on `shapes`, the export, int8
    # and the parity check.
    proc, user = trained_run.proc, trained_run.user
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("Keras 3.") and (" CPU only " in lines[0] or " GPU" in lines[0]), lines[0]
    assert any(line.startswith("epoch 8/8: ") and " elapsed, about 0:00 left" in line for line in lines), lines
    assert not any(noise in proc.stdout + proc.stderr for noise in TF_NOISE), proc.stderr[-3000:]
    # Every check the export runs passed: three parity pairs, then the int8 gate, then the overall verdict.
    assert sum(line.strip() == "PASS" for line in lines) == 4, proc.stdout[-3000:]
    # The int8 model ships only where it runs faster than fp32, measured on this machine at this moment: either
    # its accuracy check, or the one line that says why it was not shipped (seen at 1.00x on a loaded 2-core box).
    assert any(line.startswith("int8 fine: test accuracy ") for line in lines) or any(
        line.startswith("int8: not shipped: model.int8.onnx runs at ") for line in lines), proc.stdout[-3000:]
    metrics = json.loads((trained_run.work / "metrics.json").read_text())
    # README: 93.65 % fine / 94.65 % coarse on this CPU (deterministic here); 10-class chance is 10 %. The bound
    # leaves room for another CPU's float order.
    assert metrics["fine_accuracy"] > 0.90 and metrics["coarse_accuracy"] > 0.90, metrics
    assert f"fine_accuracy {100 * metrics['fine_accuracy']:.2f}%" in proc.stdout
    version = trained_run.version
    assert version == user / "export" / "quickstart" / "1"
    assert {p.name for p in version.iterdir()} >= {"saved_model.pb", "model.onnx"} | (
        {"model.int8.onnx"} if "int8: not shipped" not in proc.stdout else set())

    # Run from the user's folder, as the README shows (the check writes nothing there).
    check = run_checked([mtl_keras, "check", f"--saved_model={version}", f"--onnx={version / 'model.onnx'}",
                         "--keras_model=runs/quickstart/model.keras", "--num_random=4"], user, env)
    assert check.stdout.splitlines()[-1] == "PASS", check.stdout

    rng = np.random.default_rng(0)
    image_lib.fromarray(rng.integers(0, 255, (32, 32, 3), dtype="uint8")).save(tmp_path / "image.png")
    predicted = run_checked([mtl_keras, "predict", f"--model={version}", "image.png"], tmp_path, env).stdout
    assert predicted.startswith("image.png: fine=") and " coarse=" in predicted, predicted
