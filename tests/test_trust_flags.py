"""Bad trust settings are one line before anything is written."""

import pytest
from conftest import parsed_in_process, refused_in_process, run_module


def _error_lines(proc):
    return [line for line in proc.stderr.splitlines() if line.startswith("train: error:")]


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2"])
def test_hedge_target_outside_zero_one_is_one_line(tmp_path, value, capsys):
    # train's own parser in-process: it exits (status 2) before run() could write anything.
    assert parsed_in_process("train", [f"--hedge_target={value}", f"--workdir={tmp_path / 'w'}"], capsys) == (
        2, ["train: error: --hedge_target must lie strictly between 0 and 1"])


@pytest.mark.parametrize("args,asked", [(["--calibrate"], "--calibrate"),
                                        (["--hedge_target=0.9"], "--hedge_target=0.9"),
                                        (["--calibrate", "--task=fine"], "--calibrate")])
def test_calibration_or_hedging_without_validation_images_is_one_line(tmp_path, args, asked):
    # train.run's checks in-process (they come before anything is written); the CLI end to end: below.
    line = refused_in_process(["--dataset=shapes", "--validation_fraction=0", "--epochs=1", *args,
                               f"--workdir={tmp_path / 'w'}", f"--export_dir={tmp_path / 'e'}"])
    assert line == f"train: error: {asked} need validation images, and this run has none: set --validation_fraction " \
                   "above 0"
    assert not (tmp_path / "w").exists() and not (tmp_path / "e").exists()


@pytest.mark.slow
def test_bad_trust_settings_through_the_cli_are_one_line(tmp_path):
    # A flag's own check, end to end. train.run's refusals: in-process above; the CLI prints such a refusal as one
    # line too (tests/test_train.py, test_conflicting_flags_fail_before_anything_is_written).
    proc = run_module("mtl_keras.train", "--hedge_target=1.5", f"--workdir={tmp_path / 'w'}",
                      f"--export_dir={tmp_path / 'e'}")
    assert proc.returncode == 2 and _error_lines(proc) == [
        "train: error: --hedge_target must lie strictly between 0 and 1"], proc.stderr
    assert not (tmp_path / "w").exists() and not (tmp_path / "e").exists()
