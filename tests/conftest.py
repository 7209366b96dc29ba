"""Shared fixtures: small `shapes` splits and one tiny trained + exported run used by several tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]

# Small but real: the quick-start trunk on 3000 images for 8 epochs (~45 s on 2 cores) gets well above chance.
TINY_FLAGS = ["--dataset=shapes", "--variant=Mu/4", "--epochs=8", "--batch_size=64", "--max_train_examples=3000",
              "--learning_rate=2e-3", "--seed=1"]


def run_module(module: str, *args: str, cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs `python -m module args` and returns the finished process (stdout and stderr as text)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def shapes_splits():
    from mtl_keras.data import datasets

    return datasets.load("shapes", seed=0)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One tiny MTL run through the CLI: train -> metrics -> export SavedModel + ONNX -> parity check."""
    root = tmp_path_factory.mktemp("run")
    proc = run_module("mtl_keras.train", *TINY_FLAGS, f"--workdir={root / 'work'}",
                      f"--export_dir={root / 'export'}", "--model_name=tiny")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, proc
