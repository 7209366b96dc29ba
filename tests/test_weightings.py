"""Loss weightings through their registry: every registered weighting is a --loss_weighting choice described in
--help and checked for the task it needs, and FAMO's task logits move under tf.distribute as on one device.
(tests/test_components.py trains a step of each and checks its gradients.)"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

from conftest import REPO, subprocess_env
from mtl_keras import flags as mtl_flags
from mtl_keras import weightings


@pytest.mark.parametrize("name", sorted(weightings.REGISTRY))
def test_every_weighting_is_a_described_choice_checked_for_its_task(name):
    spec = weightings.REGISTRY[name]
    fv = flags.FlagValues()
    mtl_flags.define_train_flags(fv)
    flag = fv["loss_weighting"]
    assert name in flag.parser.enum_values and f"{name}: {spec.description}" in flag.help
    assert mtl_flags.config_from_args([f"--loss_weighting={name}"]).optim.loss_weighting == name
    single = [f"--loss_weighting={name}", "--task=fine"]
    if spec.stateful:  # state that weighs two task losses against each other: one head is a flag error
        with pytest.raises(flags.IllegalFlagValueError, match=f"--loss_weighting={name} needs --task=mtl"):
            mtl_flags.config_from_args(single)
    else:
        assert mtl_flags.config_from_args(single).model.task == "fine"
    for setting in spec.settings:  # each setting is a flag whose default lives in config.py
        assert fv[setting].default == getattr(config_defaults(), setting)


def config_defaults():
    from mtl_keras import config

    return config.OptimConfig()


def test_famo_settings_reach_its_layer_when_the_model_is_built():
    import keras

    from mtl_keras import config, losses, modeling

    cfg = config.make(variant="Pico/4", loss_weighting="famo", famo_lr=0.1, famo_decay=0.02)
    model = modeling.build(cfg.model, {"fine": 6, "coarse": 2}, (16, 16, 3), optim=cfg.optim)
    layer = model.get_layer(losses.LAYER_NAME)
    assert layer.settings == {"famo_lr": 0.1, "famo_decay": 0.02}
    again = losses.TaskWeights.from_config(layer.get_config())  # the keys older versions wrote and read
    assert (again.method, again.settings) == ("famo", {"famo_lr": 0.1, "famo_decay": 0.02})
    # The loss takes the layer's settings; other values at compile time are refused, not patched on.
    loss, weights = losses.compile_losses(model, ["fine", "coarse"], "famo", famo_lr=0.1)
    assert weights is None and all(v.weights is layer for v in loss.values())
    with pytest.raises(ValueError, match="built with famo_lr=0.1, not famo_lr=0.3"):
        losses.compile_losses(model, ["fine", "coarse"], "famo", famo_lr=0.3)
    with pytest.raises(ValueError, match="'famo' has no setting gamma"):
        losses.compile_losses(model, ["fine", "coarse"], "famo", gamma=0.3)
    # A layer saved with another weighting's settings (older versions saved FAMO's on every layer) ignores them.
    old = losses.TaskWeights(["fine", "coarse"], "uncertainty", famo_lr=0.5, name="w")
    assert old.settings == {} and keras.layers.deserialize(keras.layers.serialize(old)).method == "uncertainty"


@pytest.mark.slow
def test_famo_under_mirrored_strategy_moves_its_logits_as_on_one_device():
    """5 fit steps of 8 images, MirroredStrategy over 2 logical CPUs vs one device, same data and initial
    weights, a trunk without BatchNormalization (whose per-replica statistics would part the runs for reasons
    of their own). Measured: identical logits to float32 print precision (|difference| < 1e-7 on logits that
    moved 0.28); each replica weighing its own 4 images' loss moved them 0.14 instead."""
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "scripts" / "famo_mirrored.py")], cwd=REPO,
                          env=subprocess_env(CUDA_VISIBLE_DEVICES=""), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.split("JSON:")[-1])
    two, one = report["mirrored"], report["one"]
    assert (two["replicas"], one["replicas"]) == (2, 1)
    assert two["steps"] == one["steps"] == 5.0  # every step recorded once, not once per replica
    assert np.abs(one["logits"]).max() > 0.1, one  # the weights moved (Adam's first step alone is +-famo_lr)
    np.testing.assert_allclose(two["logits"], one["logits"], atol=1e-4)
    assert two["fine_weight"] == pytest.approx(one["fine_weight"], abs=1e-4)  # what history.csv logs
