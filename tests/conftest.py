"""Shared fixtures and helpers: small `shapes` splits, the installed package and its quick-start run (trained and
exported once, read by many tests), the environment of subprocess tests, and optional modules that must not
silently skip under CI."""

from __future__ import annotations

import fcntl
import gc
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]

# Under pytest-xdist two workers share the 2-core machine with the subprocesses they start: each TensorFlow
# process (a worker, a CLI run) then runs an op on one thread, so two processes do not oversubscribe the cores
# (an idle thread of TensorFlow's pool spins a while before it sleeps). The same tests measured 7-8 % less CPU time
# and 5-7 % less wall time (BUILD_NOTES.md, "CI"). A user's shell setting wins; a single test run keeps all threads.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _name in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(_name, "1")

# Small but real: the quick-start trunk on 3000 images for 8 epochs (~45 s on 2 cores) gets well above chance.
TINY_FLAGS = ["--dataset=shapes", "--variant=Mu/4", "--epochs=8", "--batch_size=64", "--max_train_examples=3000",
              "--learning_rate=2e-3", "--seed=1"]


# Settings a developer's shell may hold that change what a subprocess runs: its Keras backend, a tf.distribute
# cluster, JAX's devices. A subprocess test starts from none of them and sets what it needs.
SCRUBBED_ENV = ("KERAS_BACKEND", "TF_CONFIG", "JAX_PLATFORMS", "XLA_FLAGS")


# JAX test processes compile without LLVM's backend optimisations: their tiny models spend most of their time
# compiling, not running (tests/scripts/jax_backend.py: 73 -> 44 CPU-seconds). The compiled programs compute the
# same functions; only the machine code differs. A user's runs keep XLA's default.
JAX_TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess test: this one without SCRUBBED_ENV, the repository on PYTHONPATH,
    then `extra` (e.g. KERAS_BACKEND="jax"); a JAX process also gets JAX_TEST_XLA_FLAGS."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env = {**env, "PYTHONPATH": str(REPO), **extra}
    if env.get("KERAS_BACKEND") == "jax":
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {JAX_TEST_XLA_FLAGS}".strip()
    return env


# `python -c TRAIN_THEN_LOADED ARGS...`: train's command line in a fresh Python, then the line "EXIT <status>
# [<which of keras, tensorflow, jax it loaded>]" (tests of what a refusal or a supervising process loads).
TRAIN_THEN_LOADED = """
import runpy, sys
sys.argv = ["train", *sys.argv[1:]]
try:
    runpy.run_module("mtl_keras.train", run_name="__main__")
except SystemExit as e:
    print("EXIT", e.code, sorted({"keras", "tensorflow", "jax"} & set(sys.modules)))
"""


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


@pytest.fixture(scope="session", autouse=True)
def jax_compilation_cache(tmp_path_factory):
    """The JAX processes the tests start share JAX's persistent compilation cache, one per pytest run (in the
    temporary folder the xdist workers share): the processes of a group, a resumed run and its rerun compile the
    same steps and weight initialisers. A warm cache measured 26.3 -> 12.2 CPU-seconds for a Pico/4 run of 2
    epochs, with the same figures (BUILD_NOTES.md, "CI"). A user's own JAX cache setting wins."""
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        base = tmp_path_factory.getbasetemp()
        root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
        os.environ["JAX_COMPILATION_CACHE_DIR"] = str(root / "jax-compilation-cache")
        os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # default 1 s: most steps here take less


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


def program_flags(prog: str):
    """A fresh absl FlagValues holding the flags PROG (train, export, check_onnx, experiments) defines."""
    from absl import flags

    from mtl_keras import flags as mtl_flags

    fv = flags.FlagValues()
    {"train": mtl_flags.define_train_flags, "export": mtl_flags.define_export_flags,
     "check_onnx": mtl_flags.define_check_flags, "experiments": mtl_flags.define_experiments_flags}[prog](fv)
    return fv


