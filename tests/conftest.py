"""Shared fixtures and helpers: small `shapes` splits, one tiny trained + exported run used by several tests,
the environment of subprocess tests, and optional modules that must not silently skip under CI."""

from __future__ import annotations

import fcntl
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]

# Small but real: the quick-start trunk on 3000 images for 8 epochs (~45 s on 2 cores) gets well above chance.
TINY_FLAGS = ["--dataset=shapes", "--variant=Mu/4", "--epochs=8", "--batch_size=64", "--max_train_examples=3000",
              "--learning_rate=2e-3", "--seed=1"]


# Settings a developer's shell may hold that change what a subprocess runs: its Keras backend, a tf.distribute
# cluster, JAX's devices. A subprocess test starts from none of them and sets what it needs.
SCRUBBED_ENV = ("KERAS_BACKEND", "TF_CONFIG", "JAX_PLATFORMS", "XLA_FLAGS")


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess test: this one without SCRUBBED_ENV, the repository on PYTHONPATH,
    then `extra` (e.g. KERAS_BACKEND="jax")."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def run_module(module: str, *args: str, cwd: Path = REPO, timeout: int = 600, env: dict | None = None
               ) -> subprocess.CompletedProcess:
    """Runs `python -m module args` (environment: `subprocess_env()` unless given) and returns the finished
    process (stdout and stderr as text)."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env or subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


def require(module: str):
    """`pytest.importorskip(module)`, except under CI (env CI set), where a missing module is a failure: the
    package declares Pillow and its test extra jax, so a skip there would hide a broken install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if os.environ.get("CI"):
            pytest.fail(f"{module} cannot be imported under CI ({e}); pip install -e '.[test]'", pytrace=False)
        pytest.skip(f"{module} is not installed ({e})", allow_module_level=True)


def dwa_weights(history: dict) -> list[float]:
    """DWA's (fine, coarse) weights for epoch 3 from the per-head losses fit logged in epochs 1-2 (weighted 1):
    2 * softmax(r / T), r = L(2) / L(1), T = 2 (Liu et al. 2019)."""
    import numpy as np

    r = np.array([history[f"{h}_loss"][1] / history[f"{h}_loss"][0] for h in ("fine", "coarse")])
    return list(2 * np.exp(r / 2) / np.exp(r / 2).sum())


# The fast tier (-m "not slow") trains and exports nothing: in a test not marked slow, fitting a model or writing
# a SavedModel or ONNX file fails the test. Subprocesses are not watched: a CLI test is marked slow, and its flag
# and refusal cases run in-process (parsed_in_process, refused_in_process) with a few real CLI cases kept.
FAST_TIER_REFUSED = (("keras", "Model", "fit"), ("mtl_keras.serving.signatures", None, "write_saved_model"),
                     ("mtl_keras.serving.onnx_convert", None, "convert"))


@pytest.fixture(autouse=True)
def fast_tier_trains_and_exports_nothing(request, monkeypatch):
    # Keras is in every worker once the tests are collected (test modules import it); a run that collected none
    # that do (e.g. test_structure's pytest-in-a-subprocess) is spared importing TensorFlow for the guard.
    if request.node.get_closest_marker("slow") or "keras" not in sys.modules:
        return
    for module, owner, name in FAST_TIER_REFUSED:
        target = importlib.import_module(module)
        target = getattr(target, owner) if owner else target
        what = f"{module}.{owner + '.' if owner else ''}{name}"

        def refused(*args, _what=what, **kwargs):
            raise AssertionError(f"{_what} called in a test not marked slow: the fast tier trains and exports "
                                 "nothing; mark the test @pytest.mark.slow or fake the step")

        monkeypatch.setattr(target, name, refused)


