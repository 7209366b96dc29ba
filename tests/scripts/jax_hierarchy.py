"""Run under KERAS_BACKEND=jax (tests/test_hierarchy.py): FAMO's task logits after train_on_batch steps, and
the marginal / both heads' outputs; prints JSON."""

import json
import os
import sys

import numpy as np

assert os.environ.get("KERAS_BACKEND") == "jax"
import keras  # noqa: E402

from mtl_keras import config, losses, modeling  # noqa: E402

TREE = (0, 0, 0, 1, 1, 1)
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (8, 16, 16, 3)).astype("float32")
f = rng.integers(0, 6, 8)
y = {"fine": np.eye(6, dtype="float32")[f], "coarse": np.eye(2, dtype="float32")[np.asarray(TREE)[f]]}
report = {"backend": keras.backend.backend()}
cfg = config.make(variant="Pico/4", loss_weighting="famo", famo_lr=0.1, lr_schedule="constant", learning_rate=3e-3)
model = modeling.build_and_compile(cfg.model, cfg.optim, {"fine": 6, "coarse": 2}, (16, 16, 3), 10,
                                   fine_to_coarse=TREE)
seen = []
for _ in range(6):
    logs = model.train_on_batch(x, y, return_dict=True)
    seen.append([float(logs["fine_loss"]), float(logs["coarse_loss"])])
layer = model.get_layer(losses.LAYER_NAME)
report["famo"] = {"losses": seen, "logits": [float(v) for v in keras.ops.convert_to_numpy(layer.famo_logits)]}
for head in ("marginal", "both"):
    cfg = config.make(variant="Pico/4", coarse_head=head, epochs=1, batch_size=8)
    model = modeling.build_and_compile(cfg.model, cfg.optim, {"fine": 6, "coarse": 2}, (16, 16, 3), 1,
                                       fine_to_coarse=TREE)
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    out = model.predict(x, verbose=0)
    report[head] = {"loss": float(history.history["loss"][-1]), "fine": out["fine"].tolist(),
                    "coarse": out["coarse"].tolist()}
report["tensorflow_imported"] = "tensorflow" in sys.modules
print("JSON:" + json.dumps(report))