def parsed_in_process(prog: str, args: list[str], capsys) -> tuple[int, list[str]]:
    """(exit status, stderr lines) of PROG's own flag parser (`parser_exiting_in_one_line` on the flags its
    define_*_flags defines, as `app.run` calls it) on `args`: the CLI's parse without a new Python process."""
    from mtl_keras import flags as mtl_flags

    fv = program_flags(prog)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        mtl_flags.parser_exiting_in_one_line(prog, fv)([prog, *args])
    return exit_.value.code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def main_in_process(prog: str, args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of PROG's main (`export` or `check_onnx`) on ARGS, parsed by the flags its
    define_*_flags defines, in this process: what `python -m mtl_keras.PROG ARGS` does once its flags parse, without
    a new Python process and its TensorFlow import (seconds each). Each program keeps real CLI cases too."""
    from absl import flags
    from absl import logging  # noqa: F401  (bound to flags.FLAGS at its first import: that must come before the patch)

    from mtl_keras import check_onnx, export

    program = {"export": export, "check_onnx": check_onnx}[prog]
    fv = program_flags(prog)
    fv([prog, *args])
    monkeypatch.setattr(flags, "FLAGS", fv)  # main reads absl's global FLAGS, as under app.run
    capsys.readouterr()
    status = program.main([prog])
    out = capsys.readouterr()
    return status, out.out, out.err


def predict_in_process(args: list, capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `mtl-keras predict ARGS` run by its main in this process (it parses its own
    flags), without a new Python process; tests/test_predict.py keeps real CLI cases."""
    from mtl_keras.serving import predict

    capsys.readouterr()
    status = predict.main(["predict", *map(str, args)])
    out = capsys.readouterr()
    return status, out.out, out.err


def refused_in_process(args: list[str]) -> str:
    """The line `train ARGS` ends in when train.run refuses the parsed flags, or stops, with an MtlError (what its
    main prints after `train: error: `); fails the test if the run ends otherwise."""
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
            args = [str(a) for a in proc.args] if isinstance(proc.args, (list, tuple)) else str(proc.args)
            record.write_text(json.dumps([args, proc.returncode, proc.stdout, proc.stderr]))
    return folder, subprocess.CompletedProcess(*json.loads(record.read_text()))


def clean_env() -> dict[str, str]:
    """This environment less PYTHONPATH (the clone) and the settings tests scrub: a user's shell."""
    return {k: v for k, v in os.environ.items() if k not in (*SCRUBBED_ENV, "PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL")}


def run_checked(cmd: list, cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs `cmd` and fails the test unless it exits 0 (its output's tails in the message)."""
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _install(folder: Path) -> subprocess.CompletedProcess:
    """FOLDER/dist: `pip wheel --no-deps` of a copy of the package's files (the clone gets no build/ folder);
    FOLDER/venv: a fresh venv with that wheel installed, not editable. The venv reuses this interpreter's
    installed dependencies through a .pth file (seconds, no download); its own site-packages come first, and the
    .pth files of this environment (an editable install of the clone) are not read, so `mtl_keras` can only come
    from the wheel."""
    import importlib.util
    import site

    src, env = folder / "src", clean_env()
    shutil.copytree(REPO / "mtl_keras", src / "mtl_keras", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    # Without build isolation where setuptools is here already: no download of the build backend.
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    run_checked([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *isolation, "-w", folder / "dist", src],
                folder, env)
    [wheel] = (folder / "dist").glob("mtl_keras-*.whl")
    venv = folder / "venv"
    run_checked([sys.executable, "-m", "venv", "--without-pip", venv], folder, env)
    [venv_site] = (venv / "lib").glob("python*/site-packages")
    (venv_site / "_reuse_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # --ignore-installed: an editable install of the clone, seen through the .pth, is neither kept nor removed.
    run_checked([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-deps",
                 "--no-index", "--ignore-installed", "-q", wheel], folder, env)  # without PYTHONPATH
    return subprocess.run([venv / "bin" / "python", "-c", "import mtl_keras; print(mtl_keras.__file__)"], cwd=folder,
                          env=env, capture_output=True, text=True, timeout=120)


class Installed(NamedTuple):
    wheel: Path
    bin: Path  # the venv's bin folder, with the `mtl-keras` command
    env: dict  # a user's shell (clean_env) with that folder first on PATH
    site: Path  # the venv's site-packages
    where: str  # the file `import mtl_keras` found in the venv


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> Installed:
    """The package as a user installs it from its wheel (`_install`), made once per test session."""
    folder, proc = made_once(tmp_path_factory, "installed", _install)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [wheel] = (folder / "dist").glob("mtl_keras-*.whl")
    [venv_site] = (folder / "venv" / "lib").glob("python*/site-packages")
    env = clean_env()
    env["PATH"] = f"{folder / 'venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return Installed(wheel, folder / "venv" / "bin", env, venv_site, proc.stdout.strip())


class TrainedRun(NamedTuple):
    user: Path  # the user's folder it ran in, outside the clone
    work: Path  # its workdir: model.keras, metrics.json, history.csv, checkpoints, reports
    version: Path  # its export: SavedModel, model.onnx, model.int8.onnx, assets.extra
    proc: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, installed) -> TrainedRun:
    """The README's quick start as shipped, run by the installed `mtl-keras train --config=quickstart` in a folder
    outside the clone: train -> metrics and reports -> SavedModel + ONNX + int8 -> parity check. Made once per
    test session (`made_once`) and shared by every test of what a run writes; tests only read it."""
    user, proc = made_once(tmp_path_factory, "quickstart", lambda user: subprocess.run(
        [installed.bin / "mtl-keras", "train", "--config=quickstart"], cwd=user, env=installed.env,
        capture_output=True, text=True, timeout=1500))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return TrainedRun(user, user / "runs" / "quickstart", user / "export" / "quickstart" / "1", proc)


# The session's shared runs, made once (made_once) by the first test that asks for one.
SHARED_RUNS = ("trained_run", "grid_run")


def pytest_collection_modifyitems(session, config, items):
    """Orders the tests so that the shared runs start at once on workers of their own while other tests run,
    and the workers end together: the slow tests that need no shared run first, then the slow ones that do, then
    the fast ones (under a second each, mostly) in the same order, with the test that makes each shared run at
    0, 2, 4, ... With `--maxschedchunk=1` (setup.cfg) pytest-xdist starts each worker on 2 consecutive tests
    (0-1, 2-3, ...) and then hands out one test at a time as they finish: each shared run starts on its own
    worker, no worker waits on a run another is making (the slow tests before those that need a shared run take
    longer than the runs), and the fast tests fill the end, so no worker is left alone on a long test."""
    makers, rest = [], []
    for item in items:
        needs = [name for name in SHARED_RUNS if name in getattr(item, "fixturenames", ())]
        if needs and needs[0] not in {name for _, name in makers}:
            makers.append((item, needs[0]))
        else:
            rest.append((not item.get_closest_marker("slow"), bool(needs), item))
    rest.sort(key=lambda entry: entry[:2])  # stable: collection order within each group
    ordered = [item for *_, item in rest]
    for k, (item, _) in enumerate(makers):
        ordered.insert(2 * k, item)
    items[:] = ordered


def pytest_collection_finish(session):
    """What collection imported (TensorFlow, Keras, the package: millions of objects) moves to the collector's
    permanent generation, so the full collections the tests' garbage triggers do not walk it again: the fast
    tier's workers spent 9.1 s collecting before, 6.1 s after (BUILD_NOTES.md, "CI")."""
    gc.collect()
    gc.freeze()


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
