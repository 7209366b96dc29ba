"""Loss weighting: fixed gamma, uncertainty (Kendall et al.), DWA (Liu et al.), and their flag conflicts."""

import numpy as np
import pytest

from conftest import dwa_weights
from mtl_keras import losses
from mtl_keras.weightings.dwa import DWACallback
from mtl_keras.models import build_model

HEADS = {"fine": 10, "coarse": 3}


def _model(method: str):
    return build_model("vit", (16, 16, 3), HEADS, variant="Pico/4", loss_weighting=method)


def _batch(n: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (n, 16, 16, 3)).astype("float32")
    return x, {h: np.eye(k, dtype="float32")[rng.integers(0, k, n)] for h, k in HEADS.items()}


def test_fixed_weighting_is_gamma():
    loss, weights = losses.compile_losses(_model("fixed"), ["fine", "coarse"], "fixed", gamma=0.3)
    assert weights == {"fine": 0.3, "coarse": 0.7} and set(loss) == {"fine", "coarse"}
    _, single = losses.compile_losses(_model("fixed"), ["coarse"], "fixed", gamma=0.3)
    assert single == {"coarse": 1.0}
    assert losses.weighting_callbacks(_model("fixed"), "fixed") == []


def test_uncertainty_loss_is_kendall_classification_form():
    model = _model("uncertainty")
    layer = model.get_layer(losses.LAYER_NAME)
    layer.log_var.assign(np.array([0.5, -1.0], "float32"))
    loss, weights = losses.compile_losses(model, ["fine", "coarse"], "uncertainty", label_smoothing=0.1)
    assert weights is None
    x, y = _batch()
    p = model(x)
    import keras

    ce = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)(y["fine"], p["fine"])
    expected = np.exp(-0.5) * float(ce) + 0.25  # exp(-s) * L + s / 2
    np.testing.assert_allclose(float(loss["fine"](y["fine"], p["fine"])), expected, rtol=1e-5)
    assert layer.current()["coarse"] == pytest.approx(np.exp(1.0))


@pytest.mark.slow
def test_uncertainty_log_variances_learn_and_outputs_keep_their_names():
    import keras

    model = _model("uncertainty")
    loss, weights = losses.compile_losses(model, ["fine", "coarse"], "uncertainty")
    model.compile(keras.optimizers.Adam(1e-2), loss=loss, loss_weights=weights,
                  metrics={h: ["accuracy"] for h in HEADS})
    x, y = _batch(64)
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0,
                        callbacks=losses.weighting_callbacks(model, "uncertainty"))
    log_var = np.asarray(model.get_layer(losses.LAYER_NAME).log_var)
    assert np.all(np.abs(log_var) > 1e-3), log_var  # gradients reached the weighting layer
    assert history.history["coarse_weight"][-1] == pytest.approx(np.exp(-log_var[1]))  # and the logs follow
    assert {"fine_loss", "coarse_loss", "fine_accuracy", "coarse_weight"} <= set(history.history)
    assert set(model(x)) == {"fine", "coarse"}


def test_dwa_weights_follow_the_loss_ratio():
    model = _model("dwa")
    layer = model.get_layer(losses.LAYER_NAME)
    cb = DWACallback(layer, temperature=2.0)
    cb.on_epoch_begin(0)
    cb.on_epoch_end(0, {"fine_loss": 2.0, "coarse_loss": 1.0})
    cb.on_epoch_begin(1)
    np.testing.assert_allclose(layer.current()["fine"], 1.0)  # first two epochs: equal weights
    cb.on_epoch_end(1, {"fine_loss": 1.8, "coarse_loss": 0.5})
    cb.on_epoch_begin(2)
    r = np.array([1.8 / 2.0, 0.5 / 1.0])
    expected = 2 * np.exp(r / 2) / np.exp(r / 2).sum()  # w_k = K softmax(r_k / T)
    w = layer.current()
    np.testing.assert_allclose([w["fine"], w["coarse"]], expected, rtol=1e-5)
    # The next epoch's logged losses are weighted; the callback divides the weight back out.
    cb.on_epoch_end(2, {"fine_loss": 1.6 * w["fine"], "coarse_loss": 0.4 * w["coarse"]})
    np.testing.assert_allclose(cb.history[-1], [1.6, 0.4], rtol=1e-5)


@pytest.mark.slow
def test_dwa_weights_move_inside_fit_and_weigh_the_loss():
    import keras

    model = _model("dwa")
    loss, _ = losses.compile_losses(model, ["fine", "coarse"], "dwa")
    model.compile(keras.optimizers.Adam(1e-2), loss=loss)
    x, y = _batch(32)
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False,
                        callbacks=losses.weighting_callbacks(model, "dwa")).history
    assert history["fine_weight"][:2] == [1.0, 1.0]  # equal weights until two epochs' losses are known
    # Epoch 3 trained with the weights DWA derived from the losses fit logged (without DWACallback they stay 1).
    third = [history["fine_weight"][2], history["coarse_weight"][2]]
    np.testing.assert_allclose(third, dwa_weights(history), rtol=1e-5)
    assert abs(third[0] - 1.0) > 1e-4, third
    # The compiled loss reads the moved weight: evaluate's fine loss is the weight times the cross-entropy.
    fine = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)["fine_loss"]
    ce = float(keras.losses.CategoricalCrossentropy()(y["fine"], model.predict(x, verbose=0)["fine"]))
    assert fine == pytest.approx(third[0] * ce, rel=1e-4)


def test_dynamic_weighting_needs_two_heads_and_its_layer():
    with pytest.raises(ValueError, match="weighs two task losses, but the model has one head"):
        build_model("vit", (16, 16, 3), {"fine": 10}, variant="Pico/4", loss_weighting="dwa")
    with pytest.raises(ValueError, match="needs a model built with loss_weighting='uncertainty'"):
        losses.compile_losses(_model("fixed"), ["fine", "coarse"], "uncertainty")
    with pytest.raises(ValueError, match="unknown loss weighting 'gradnorm'"):
        losses.check_weighting("gradnorm", ["fine", "coarse"])


@pytest.mark.parametrize("task", ["fine", "coarse"])
def test_single_task_with_dynamic_weighting_is_a_flag_error(task):
    from absl import flags

    from mtl_keras import flags as mtl_flags

    with pytest.raises(flags.IllegalFlagValueError, match="--loss_weighting=dwa needs --task=mtl"):
        mtl_flags.config_from_args([f"--task={task}", "--loss_weighting=dwa"])


def test_reloaded_model_keeps_learned_log_variances(tmp_path):
    import keras

    model = _model("uncertainty")
    loss, _ = losses.compile_losses(model, ["fine", "coarse"], "uncertainty")
    model.compile("adam", loss=loss)
    model.get_layer(losses.LAYER_NAME).log_var.assign(np.array([0.25, -0.5], "float32"))
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")  # compiles TaskLoss from its config
    np.testing.assert_allclose(np.asarray(again.get_layer(losses.LAYER_NAME).log_var), [0.25, -0.5])
    x, y = _batch(8)
    assert np.isfinite(again.evaluate(x, y, verbose=0)[0])
