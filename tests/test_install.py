"""The package as a user installs it: the wheel holds every config and the `mtl-keras` command, and a
non-editable install works from a folder outside the clone (the README's quick start as shipped: train,
export, int8 and parity; then check it again and classify an image file).

The venv reuses this interpreter's installed dependencies through a .pth file (seconds, no download); its
own site-packages come first, and the .pth files of this environment (an editable install of the clone) are
not read, so `mtl_keras` can only come from the wheel.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, SCRUBBED_ENV, require

CONFIG_DIR = REPO / "mtl_keras" / "configs"
TF_NOISE = ("absl::InitializeLog", "cudart_stub.cc", "cuInit", "shuffle=True")


def _clean_env() -> dict:
    """This environment less PYTHONPATH (the clone) and the settings tests scrub: a user's shell."""
    return {k: v for k, v in os.environ.items() if k not in (*SCRUBBED_ENV, "PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL")}


def _run(cmd: list, cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`pip wheel --no-deps` of a copy of the package's files (the clone itself gets no build/ folder)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO / "mtl_keras", src / "mtl_keras", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    # Without build isolation where setuptools is here already: no download of the build backend.
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *isolation, "-w", tmp / "dist", src], tmp,
         _clean_env())
    [whl] = (tmp / "dist").glob("mtl_keras-*.whl")
    return whl


@pytest.mark.slow
def test_wheel_holds_every_config_and_the_command(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {p.relative_to(REPO).as_posix() for p in CONFIG_DIR.rglob("*.flags")}
    assert len(shipped) > 50 and shipped <= set(names), sorted(shipped - set(names))[:5]
    [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "mtl-keras = mtl_keras.cli:" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, dict]:
    """A fresh venv with the wheel installed (not editable): (its bin folder, the environment to run it in)."""
    venv = tmp_path_factory.mktemp("venv") / "venv"
    env = _clean_env()
    _run([sys.executable, "-m", "venv", "--without-pip", venv], venv.parent, env)
    [venv_site] = (venv / "lib").glob("python*/site-packages")
    (venv_site / "_reuse_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # --ignore-installed: an editable install of the clone, seen through the .pth, is neither kept nor removed.
    _run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-deps", "--no-index",
          "--ignore-installed", "-q", wheel], venv.parent, env)  # without PYTHONPATH: the clone is no install
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    where = _run([venv / "bin" / "python", "-c", "import mtl_keras; print(mtl_keras.__file__)"], venv.parent, env)
    assert where.stdout.startswith(str(venv_site)), where.stdout  # the wheel's copy, not the clone's
    return venv / "bin", env


@pytest.mark.slow
def test_installed_command_lists_trains_exports_checks_and_predicts_outside_the_clone(installed, tmp_path):
    image_lib = require("PIL.Image")
    bin_dir, env = installed
    user = tmp_path / "user"  # a folder of the user's, outside the clone
    user.mkdir()
    mtl_keras = bin_dir / "mtl-keras"

    listing = _run([mtl_keras, "configs"], user, env).stdout
    assert "quickstart " in listing and "cifar10_study/a_vit_mu4 " in listing

    # The README's quick start exactly as shipped: 8 epochs on `shapes`, the export, int8 and the parity check.
    proc = _run([mtl_keras, "train", "--config=quickstart"], user, env, timeout=1500)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("Keras 3.") and (" CPU only " in lines[0] or " GPU" in lines[0]), lines[0]
    assert any(line.startswith("epoch 8/8: ") and " elapsed, about 0:00 left" in line for line in lines), lines
    assert not any(noise in proc.stdout + proc.stderr for noise in TF_NOISE), proc.stderr[-3000:]
    # Every check the export runs passed: three parity pairs, then the int8 gate, then the overall verdict.
    assert sum(line.strip() == "PASS" for line in lines) == 4, proc.stdout[-3000:]
    assert any(line.startswith("int8 fine: test accuracy ") for line in lines), proc.stdout[-3000:]
    metrics = json.loads((user / "runs" / "quickstart" / "metrics.json").read_text())
    # README: 93.65 % fine / 94.65 % coarse on this CPU (deterministic here); 10-class chance is 10 %. The bound
    # leaves room for another CPU's float order.
    assert metrics["fine_accuracy"] > 0.90 and metrics["coarse_accuracy"] > 0.90, metrics
    assert f"fine_accuracy {100 * metrics['fine_accuracy']:.2f}%" in proc.stdout
    version = user / "export" / "quickstart" / "1"
    assert {p.name for p in version.iterdir()} >= {"saved_model.pb", "model.onnx", "model.int8.onnx"}

    check = _run([mtl_keras, "check", f"--saved_model={version}", f"--onnx={version / 'model.onnx'}",
                  "--keras_model=runs/quickstart/model.keras", "--num_random=4"], user, env)
    assert check.stdout.splitlines()[-1] == "PASS", check.stdout

    rng = np.random.default_rng(0)
    image_lib.fromarray(rng.integers(0, 255, (32, 32, 3), dtype="uint8")).save(user / "image.png")
    predicted = _run([mtl_keras, "predict", f"--model={version}", "image.png"], user, env).stdout
    assert predicted.startswith("image.png: fine=") and " coarse=" in predicted, predicted
