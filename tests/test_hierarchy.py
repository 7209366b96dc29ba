"""Hierarchy-aware heads (--coarse_head), FAMO weighting and partial labels: outputs by construction, the FAMO
update against the paper's rule, masks in the pipeline, and learnability with half the fine labels missing."""

import numpy as np
import pytest

from conftest import run_module
from mtl_keras import config, evaluate, losses, modeling
from mtl_keras.data import pipeline, types
from mtl_keras.weightings import famo
from mtl_keras.models import build_model
from mtl_keras.models.flops import forward_flops
from mtl_keras.models.hierarchy import consistent_pair, membership

TREE = (0, 0, 0, 1, 1, 1)  # six fine classes, two superclasses
rng = np.random.default_rng(0)


def _model(coarse_head, **kwargs):
    return build_model("vit", (16, 16, 3), {"fine": 6, "coarse": 2}, variant="Pico/4", coarse_head=coarse_head,
                       fine_to_coarse=TREE, **kwargs)


def test_marginal_coarse_is_the_sum_of_its_fine_classes():
    model = _model("marginal")
    out = model.predict(rng.uniform(0, 255, (5, 16, 16, 3)).astype("float32"), verbose=0)
    assert set(out) == {"fine", "coarse"} and out["coarse"].shape == (5, 2)
    np.testing.assert_allclose(out["coarse"], out["fine"] @ membership(TREE), atol=1e-6)
    assert [layer.name for layer in model.layers if layer.name in ("fine", "coarse")] == ["fine", "coarse"]


def test_both_predicts_one_joint_distribution_and_trains_a_consistency_loss():
    import keras

    model = _model("both", consistency_weight=2.0)
    x = rng.uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    out = model.predict(x, verbose=0)
    np.testing.assert_allclose(out["fine"].sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out["coarse"], out["fine"] @ membership(TREE), atol=1e-6)
    # The joint is the product of the raw heads over consistent pairs.
    raw = keras.Model(model.input, [model.get_layer("fine_head").output, model.get_layer("coarse_head").output])
    fine, coarse = raw.predict(x, verbose=0)
    joint = fine * coarse[:, list(TREE)]
    np.testing.assert_allclose(out["fine"], joint / joint.sum(-1, keepdims=True), atol=1e-5)
    assert forward_flops(model) > 0  # the FLOP count walks a layer with two outputs


def _symmetric_kl(fine, coarse):
    marginal = fine @ membership(TREE)
    return np.mean(np.sum((marginal - coarse) * (np.log(marginal) - np.log(coarse)), -1))


def test_consistency_weight_scales_the_symmetric_kl_added_in_training():
    import keras

    from mtl_keras import flags as mtl_flags

    x = rng.uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    for weight in ("0.5", "2"):
        cfg = mtl_flags.config_from_args(["--coarse_head=both", f"--consistency_weight={weight}", "--variant=Pico/4",
                                          "--stochastic_depth=0"])  # no random layer: two training calls agree
        model = modeling.build(cfg.model, {"fine": 6, "coarse": 2}, (16, 16, 3), fine_to_coarse=TREE)
        raw = keras.Model(model.input, [model.get_layer("fine_head").output, model.get_layer("coarse_head").output])
        fine, coarse = (np.asarray(t) for t in raw(x, training=True))  # the stem normalises by batch in training
        model(x, training=True)
        assert len(model.losses) == 1
        assert float(model.losses[0]) == pytest.approx(float(weight) * 0.5 * _symmetric_kl(fine, coarse), rel=1e-4)
        model(x, training=False)  # serving adds no loss
        assert not model.losses


def test_consistent_pair_never_contradicts_the_hierarchy():
    # The argmax of a sum can leave the fine argmax's superclass: 0.4 in superclass 0, 0.3 + 0.3 in superclass 1.
    fine = np.array([[0.4, 0.0, 0.0, 0.3, 0.3, 0.0]])
    coarse = fine @ membership(TREE)
    assert coarse.argmax() != TREE[fine.argmax()]
    f, c = consistent_pair(fine, coarse, TREE)
    assert (f, c) == (3, 1)
    p = rng.dirichlet(np.ones(6), 500)
    q = rng.dirichlet(np.ones(2), 500)
    f, c = consistent_pair(p, q, TREE)
    assert evaluate.hierarchy_consistency(f, c, TREE) == 1.0 and (c == q.argmax(-1)).all()


