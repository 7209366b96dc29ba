"""Run under KERAS_BACKEND=jax (tests/test_robustness.py): builds, trains (one epoch; DWA three, so its weights
move) and predicts every light trunk and loss weighting on numpy input; FAMO's task logits after train_on_batch
steps and the marginal / both coarse heads' outputs; then data-parallel over 2 host devices. Prints JSON, with
the per-epoch losses and task weights fit logged and the learned log-variances."""

import json
import os
import sys

import numpy as np

assert os.environ.get("KERAS_BACKEND") == "jax"
import keras  # noqa: E402

from mtl_keras import distribute, losses  # noqa: E402
from mtl_keras import config as config_lib  # noqa: E402
from mtl_keras.modeling import build_and_compile  # noqa: E402

TREE = (0, 0, 0, 1, 1, 1)  # the hierarchy part's 6 fine classes under 2 coarse ones

num_classes = {"fine": 10, "coarse": 3}
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (16, 32, 32, 3)).astype("float32")
fine = rng.integers(0, 10, 16)
y = {"fine": np.eye(10, dtype="float32")[fine], "coarse": np.eye(3, dtype="float32")[fine % 3]}
stats = ((120.0, 120.0, 120.0), (4000.0, 4000.0, 4000.0))
report = {"backend": keras.backend.backend(), "runs": []}
# vit with the fixed weighting trains in the data-parallel part below.
cases = [("vit", "Pico/4", "uncertainty"), ("vit", "Pico/4", "dwa"), ("cct", "Pico/3x1", "fixed"),
         ("seed_vit", "Mu/4", "fixed")]
for trunk, variant, weighting in cases:
    epochs = 3 if weighting == "dwa" else 1
    config = config_lib.make(model=trunk, variant=variant, loss_weighting=weighting, epochs=epochs, batch_size=8,
                             learning_rate=1e-2, lr_schedule="constant")
    model = build_and_compile(config.model, config.optim, num_classes, (32, 32, 3), steps_per_epoch=2, norm_stats=stats)
    history = model.fit(x, y, batch_size=8, epochs=epochs, verbose=0, shuffle=False,
                        callbacks=losses.weighting_callbacks(model, weighting))
    out = model.predict(x[:3], verbose=0)
    logged = {k: [float(v) for v in vs] for k, vs in history.history.items() if k.endswith(("_loss", "_weight"))}
    run = {"trunk": trunk, "weighting": weighting, "loss": float(history.history["loss"][-1]),
           "outputs": {k: list(v.shape) for k, v in out.items()}, "history": logged}
    if weighting == "uncertainty":
        run["log_var"] = [float(v) for v in keras.ops.convert_to_numpy(model.get_layer(losses.LAYER_NAME).log_var)]
    report["runs"].append(run)

# FAMO's rule and the hierarchy-aware heads (state updated inside the loss must survive JAX's stateless step).
h_x = rng.uniform(0, 255, (8, 16, 16, 3)).astype("float32")
h_f = rng.integers(0, 6, 8)
h_y = {"fine": np.eye(6, dtype="float32")[h_f], "coarse": np.eye(2, dtype="float32")[np.asarray(TREE)[h_f]]}
config = config_lib.make(variant="Pico/4", loss_weighting="famo", famo_lr=0.1, lr_schedule="constant",
                         learning_rate=3e-3)
model = build_and_compile(config.model, config.optim, {"fine": 6, "coarse": 2}, (16, 16, 3), 10, fine_to_coarse=TREE)
seen = []
for _ in range(6):
    logs = model.train_on_batch(h_x, h_y, return_dict=True)
    seen.append([float(logs["fine_loss"]), float(logs["coarse_loss"])])
logits = keras.ops.convert_to_numpy(model.get_layer(losses.LAYER_NAME).famo_logits)
report["famo"] = {"losses": seen, "logits": [float(v) for v in logits]}
for head in ("marginal", "both"):
    config = config_lib.make(variant="Pico/4", coarse_head=head, epochs=1, batch_size=8)
    model = build_and_compile(config.model, config.optim, {"fine": 6, "coarse": 2}, (16, 16, 3), 1,
                              fine_to_coarse=TREE)
    history = model.fit(h_x, h_y, batch_size=8, epochs=1, verbose=0)
    out = model.predict(h_x, verbose=0)
    report[head] = {"loss": float(history.history["loss"][-1]), "fine": out["fine"].tolist(),
                    "coarse": out["coarse"].tolist()}

# Data parallel, last (it sets the global distribution): keras.distribution.DataParallel over the host devices
# XLA_FLAGS made.
_, replicas = distribute.strategy_scope("mirrored")
config = config_lib.make(variant="Pico/4", epochs=2, batch_size=8)
model = build_and_compile(config.model, config.optim, num_classes, (32, 32, 3), steps_per_epoch=2)
history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
report["data_parallel"] = {"replicas": replicas, "loss": [float(v) for v in history.history["loss"]]}
report["tensorflow_imported"] = "tensorflow" in sys.modules
print("JSON:" + json.dumps(report))
