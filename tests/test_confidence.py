"""Calibration, mistake severity and the hedged answer on hand-made probabilities (numpy, fast)."""

import numpy as np
import pytest

from mtl_keras import confidence
from mtl_keras.serving import answers

F2C = [0, 0, 1, 1]


def test_ece_of_a_calibrated_and_an_overconfident_head():
    truth = np.array([0] * 8 + [1] * 2)
    calibrated = np.tile([0.8, 0.2], (10, 1))  # 80 % confident, 80 % right
    assert confidence.ece(calibrated, truth) == pytest.approx(0.0)
    sure = np.tile([0.99, 0.01], (10, 1))
    assert confidence.ece(sure, truth) == pytest.approx(0.19)
    assert confidence.ece(sure, np.full(10, -1)) is None  # no labelled image


def test_temperature_fit_cools_an_overconfident_head_and_is_kept_only_when_it_helps():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2000, 4)) * 4
    truth = np.array([rng.choice(4, p=np.exp(z) / np.exp(z).sum()) for z in logits])
    true_p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    over = confidence.temper(true_p, 0.5)  # twice too sharp
    t = confidence.fit_temperature(over, truth)
    assert 1.7 < t < 2.3
    kept, report = confidence.calibrate({"fine": truth}, {"fine": over})
    assert kept["fine"] == pytest.approx(t, abs=1e-3)
    assert report["fine"]["val_ece_after"] < report["fine"]["val_ece_before"]
    kept, report = confidence.calibrate({"fine": truth}, {"fine": true_p})  # already calibrated: nothing to gain
    assert report["fine"]["temperature"] == pytest.approx(1.0, abs=0.1)


def test_tied_coarse_head_is_the_marginal_of_the_tempered_fine_head():
    fine = np.array([[0.5, 0.3, 0.1, 0.1]], np.float32)
    out = confidence.apply({"fine": fine, "coarse": np.array([[0.8, 0.2]], np.float32)}, {"fine": 2.0}, F2C)
    np.testing.assert_allclose(out["coarse"], out["fine"] @ np.array([[1, 0], [1, 0], [0, 1], [0, 1]]), atol=1e-6)
    assert out["fine"][0, 0] < 0.5  # cooled
    back = confidence.apply(out, {"fine": 0.5}, F2C)  # what trust_metrics uses to report the raw model's ECE
    np.testing.assert_allclose(back["fine"], fine, atol=1e-6)


def test_keras_temperature_layer_matches_numpy():
    import keras

    from mtl_keras.models.hierarchy import with_temperature

    inputs = keras.Input((3,), name="image")
    fine = keras.layers.Dense(4, activation="softmax", name="fine")(inputs)
    coarse = keras.layers.Dense(2, activation="softmax", name="coarse")(inputs)
    model = keras.Model(inputs, {"fine": fine, "coarse": coarse})
    x = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
    raw = {k: np.asarray(v) for k, v in model.predict_on_batch(x).items()}
    tempered = with_temperature(model, {"fine": 1.7, "coarse": 0.6})
    got = {k: np.asarray(v) for k, v in tempered.predict_on_batch(x).items()}
    for head, t in (("fine", 1.7), ("coarse", 0.6)):
        np.testing.assert_allclose(got[head], confidence.temper(raw[head], t), atol=1e-6)
    assert sorted(tempered.output_names) == ["coarse", "fine"]


def test_within_superclass_counts_only_wrong_fine_answers():
    truth = {"fine": np.array([0, 0, 2, 3, -1])}
    preds = {"fine": np.array([0, 1, 0, 2, 3])}  # right; wrong inside; wrong outside; wrong inside; unlabelled
    assert confidence.within_superclass(truth, preds, F2C) == pytest.approx(2 / 3)


def test_threshold_reaches_the_target_precision_with_the_most_coverage():
    conf = np.array([0.99, 0.95, 0.9, 0.9, 0.8, 0.6, 0.5])
    right = np.array([1, 1, 1, 0, 1, 0, 1], bool)
    assert answers.choose_threshold(conf, right, 0.99) == pytest.approx(0.95)  # the tied 0.9 pair goes together
    assert answers.choose_threshold(conf, right, 0.75) == pytest.approx(0.8)  # 4 of 5 right at 0.8
    assert answers.choose_threshold(conf, np.zeros(7, bool), 0.5) == answers.NEVER


def test_hedged_answers_and_their_figures():
    probs = {"fine": np.array([[0.9, 0.05, 0.03, 0.02], [0.4, 0.1, 0.3, 0.2], [0.1, 0.1, 0.5, 0.3]]),
             "coarse": np.array([[0.95, 0.05], [0.5, 0.5], [0.2, 0.8]])}
    truth = {"fine": np.array([0, 1, 3]), "coarse": np.array([0, 0, 1])}
    ids = answers.pair(probs, F2C, True)
    m = confidence.hedge_metrics(truth, probs, ids, 0.45)
    # image 0: fine 0 (0.9) right; image 1: coarse 0 right; image 2: fine 2 (0.5) wrong
    assert m["hedge_coverage"] == pytest.approx(2 / 3) and m["hedge_fine_precision"] == pytest.approx(0.5)
    assert m["hedge_coarse_precision"] == 1.0 and m["hedge_accuracy"] == pytest.approx(2 / 3)
    _, risk, aurc = confidence.risk_coverage(np.array([0.9, 0.5, 0.4]), np.array([True, False, False]))
    np.testing.assert_allclose(risk, [0, 0.5, 2 / 3])
    assert aurc == pytest.approx((0 + 0.5 + 2 / 3) / 3)
    served = answers.answers(probs, {"fine": list("abcd"), "coarse": ["X", "Y"]},
                             answers.Decoding(F2C, "marginal", 0.45))
    assert [(a["label"], a["level"]) for a in served] == [("a", "fine"), ("X", "coarse"), ("c", "fine")]
