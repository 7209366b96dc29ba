"""A quiet start: TensorFlow's C++ start-up lines are dropped unless asked for, and what was found is said in words."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO, subprocess_env

from mtl_keras import console

TF_NOISE = ("absl::InitializeLog", "cudart_stub.cc", "port.cc", "cuInit")


def test_filtered_stderr_drops_the_start_up_lines_and_keeps_the_rest(capfd):
    with console.filtered_stderr():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
                    b"I0000 00:00:1796480390.532743   20644 port.cc:153] oneDNN custom operations are on.\n"
                    b"E0000 00:00:1796480339.713752   20020 cuda_platform.cc:52] failed call to cuInit: X\n"
                    b"a line of the user's own\n")
    assert capfd.readouterr().err == "a line of the user's own\n"


def _import_tensorflow(*argv: str, **env: str) -> str:
    environment = {k: v for k, v in subprocess_env(**env).items() if k != "TF_CPP_MIN_LOG_LEVEL" or env}
    # Also counts the garbage collections by the end of `import tensorflow`: at most the one as the collector
    # comes back on after it (about 900 with the collector on during the import).
    code = ("import gc, mtl_keras; runs = []; gc.callbacks.append(lambda phase, info: runs.append(phase)); "
            "import tensorflow as tf; print('imported', runs.count('stop'), gc.isenabled()); "
            "tf.config.list_physical_devices()")
    proc = subprocess.run(check=False, args=[sys.executable, "-c", code, *argv], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.startswith("imported "), proc.stdout + proc.stderr[-2000:]
    _, collections, collecting = proc.stdout.split()
    assert int(collections) <= 1 and collecting == "True", proc.stdout
    return proc.stderr


@pytest.mark.slow  # two Pythons importing TensorFlow
def test_importing_tensorflow_through_the_package_prints_nothing_unless_asked_and_pauses_the_collector():
    quiet = _import_tensorflow()
    assert not any(noise in quiet for noise in TF_NOISE), quiet
    # --verbose keeps TensorFlow's lines (this machine prints some); the user's own TF_CPP_MIN_LOG_LEVEL: below.
    assert "absl::InitializeLog" in _import_tensorflow("--verbose")


@pytest.mark.parametrize("user_level, argv, level", [
    (None, ["train"], "3"),  # raised: neither the user nor a flag asked for TensorFlow's lines
    ("0", ["train"], "0"),  # the user's own level is kept
    (None, ["train", "--verbose"], None),  # --verbose leaves the variable unset
])
def test_the_log_level_is_raised_only_when_neither_the_user_nor_a_flag_set_it(monkeypatch, user_level, argv, level):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "x")  # so that the worker's own value comes back after the test
    if user_level is None:
        monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    else:
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", user_level)
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))  # any finder it adds goes with the test
    console.quiet_native_logs(argv)
    assert os.environ.get("TF_CPP_MIN_LOG_LEVEL") == level


def test_hardware_line_names_backend_and_devices():
    import tensorflow as tf

    line = console.hardware_line()
    gpus = len(tf.config.list_physical_devices("GPU"))
    assert line.startswith("Keras 3.") and " on TensorFlow 2." in line
    assert line.endswith(f": {gpus} GPU{'s' if gpus > 1 else ''}" if gpus else ": CPU only (no GPU found)")


def test_epoch_clock_runs_on_across_the_fits_of_a_run_and_a_budget_caps_its_estimate(capsys, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(console.time, "time", lambda: now[0])
    _, clock = console.epoch_clock(36, 0, budget_left=lambda: 450.0)
    for epoch in (0, 1):  # progressive resolution: two fits of one run, one epoch each here
        clock.on_train_begin()
        now[0] += 30
        clock.on_epoch_end(epoch)
    _, plain = console.epoch_clock(10, 4)  # resumed at epoch 4, no budget: mean epoch time x epochs to go
    plain.on_train_begin()
    now[0] += 60
    plain.on_epoch_end(4)
    assert capsys.readouterr().out.splitlines() == ["epoch 1/36: 0:30 elapsed, about 7:30 left",
                                                    "epoch 2/36: 1:00 elapsed, about 7:30 left",
                                                    "epoch 5/10: 1:00 elapsed, about 5:00 left"]


def test_epoch_clock_formats_minutes_and_hours():
    assert [console._clock(s) for s in (0, 59.6, 61, 3599, 3600, 7384)] == \
        ["0:00", "1:00", "1:01", "59:59", "1:00:00", "2:03:04"]
