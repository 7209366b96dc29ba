"""Run under KERAS_BACKEND=jax (tests/test_robustness.py): builds, trains one epoch and predicts every
light trunk and loss weighting on numpy input, then data-parallel over 2 host devices; prints JSON."""

import json
import os
import sys

import numpy as np

assert os.environ.get("KERAS_BACKEND") == "jax"
import keras  # noqa: E402

from mtl_keras import distribute, losses  # noqa: E402
from mtl_keras import config as config_lib  # noqa: E402
from mtl_keras.modeling import build_and_compile  # noqa: E402

num_classes = {"fine": 10, "coarse": 3}
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (16, 32, 32, 3)).astype("float32")
fine = rng.integers(0, 10, 16)
y = {"fine": np.eye(10, dtype="float32")[fine], "coarse": np.eye(3, dtype="float32")[fine % 3]}
stats = ((120.0, 120.0, 120.0), (4000.0, 4000.0, 4000.0))
report = {"backend": keras.backend.backend(), "runs": []}
cases = [("vit", "Pico/4", "fixed"), ("vit", "Pico/4", "uncertainty"), ("vit", "Pico/4", "dwa"),
         ("cct", "Pico/3x1", "fixed"), ("seed_vit", "Mu/4", "fixed")]
for trunk, variant, weighting in cases:
    config = config_lib.make(model=trunk, variant=variant, loss_weighting=weighting, epochs=1, batch_size=8)
    model = build_and_compile(config.model, config.optim, num_classes, (32, 32, 3), steps_per_epoch=2, norm_stats=stats)
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0,
                        callbacks=losses.weighting_callbacks(model, weighting))
    out = model.predict(x[:3], verbose=0)
    report["runs"].append({"trunk": trunk, "weighting": weighting, "loss": float(history.history["loss"][-1]),
                           "outputs": {k: list(v.shape) for k, v in out.items()}})

# Data parallel: keras.distribution.DataParallel over the host devices XLA_FLAGS made.
_, replicas = distribute.strategy_scope("mirrored")
config = config_lib.make(variant="Pico/4", epochs=2, batch_size=8)
model = build_and_compile(config.model, config.optim, num_classes, (32, 32, 3), steps_per_epoch=2)
history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
report["data_parallel"] = {"replicas": replicas, "loss": [float(v) for v in history.history["loss"]]}
report["tensorflow_imported"] = "tensorflow" in sys.modules
print("JSON:" + json.dumps(report))
