"""Models of the previous layout (main at f49e8fa, before the trunk registry and the shared transformer block)
still load and compute the same numbers.

tests/fixtures/main_f49e8fa/ was written by that version (tiny vit / cct / uncertainty-weighted models, their
.keras files and weights checkpoints, and the outputs of every trunk built under keras seed 0 on fixed inputs).
"""

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from mtl_keras.models import build_model

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "main_f49e8fa"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
INPUTS = np.load(FIXTURES / "inputs.npy")


def _build(name: str):
    trunk = "vit" if name.startswith("vit") else name
    return build_model(trunk, (32, 32, 3), {"fine": 10, "coarse": 3}, **EXPECTED["cases"][name])


def _assert_outputs(outputs, name: str):
    for head, expected in EXPECTED["outputs"][name].items():
        np.testing.assert_allclose(np.asarray(outputs[head]), np.asarray(expected), atol=1e-6, err_msg=name)


@pytest.mark.parametrize("name", sorted(EXPECTED["cases"]))
def test_seeded_build_gives_the_old_numbers(name):
    # Same layers, same creation order, same names: the seeded initial weights and outputs are unchanged.
    keras.utils.set_random_seed(0)
    _assert_outputs(_build(name).predict(INPUTS, verbose=0), name)


@pytest.mark.parametrize("name", ["vit", "cct", "vit_uncertainty"])
def test_old_keras_file_loads(name):
    model = keras.saving.load_model(FIXTURES / f"{name}.keras", compile=False)
    _assert_outputs(model.predict(INPUTS, verbose=0), name)


@pytest.mark.parametrize("name", ["vit", "cct"])
def test_old_checkpoint_weights_load_into_the_new_model(name):
    keras.utils.set_random_seed(123)  # other initial weights: only the checkpoint can make the outputs match
    model = _build(name)
    model.load_weights(FIXTURES / f"{name}.weights.h5")
    _assert_outputs(model.predict(INPUTS, verbose=0), name)