def test_metrics_skip_unlabelled_images_and_count_both_wrong():
    info = types.DatasetInfo("t", tuple("abcdef"), ("x", "y"), TREE)
    truth = {"fine": np.array([0, 3, -1, 5]), "coarse": np.array([0, 1, 1, 0])}
    probs = {"fine": np.eye(6)[[0, 4, 1, 1]], "coarse": np.eye(2)[[0, 0, 1, 1]]}
    m = evaluate.accuracy_metrics(truth, probs, info)
    assert m["fine_accuracy"] == pytest.approx(1 / 3) and m["labelled_fine"] == 3
    assert m["coarse_accuracy"] == 0.5 and m["both_wrong"] == pytest.approx(2 / 3)


def test_hierarchy_heads_need_two_heads_and_a_map():
    with pytest.raises(ValueError, match="needs both heads"):
        build_model("vit", (16, 16, 3), {"fine": 6}, variant="Pico/4", coarse_head="marginal", fine_to_coarse=TREE)
    with pytest.raises(ValueError, match="fine -> coarse map"):
        build_model("vit", (16, 16, 3), {"fine": 6, "coarse": 2}, variant="Pico/4", coarse_head="both")


def test_coarse_head_flag_needs_mtl_in_one_line(capsys):
    from conftest import parsed_in_process

    status, lines = parsed_in_process("train", ["--task=fine", "--coarse_head=marginal", "--workdir=/nonexistent/x"],
                                      capsys)
    assert status == 2 and len(lines) == 1 and "coarse_head" in lines[0] and "needs --task=mtl" in lines[0], lines


def famo_reference(batch_losses: np.ndarray, lr: float, decay: float) -> np.ndarray:
    """The paper's update with the reference code's Adam (torch semantics: L2 added to the gradient): task
    logits after seeing `batch_losses` [steps, tasks] one step at a time (the first step only records)."""
    xi, m, v = np.zeros(batch_losses.shape[1]), 0.0, 0.0
    for t in range(1, len(batch_losses)):
        z = np.exp(xi) / np.exp(xi).sum()
        delta = np.log(batch_losses[t - 1] + 1e-8) - np.log(batch_losses[t] + 1e-8)
        g = z * (delta - z @ delta) + decay * xi  # d softmax(xi)^T delta / d xi
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        xi = xi - lr * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    return xi


@pytest.mark.slow
def test_famo_update_follows_the_papers_rule_inside_fit_steps():
    cfg = config.make(variant="Pico/4", loss_weighting="famo", famo_lr=0.1, famo_decay=0.01, lr_schedule="constant",
                      learning_rate=3e-3)
    model = modeling.build_and_compile(cfg.model, cfg.optim, {"fine": 6, "coarse": 2}, (16, 16, 3), 10,
                                       fine_to_coarse=TREE)
    x = rng.uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    f = rng.integers(0, 6, 8)
    y = {"fine": np.eye(6, dtype="float32")[f], "coarse": np.eye(2, dtype="float32")[np.asarray(TREE)[f]]}
    seen = []
    for _ in range(6):  # the logged per-head losses are the plain cross-entropies FAMO sees
        logs = model.train_on_batch(x, y, return_dict=True)
        seen.append([logs["fine_loss"], logs["coarse_loss"]])
    layer = model.get_layer(losses.LAYER_NAME)
    expected = famo_reference(np.array(seen), 0.1, 0.01)
    np.testing.assert_allclose(np.asarray(layer.famo_logits), expected, rtol=1e-3, atol=1e-5)
    assert abs(expected[0] - expected[1]) > 1e-3  # the weights moved (Adam's first step alone is +-famo_lr)
    z = layer.current()  # what history.csv logs: softmax of the logits the rule gave
    softmax = np.exp(expected) / np.exp(expected).sum()
    assert [z["fine"], z["coarse"]] == pytest.approx(list(softmax), rel=1e-3)


def test_famo_reports_the_papers_gradient_weight():
    """FAMO's reported gradient weight of task k is w_k = (z_k / L_k) / sum_j (z_j / L_j), z = softmax(xi), L the
    tasks' latest batch losses with task k's replaced by the loss being computed. That each head's loss gradient
    is its cross-entropy gradient times this weight is checked for every weighting in test_components.py."""
    layer = losses.TaskWeights(["fine", "coarse"], method="famo")
    layer.build((None, 4))
    xi, last = np.array([1.5, -1.0], "float32"), np.array([1.3, 0.6], "float32")
    layer.famo_logits.assign(xi)
    layer.famo_last.assign(last)  # as if a step had recorded both tasks
    z = np.exp(xi) / np.exp(xi).sum()
    for i, (task, level) in enumerate((("fine", 0.9), ("coarse", 1.7))):
        seen = np.r_[last]
        seen[i] = level + famo.EPSILON  # the call records the task's own batch loss
        weight = (z[i] / seen[i]) / np.sum(z / seen)
        assert 0.05 < weight < 0.95 and abs(weight - 0.5) > 0.05, weight  # a weight that tells the two apart
        assert layer.gradient_weight(task, level) == pytest.approx(weight, rel=1e-6)