def parsed_in_process(prog: str, args: list[str], capsys) -> tuple[int, list[str]]:
    """(exit status, stderr lines) of PROG's own flag parser (`parser_exiting_in_one_line` on the flags its
    define_*_flags defines, as `app.run` calls it) on `args`: the CLI's parse without a new Python process."""
    from absl import flags

    from mtl_keras import flags as mtl_flags

    fv = flags.FlagValues()
    {"train": mtl_flags.define_train_flags, "export": mtl_flags.define_export_flags,
     "check_onnx": mtl_flags.define_check_flags, "experiments": mtl_flags.define_experiments_flags}[prog](fv)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        mtl_flags.parser_exiting_in_one_line(prog, fv)([prog, *args])
    return exit_.value.code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def refused_in_process(args: list[str]) -> str:
    """The line `train ARGS` ends in when train.run refuses the parsed flags before training (what its main
    prints after `train: error: `); fails the test if the run is not refused with an MtlError."""
    from mtl_keras import flags as mtl_flags
    from mtl_keras import train
    from mtl_keras.errors import MtlError

    with pytest.raises(MtlError) as refused:
        train.run(mtl_flags.config_from_args(args))
    return f"train: error: {refused.value}"


@pytest.fixture(scope="session")
def shapes_splits():
    from mtl_keras.data import datasets

    return datasets.load("shapes", seed=0)


def made_once(tmp_path_factory, name: str, make) -> tuple[Path, subprocess.CompletedProcess]:
    """(FOLDER, the finished process) of `make(FOLDER)`, which runs one command into an empty FOLDER, run once per
    test session: under pytest-xdist the first worker to ask runs it while the others wait on a lock in the base
    temporary folder they share, then read its exit status and output. Tests only read FOLDER; a test that writes
    into it works on its own copy."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        folder = tmp_path_factory.mktemp(name)
        return folder, make(folder)
    shared = tmp_path_factory.getbasetemp().parent  # the session's folder; each worker's basetemp is inside it
    folder, record = shared / name, shared / f"{name}.json"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this worker dies
        if not record.is_file():
            shutil.rmtree(folder, ignore_errors=True)  # left by a worker that died while making it
            folder.mkdir()
            proc = make(folder)
            record.write_text(json.dumps([proc.args, proc.returncode, proc.stdout, proc.stderr]))
    return folder, subprocess.CompletedProcess(*json.loads(record.read_text()))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One tiny MTL run through the CLI: train -> metrics -> export SavedModel + ONNX -> parity check, made once
    per test session (`made_once`)."""
    root, proc = made_once(tmp_path_factory, "tiny-run", lambda root: run_module(
        "mtl_keras.train", *TINY_FLAGS, f"--workdir={root / 'work'}", f"--export_dir={root / 'export'}",
        "--model_name=tiny"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, proc


# Under CI every test should run: a skip is allowed only when its reason matches a line of .ci/allowed_skips
# (regular expressions; none today). Anything else, e.g. a missing dataset or module, fails the run.
ALLOWED_SKIPS_FILE = REPO / ".ci" / "allowed_skips"


def unexpected_skips(reports, allowed: list[str]) -> list[str]:
    """'NODEID: reason' of each skipped test report whose reason matches no pattern in `allowed`."""
    out = []
    for report in reports:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        if not any(re.search(pattern, reason) for pattern in allowed):
            out.append(f"{report.nodeid}: {reason}")
    return out


def pytest_sessionfinish(session, exitstatus):
    if not os.environ.get("CI") or exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = ALLOWED_SKIPS_FILE.read_text().splitlines() if ALLOWED_SKIPS_FILE.is_file() else []
    allowed = [line for line in lines if line.strip() and not line.startswith("#")]
    unexpected = unexpected_skips(reporter.stats.get("skipped", []) if reporter else [], allowed)
    if unexpected:
        reporter.write_line(f"CI: {len(unexpected)} test(s) skipped without a reason in {ALLOWED_SKIPS_FILE}; "
                            "a skip here is a failure:", red=True)
        for line in unexpected:
            reporter.write_line(f"  {line}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
