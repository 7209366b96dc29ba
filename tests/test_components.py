"""Every registered component is exercised: each trunk (models.REGISTRY) builds at its smallest size, each
dataset source (data.sources.REGISTRY) loads a tiny file set in its real format, each loss weighting
(weightings.REGISTRY) trains a step and weighs each head's gradient as it reports. The lists are read from the
registries, so registering a component without what these tests need fails here."""

from __future__ import annotations

import numpy as np
import pytest
from test_cifar_archives import write_archive
from test_fashion_mnist import write_dataset
from test_folders import make_tree, tree_rows, write_csv

from mtl_keras import config, losses, modeling, models, weightings
from mtl_keras.data import datasets
from mtl_keras.data import sources as data_sources

SHAPE = (32, 32, 3)
HEADS = {"fine": 10, "coarse": 2}
NORM_STATS = ([125.3, 123.0, 113.9], [3993.0, 3874.0, 4354.0])  # for trunks that normalise with data statistics


@pytest.mark.parametrize("trunk", sorted(models.REGISTRY))
def test_every_trunk_builds_at_its_smallest_size_with_named_heads(trunk):
    spec = models.REGISTRY[trunk]
    assert (spec.variants is None) == (spec.smallest_variant is None), f"{trunk}: a size table needs its smallest"
    if spec.smallest_variant is not None:
        models.check_variant(trunk, spec.smallest_variant)
    model = models.build_model(trunk, SHAPE, HEADS, variant=spec.smallest_variant or "",
                               norm_stats=NORM_STATS if spec.adapted_norm else None)
    images = np.random.default_rng(0).uniform(0, 255, (2, *SHAPE)).astype("float32")
    out = model.predict(images, verbose=0)
    assert set(model.output_names) == set(out) == {"fine", "coarse"}
    for head, n in HEADS.items():
        assert out[head].shape == (2, n), (trunk, head, out[head].shape)
        np.testing.assert_allclose(out[head].sum(axis=1), 1.0, rtol=1e-5)  # probabilities


# dataset name -> writes a tiny copy in the source's real format under a folder and returns the settings that
# read it. Registering a source without an entry here fails test_every_dataset_source_has_a_fixture.
def _cifar(name: str):
    return lambda tmp: {"data_dir": str(write_archive(tmp / f"{name}.tar.gz", name)), "download": False}


def _csv(tmp):
    make_tree(tmp / "img", per_class=4)
    return {"data_dir": write_csv(tmp, tree_rows(tmp))}


SOURCE_FIXTURES = {
    "shapes": lambda tmp: {},  # generated, no files
    "cifar10": _cifar("cifar10"),
    "cifar100": _cifar("cifar100"),
    "fashion_mnist": lambda tmp: {"fashion_mnist_dir": str(write_dataset(tmp))},
    "folder": lambda tmp: (make_tree(tmp / "tree", per_class=4), {"data_dir": str(tmp / "tree")})[1],
    "csv": _csv,
}


def test_every_dataset_source_has_a_fixture():
    assert set(SOURCE_FIXTURES) == set(data_sources.REGISTRY)


@pytest.mark.parametrize("name", sorted(data_sources.REGISTRY))
def test_every_dataset_source_loads_its_fixture(name, tmp_path, monkeypatch):
    # A Keras cache or tfds folder of the developer's own must not answer for the fixture.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds_home"))
    settings = SOURCE_FIXTURES[name](tmp_path)
    splits = datasets.load(name, validation_fraction=0.2, **settings)
    info = splits.info
    assert info.num_classes["fine"] >= 2 and info.num_classes["coarse"] >= 2
    for part in ("train", "val", "test"):
        split = getattr(splits, part)
        assert len(split) > 0, (name, part)
        images = np.asarray(split.images[:2])
        assert images.dtype == np.uint8 and images.ndim == 4 and images.shape[-1] in (1, 3), (name, images.shape)
        assert 0 <= split.fine.min() and split.fine.max() < info.num_classes["fine"], (name, part)
        np.testing.assert_array_equal(split.coarse, np.asarray(info.fine_to_coarse)[split.fine])


def _batch(n: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (n, 16, 16, 3)).astype("float32")
    fine = rng.integers(0, 6, n)
    return x, {"fine": np.eye(6, dtype="float32")[fine], "coarse": np.eye(2, dtype="float32")[fine % 2]}


@pytest.mark.slow  # fits a step
@pytest.mark.parametrize("name", sorted(weightings.REGISTRY))
def test_every_weighting_trains_a_step_and_weighs_each_heads_gradient_as_reported(name):
    """One fit step gives finite losses (and, for a stateful weighting, the logged `<task>_weight` columns);
    then each head's loss has gradient w * grad(cross-entropy), w the weight the weighting reports."""
    import keras
    import tensorflow as tf

    spec = weightings.REGISTRY[name]
    cfg = config.make(variant="Pico/4", loss_weighting=name, gamma=0.3, lr_schedule="constant", jit_compile=False)
    keras.utils.set_random_seed(0)
    model = modeling.build_and_compile(cfg.model, cfg.optim, {"fine": 6, "coarse": 2}, (16, 16, 3), 1)
    x, y = _batch()
    logs = model.fit(x, y, batch_size=len(x), epochs=1, verbose=0,
                     callbacks=losses.weighting_callbacks(model, name)).history
    assert all(np.isfinite(logs[k][-1]) for k in ("loss", "fine_loss", "coarse_loss")), logs
    assert ({"fine_weight", "coarse_weight"} <= set(logs)) == spec.stateful  # history.csv's weight columns

    probs = {h: tf.Variable(p) for h, p in model(x).items()}
    if not spec.stateful:  # constant multipliers that compile applies (fixed: gamma, 1 - gamma)
        reported = spec.behaviour.loss_weights(list(probs), weightings.settings(name, vars(cfg.optim)))
        with tf.GradientTape(persistent=True) as tape:
            total = model.compute_loss(x, y, probs)
            ce = {h: tf.reduce_mean(keras.losses.categorical_crossentropy(y[h], probs[h])) for h in probs}
        for h in probs:
            np.testing.assert_allclose(tape.gradient(total, probs[h]).numpy(),
                                       reported[h] * tape.gradient(ce[h], probs[h]).numpy(), rtol=1e-5, atol=1e-7)
        assert reported == {"fine": 0.3, "coarse": pytest.approx(0.7)}
        return
    layer = model.get_layer(losses.LAYER_NAME)
    for v in layer.variables:  # a state far from the initial one, so a weight of 1 would show
        v.assign(np.linspace(0.4, 1.6, int(np.prod(v.shape))).reshape(v.shape).astype("float32"))
    for h in ("fine", "coarse"):
        with tf.GradientTape(persistent=True) as tape:
            ce = tf.reduce_mean(keras.losses.categorical_crossentropy(y[h], probs[h]))
            weight = layer.gradient_weight(h, float(ce))  # reported from the state before the loss call
            loss = model.loss[h](y[h], probs[h])
        assert abs(weight - 1.0) > 0.05, (name, h, weight)  # a weight that plain cross-entropy would not give
        np.testing.assert_allclose(tape.gradient(loss, probs[h]).numpy(),
                                   weight * tape.gradient(ce, probs[h]).numpy(), rtol=1e-5, atol=1e-7)