def _half_fine_labels(split: types.Split, seed: int = 0) -> types.Split:
    fine = split.fine.copy()
    fine[np.random.default_rng(seed).permutation(len(fine))[: len(fine) // 2]] = -1
    return types.Split(split.images, fine, split.coarse)


def test_pipeline_masks_missing_labels(shapes_splits):
    split = _half_fine_labels(shapes_splits.train.take(slice(0, 64)))
    x, y, w = next(iter(pipeline.pipeline(split, shapes_splits.info, batch_size=64)))
    missing = split.fine < 0
    np.testing.assert_array_equal(w["fine"].numpy(), (~missing).astype("float32"))
    np.testing.assert_array_equal(w["coarse"].numpy(), np.ones(64, "float32"))
    assert (y["fine"].numpy()[missing] == 0).all() and (y["fine"].numpy()[~missing].sum(-1) == 1).all()
    with pytest.raises(Exception, match="MixUp / CutMix"):
        pipeline.pipeline(split, shapes_splits.info, training=True, augment="flip_crop,mixup")


def test_partial_labels_from_a_csv_and_a_folder_tree(tmp_path):
    from test_folders import identify, load, make_tree, tree_rows, write_csv

    make_tree(tmp_path / "img", per_class=6)
    rows = tree_rows(tmp_path)  # car (vehicle), cat and dog (animal), 6 each
    rows = [r.rsplit(",", 2)[0] + ",," + r.rsplit(",", 1)[1] if i % 3 == 0 else r for i, r in enumerate(rows)]
    rows = [r.rsplit(",", 1)[0] + "," if i % 3 == 1 else r for i, r in enumerate(rows)]  # coarse from the tree
    s = load(write_csv(tmp_path, rows), validation_fraction=0.0, test_fraction=0.0)
    assert s.info.fine_to_coarse == (1, 0, 0) and len(s.train) == 18
    fine_of, _ = identify(np.asarray(s.train.images))
    missing = s.train.fine < 0
    assert missing.sum() == 6 and (s.train.coarse >= 0).all()
    np.testing.assert_array_equal(s.train.fine[~missing], fine_of[~missing])
    np.testing.assert_array_equal(s.train.coarse, np.asarray(s.info.fine_to_coarse)[fine_of])

    root = tmp_path / "tree"
    serial = make_tree(root, per_class=4)
    make_tree(root, per_class=3, tree={"animal": ("unsorted",)}, start=serial)
    for f in (root / "animal" / "unsorted").iterdir():  # images right in COARSE/: coarse label only
        f.rename(root / "animal" / f.name)
    (root / "animal" / "unsorted").rmdir()
    s = load(root, validation_fraction=0.0, test_fraction=0.0)
    assert s.info.fine_names == ("car", "cat", "dog") and len(s.train) == 15
    assert (s.train.fine < 0).sum() == 3 and (s.train.coarse[s.train.fine < 0] == 0).all()


def test_masked_heads_have_no_loss_and_no_metric(shapes_splits):
    """With label smoothing an all-zero label vector would have a loss: the weight must remove it."""
    info = shapes_splits.info
    split = _half_fine_labels(shapes_splits.train.take(slice(0, 64)))
    cfg = config.make(variant="Pico/4", label_smoothing=0.2)
    model = modeling.build_and_compile(cfg.model, cfg.optim, info.num_classes, split.images.shape[1:], 1)
    logs = model.evaluate(pipeline.pipeline(split, info, batch_size=64), verbose=0, return_dict=True)
    labelled = split.take(np.flatnonzero(split.fine >= 0))
    plain = model.evaluate(pipeline.pipeline(labelled, info, batch_size=64), verbose=0, return_dict=True)
    assert logs["fine_accuracy"] == pytest.approx(plain["fine_accuracy"])
    # sum_over_batch_size: the masked mean is the labelled images' mean scaled by their share of the batch.
    assert logs["fine_loss"] == pytest.approx(plain["fine_loss"] * len(labelled) / 64, rel=1e-4)


@pytest.mark.slow
def test_learns_fine_classes_with_half_the_fine_labels_missing(shapes_splits):
    """The tiny-run recipe (conftest.TINY_FLAGS: 61.5 % fine with every label) on 3000 shapes images of which
    1500 keep their fine label; label smoothing makes a wrongly unmasked image pull towards uniform."""
    import keras

    keras.utils.set_random_seed(1)
    info = shapes_splits.info
    train = _half_fine_labels(shapes_splits.train.take(slice(0, 3000)))
    cfg = config.make(variant="Mu/4", epochs=8, learning_rate=2e-3, batch_size=64, label_smoothing=0.1)
    model = modeling.build_and_compile(cfg.model, cfg.optim, info.num_classes, train.images.shape[1:],
                                       len(train) // 64, fine_to_coarse=info.fine_to_coarse)
    model.fit(pipeline.pipeline(train, info, training=True, batch_size=64, augment="flip_crop"), epochs=8,
              steps_per_epoch=len(train) // 64, verbose=0)
    metrics = evaluate.accuracy_metrics(*evaluate.predict_split(model, shapes_splits.test, info), info)
    # Measured 2026-11-25 (2-core box): fine 43.90 %, coarse 61.10 %; chance is 10 % and 33 %. Bounds ~3x chance
    # fine and 1.5x coarse, >= 10 points under the measured figures.
    print(f"half the fine labels: fine {metrics['fine_accuracy']:.2%}, coarse {metrics['coarse_accuracy']:.2%}")
    assert metrics["fine_accuracy"] > 0.30 and metrics["coarse_accuracy"] > 0.50


@pytest.mark.slow
@pytest.mark.parametrize("coarse_head", ["marginal", "both"])
def test_hierarchy_heads_export_with_parity(tmp_path, coarse_head):
    """Keras <-> SavedModel <-> ONNX on the exported model: outputs named fine / coarse, within 1e-5."""
    from mtl_keras.serving import export, runtime, verify

    model = _model(coarse_head)
    version = export.export(model, str(tmp_path), "m")
    x = verify.random_pixels((16, 16, 3), 16)
    keras_out = runtime.load(model)(x)
    for artifact in (version, version / "model.onnx"):
        result = verify.compare(keras_out, runtime.load(artifact)(x), 1e-5, f"keras vs {artifact.name}")
        assert result.ok, result.problems
    np.testing.assert_allclose(keras_out["coarse"], keras_out["fine"] @ membership(TREE), atol=1e-6)


@pytest.mark.slow
def test_train_cli_with_both_heads_famo_and_bfloat16_exports_float32(tmp_path):
    """One short run through the CLI, in bfloat16: consistent pairs (consistency 1.0), FAMO weights logged, and
    float32 exports with parity. (What bfloat16 changes in the model, compute dtype bfloat16 with float32
    weights, and a float16 run training to a finite loss: tests/test_recipe.py.)"""
    import csv
    import json

    import onnx

    proc = run_module("mtl_keras.train", "--dataset=shapes", "--variant=Pico/4", "--epochs=2", "--batch_size=64",
                      "--max_train_examples=512", "--validation_fraction=0.02", "--coarse_head=both",
                      "--loss_weighting=famo", "--noint8", "--mixed_precision=bfloat16", "--nojit_compile",
                      f"--workdir={tmp_path / 'w'}", f"--export_dir={tmp_path / 'e'}", "--model_name=bf16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert metrics["hierarchy_consistency"] == 1.0 and metrics["onnx_parity_ok"] is True
    # The exports are float32 all the same.
    proto = onnx.load(tmp_path / "e" / "bf16" / "1" / "model.onnx")
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert not any(t.data_type == onnx.TensorProto.BFLOAT16 for t in proto.graph.initializer)
    # Every prediction is a consistent pair, so a wrong superclass means a wrong class too.
    assert metrics["both_wrong"] == pytest.approx(1 - metrics["coarse_accuracy"])
    rows = list(csv.DictReader(open(tmp_path / "w" / "history.csv")))
    assert len(rows) == 2 and float(rows[-1]["fine_weight"]) != 0.5  # FAMO moved the weights
    # The logged weights are the saved model's z = softmax(xi) at the end of training.
    import keras

    xi = np.asarray(keras.saving.load_model(tmp_path / "w" / "model.keras").get_layer(losses.LAYER_NAME).famo_logits)
    z = np.exp(xi) / np.exp(xi).sum()
    assert [float(rows[-1]["fine_weight"]), float(rows[-1]["coarse_weight"])] == pytest.approx(list(z), rel=1e-4)
