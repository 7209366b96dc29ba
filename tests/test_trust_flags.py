"""Bad trust settings are one line before anything is written."""

import pytest
from conftest import run_module


def _error_lines(proc):
    return [line for line in proc.stderr.splitlines() if line.startswith("train: error:")]


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2"])
def test_hedge_target_outside_zero_one_is_one_line(tmp_path, value):
    proc = run_module("mtl_keras.train", f"--hedge_target={value}", f"--workdir={tmp_path / 'w'}")
    assert proc.returncode == 2 and _error_lines(proc) == [
        "train: error: --hedge_target must lie strictly between 0 and 1"], proc.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("args,asked", [(["--calibrate"], "--calibrate"),
                                        (["--hedge_target=0.9"], "--hedge_target=0.9"),
                                        (["--calibrate", "--task=fine"], "--calibrate")])
def test_calibration_or_hedging_without_validation_images_is_one_line(tmp_path, args, asked):
    proc = run_module("mtl_keras.train", "--dataset=shapes", "--validation_fraction=0", "--epochs=1", *args,
                      f"--workdir={tmp_path / 'w'}", f"--export_dir={tmp_path / 'e'}")
    line = f"train: error: {asked} need validation images, and this run has none: set --validation_fraction above 0"
    assert proc.returncode == 1 and _error_lines(proc) == [line], proc.stderr
    assert not (tmp_path / "w").exists() and not (tmp_path / "e").exists()
