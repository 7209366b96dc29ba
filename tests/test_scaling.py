"""Several processes, one DataParallel mesh (JAX, --distribution=multi_worker): two real processes on localhost,
one CPU device each, against one process; a killed peer, a resume, and bad process groups."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, TRAIN_THEN_LOADED, require, run_module, subprocess_env

# Tiny and unaugmented: the two processes together see exactly the global batches one process sees.
FLAGS = ["--dataset=shapes", "--variant=Pico/4", "--max_train_examples=512", "--batch_size=64", "--augment=none",
         "--noexport", "--seed=3"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def jax_env(**extra: str) -> dict[str, str]:
    return subprocess_env(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", **extra)


def start(k: int, port: int, workdir: Path, *args: str, n: int = 2) -> subprocess.Popen:
    env = jax_env(KERAS_DISTRIBUTION_JOB_ADDRESSES=f"localhost:{port}", KERAS_DISTRIBUTION_NUM_PROCESSES=str(n),
                  KERAS_DISTRIBUTION_PROCESS_ID=str(k))
    return subprocess.Popen([sys.executable, "-m", "mtl_keras.train", *FLAGS, "--distribution=multi_worker",
                             f"--workdir={workdir}", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def both(workdir: Path, *args: str, timeout: int = 900) -> list[tuple[int, str, str]]:
    port = free_port()
    procs = [start(k, port, workdir, *args) for k in (0, 1)]
    outs = [p.communicate(timeout=timeout) for p in procs]
    return [(p.returncode, *out) for p, out in zip(procs, outs)]


def history(workdir: Path) -> list[dict[str, float]]:
    with open(workdir / "history.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("train: error:")]


# The group run: 2 epochs of 32 global batches; 384 validation images (3.2 %), 6 whole global batches, so no
# validation image is left out of the processes' equal slices.
GROUP_RUN = ["--epochs=2", "--max_train_examples=2048", "--validation_fraction=0.032"]


@pytest.mark.slow
def test_two_processes_killed_and_resumed_train_like_one_and_only_process_0_writes(tmp_path):
    # One group run that loses a peer and resumes serves both claims: a lost peer ends the other process in one
    # line and a rerun resumes; and the finished run trained like one process (the resumed epoch included).
    require("jax")
    # The one-process run first: the group's processes then read its compiled weight initialisers from the
    # test run's JAX compilation cache (conftest.jax_compilation_cache).
    one = run_module("mtl_keras.train", *FLAGS, *GROUP_RUN, "--distribution=none",
                     f"--workdir={tmp_path / 'one'}", env=jax_env())
    assert one.returncode == 0, one.stderr[-3000:]
    work, port = tmp_path / "two", free_port()
    procs = [start(k, port, work, *GROUP_RUN) for k in (0, 1)]
    state = work / "checkpoints" / "state.json"
    deadline = time.time() + 600
    while not state.is_file() and time.time() < deadline and procs[0].poll() is None:
        time.sleep(0.2)
    assert state.is_file(), procs[0].communicate()[1][-3000:]
    time.sleep(0.2)  # into epoch 2 (32 steps), not past it
    os.kill(procs[1].pid, signal.SIGKILL)
    killed = time.time()
    _, err = procs[0].communicate(timeout=90)
    assert time.time() - killed < 60
    procs[1].wait()
    assert procs[0].returncode == 1, err[-3000:]
    lines = error_lines(err)
    assert len(lines) == 1 and "process 1" in lines[0], err[-3000:]
    assert "lost peer" in lines[0] and "Traceback" not in err and "Check failure" not in err
    assert not (work / "metrics.json").exists()

    for status, out, err in both(work, *GROUP_RUN):
        assert status == 0, err[-3000:]
        assert "Resumed from epoch 1" in out
        assert "2 replica(s)" in out and "identical in all 2 processes" in out
        assert "Traceback" not in err
    # Training and validation: the same global batches and seed, only the order of float32 sums differs
    # (per-device partial sums, then a cross-process all-reduce); measured 2026-12-07 within 1.2e-7 (losses) and
    # equal (accuracies), validation included (its 384 images are whole global batches); 1e-4 leaves margin.
    # (The last partial evaluation batch a group skips: tests/test_data.py.)
    two, ref = history(work), history(tmp_path / "one")
    assert [int(r["epoch"]) for r in two] == [0, 1]
    for a, b in zip(two, ref, strict=True):
        for key, value in b.items():
            assert abs(a[key] - value) <= 1e-4, (key, a[key], value)
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["processes"] == 2 and len(set(metrics["weights_sha256"])) == 1
    assert (work / "model.keras").is_file()
    # Process 1 wrote only its scratch folder: no model, metrics, plots or checkpoints of its own.
    scratch = sorted(p.name for p in (work / "process-1").iterdir())
    assert "model.keras" not in scratch and "metrics.json" not in scratch and "checkpoints" not in scratch
    assert not list((work / "process-1").glob("*.png"))


@pytest.mark.slow
def test_peer_that_never_comes_up_is_one_line(tmp_path):
    require("jax")
    port = free_port()
    proc = start(0, port, tmp_path / "w", "--peer_timeout=5")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    expected = (f"train: error: not every process joined within --peer_timeout=5 s (2 expected at the coordinator "
                f"localhost:{port}); start each with the same command and its own --process_id")
    assert error_lines(err) == [expected], err[-3000:]
    assert "Check failure" not in err and "Traceback" not in err
    assert not (tmp_path / "w").exists()


BAD_GROUPS = [
    (["--job_addresses=localhost:1234", "--num_processes=2", "--process_id=2"],
     "--process_id=2 is out of range for 2 processes (0 to 1)"),
    (["--job_addresses=localhost:1234,localhost:1235,localhost:1236", "--num_processes=2", "--process_id=0"],
     "--job_addresses=localhost:1234,localhost:1235,localhost:1236 lists 3 addresses but --num_processes=2"),
    (["--job_addresses=localhost", "--num_processes=2", "--process_id=0"], "localhost is not HOST:PORT"),
    (["--num_processes=2", "--process_id=0"], "--distribution=multi_worker needs --job_addresses"),
]


@pytest.mark.parametrize("args, message", BAD_GROUPS)
def test_bad_process_group_is_refused_in_process(monkeypatch, args, message):
    # The check train's main makes before it starts the supervised child (the CLI end to end: below, slow).
    from mtl_keras import flags as mtl_flags
    from mtl_keras import processes
    from mtl_keras.errors import ConfigError

    for name in processes.ENV.values():
        monkeypatch.delenv(name, raising=False)
    config = mtl_flags.config_from_args([*FLAGS, "--distribution=multi_worker", *args])
    with pytest.raises(ConfigError) as refused:
        processes.resolve(config.optim)
    assert message in str(refused.value) and len(str(refused.value).splitlines()) == 1


def test_the_supervising_process_loads_no_keras(tmp_path):
    """The process a user starts for a group member only checks the group and supervises the child that does the
    work: it loads neither Keras nor a backend, so a refused group is one line in a fraction of a second and a
    running one holds no framework's memory twice."""
    args, message = BAD_GROUPS[0]
    proc = subprocess.run([sys.executable, "-c", TRAIN_THEN_LOADED, *FLAGS, "--distribution=multi_worker",
                           f"--workdir={tmp_path / 'w'}", *args], cwd=REPO, env=jax_env(), capture_output=True,
                          text=True, timeout=60)
    assert proc.stdout.splitlines()[-1] == "EXIT 1 []", proc.stdout + proc.stderr[-2000:]
    assert error_lines(proc.stderr) == [f"train: error: {message}"], proc.stderr[-2000:]
    assert not (tmp_path / "w").exists()


