"""--optimizer=muon: the compiled optimizer takes an orthogonalised step on 2-D Dense kernels and an Adam step on
everything else (biases, the output layers), decays weights like AdamW, and a model compiled with it trains a
step and saves to model.keras and back."""

import keras
import numpy as np
import pytest

from mtl_keras import flags as mtl_flags
from mtl_keras.modeling import build_and_compile

NUM_CLASSES = {"fine": 10, "coarse": 3}
LR = 0.01
MLP_KERNEL, MLP_BIAS, LOGITS_KERNEL = "block0_mlp_dense1/kernel", "block0_mlp_dense1/bias", "fine_logits/kernel"


def _compiled(*flags: str):
    cfg = mtl_flags.config_from_args(["--variant=Pico/4", "--epochs=1", f"--learning_rate={LR}",
                                      "--lr_schedule=constant", *flags])
    return build_and_compile(cfg.model, cfg.optim, NUM_CLASSES, (16, 16, 3), 4)


def _updates(model, gradients) -> dict[str, np.ndarray]:
    """before - after of one optimizer step with `gradients` (path -> array), by path."""
    variables = model.trainable_variables
    before = {v.path: v.numpy() for v in variables}
    model.optimizer.apply([keras.ops.convert_to_tensor(gradients[v.path]) for v in variables], variables)
    return {v.path: before[v.path] - v.numpy() for v in variables}


def _random_gradients(model) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {v.path: rng.normal(size=v.shape).astype("float32") for v in model.trainable_variables}


def _spread(matrix: np.ndarray) -> float:
    """Largest over smallest singular value: 1 for an orthogonal (semi-)matrix."""
    s = np.linalg.svd(matrix, compute_uv=False)
    return float(s.max() / s.min())


def test_muon_orthogonalises_dense_kernels_and_steps_the_rest_like_adam():
    muon = _compiled("--optimizer=muon", "--weight_decay=0")
    assert isinstance(muon.optimizer, keras.optimizers.Muon)
    gradients = _random_gradients(muon)
    step = _updates(muon, gradients)
    # Newton-Schulz leaves singular values near 1 (its quintic lands them in about 0.7-1.2), all of one size.
    assert _spread(step[MLP_KERNEL]) < 2.0
    # A first Adam step is lr * g / (|g| + eps) = lr * sign(g): biases and the output layer take that one.
    for path in (MLP_BIAS, LOGITS_KERNEL):
        np.testing.assert_allclose(step[path], LR * np.sign(gradients[path]), rtol=1e-2)
    # The same gradient under AdamW: a sign matrix, whose singular values spread far apart.
    adamw = _compiled("--optimizer=adamw", "--weight_decay=0")
    assert _spread(_updates(adamw, gradients)[MLP_KERNEL]) > 4.0


def test_muon_decays_kernels_both_ways_and_spares_biases():
    # A zero gradient moves nothing but the decoupled decay, kernel *= 1 - lr * wd, on the Muon and Adam sides.
    model = _compiled("--optimizer=muon", "--weight_decay=0.5")
    before = {v.path: v.numpy() for v in model.trainable_variables}
    step = _updates(model, {v.path: np.zeros(v.shape, "float32") for v in model.trainable_variables})
    for path in (MLP_KERNEL, LOGITS_KERNEL):
        np.testing.assert_allclose(step[path], before[path] * LR * 0.5, rtol=1e-4, atol=1e-8)
    np.testing.assert_array_equal(step[MLP_BIAS], 0.0)


def test_muon_honours_grad_clip_norm_and_ema():
    optimizer = _compiled("--optimizer=muon", "--grad_clip_norm=0.5", "--ema").optimizer
    assert optimizer.global_clipnorm == 0.5 and optimizer.use_ema


@pytest.mark.slow
def test_a_model_trained_with_muon_saves_and_loads(tmp_path):
    model = _compiled("--optimizer=muon", "--nojit_compile")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    y = {"fine": keras.utils.to_categorical(rng.integers(0, 10, 8), 10),
         "coarse": keras.utils.to_categorical(rng.integers(0, 3, 8), 3)}
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.optimizer, keras.optimizers.Muon)
    np.testing.assert_allclose(loaded.predict(x, verbose=0)["fine"], model.predict(x, verbose=0)["fine"],
                               atol=1e-5)
