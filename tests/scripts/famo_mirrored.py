"""FAMO under tf.distribute (tests/test_weightings.py): the task logits after a few fit steps with
MirroredStrategy over 2 logical CPUs, and the same steps on one device with the same data and initial weights;
prints JSON. Logical devices must be set before TensorFlow initialises, hence a process of its own."""

import json

import numpy as np

from mtl_keras import distribute

distribute.use_logical_cpus(2)

import keras  # noqa: E402

from mtl_keras import config, losses, modeling  # noqa: E402

STEPS, BATCH = 5, 8
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (STEPS * BATCH, 16, 16, 3)).astype("float32")
f = rng.integers(0, 6, len(x))
y = {"fine": np.eye(6, dtype="float32")[f], "coarse": np.eye(2, dtype="float32")[f % 2]}
# jit_compile off: train.py turns XLA off under tf.distribute with several replicas too.
# The patch stem: no BatchNormalization, whose per-replica batch statistics would part the two runs by themselves.
cfg = config.make(variant="Pico/4", stem="patch", loss_weighting="famo", famo_lr=0.1, lr_schedule="constant",
                  learning_rate=3e-3, jit_compile=False)


def run(distribution: str) -> dict:
    keras.utils.set_random_seed(0)  # the same initial weights in both runs
    scope, replicas = distribute.strategy_scope(distribution)
    with scope:
        model = modeling.build_and_compile(cfg.model, cfg.optim, {"fine": 6, "coarse": 2}, (16, 16, 3), STEPS)
    history = model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
                        callbacks=losses.weighting_callbacks(model, "famo")).history
    layer = model.get_layer(losses.LAYER_NAME)
    return {"replicas": replicas, "logits": np.asarray(layer.famo_logits).tolist(),
            "steps": float(np.asarray(layer.famo_steps)), "loss": history["loss"][-1],
            "fine_weight": history["fine_weight"][-1]}


print("JSON:" + json.dumps({"mirrored": run("mirrored"), "one": run("none")}))