BACKEND_PROBE = """
import json, sys
from mtl_keras import processes
told = processes.keras_backend()
loaded = "keras" in sys.modules
import keras
print(json.dumps([told, loaded, keras.backend.backend()]))
"""


@pytest.mark.parametrize("env, keras_json, backend", [
    ({}, {"backend": "jax"}, "jax"),  # keras.json alone
    ({"KERAS_BACKEND": ""}, {"floatx": "float32"}, "tensorflow"),  # empty variable, no backend saved: the default
])
def test_the_backend_is_known_without_loading_keras_as_keras_decides_it(tmp_path, env, keras_json, backend):
    # (KERAS_BACKEND=jax winning: the supervising test above, whose group is refused only on the JAX path.)
    (tmp_path / "keras.json").write_text(json.dumps(keras_json))
    proc = subprocess.run([sys.executable, "-c", BACKEND_PROBE], cwd=REPO, capture_output=True, text=True,
                          env=subprocess_env(KERAS_HOME=str(tmp_path), JAX_PLATFORMS="cpu", **env), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == [backend, False, backend]


@pytest.mark.slow
def test_bad_process_group_is_one_line(tmp_path):
    # One command line end to end; every refusal runs in-process above.
    require("jax")
    args, message = BAD_GROUPS[0]
    proc = run_module("mtl_keras.train", *FLAGS, "--distribution=multi_worker", f"--workdir={tmp_path / 'w'}",
                      *args, env=jax_env(), timeout=120)
    assert proc.returncode == 1
    assert len(error_lines(proc.stderr)) == 1 and message in error_lines(proc.stderr)[0], proc.stderr[-2000:]
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_global_batch_not_dividing_by_the_devices_is_one_line(tmp_path):
    require("jax")
    for status, _, err in both(tmp_path / "w", "--batch_size=63", timeout=300):
        assert status == 1
        expected = ("train: error: --batch_size=63 does not divide by the 2 processes of --distribution=multi_worker "
                    "(each takes an equal slice of every batch)")
        assert error_lines(err) == [expected], err[-2000:]
    assert not (tmp_path / "w").exists()
