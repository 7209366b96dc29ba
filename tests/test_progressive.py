"""--progressive_size: the first share of training on smaller images (resized inside the model, every weight
shared, the position embedding resized to the smaller token grid), then at the full size."""

import json

import keras
import numpy as np
import pytest
from absl import flags

from mtl_keras import budget, config, modeling
from mtl_keras.errors import MtlError
from mtl_keras.flags import config_from_args, error_line
from mtl_keras.models.flops import forward_flops
from mtl_keras.models.transformer import AddPositionEmbedding

HEADS = {"fine": 10, "coarse": 2}


def _model(*args: str) -> tuple[keras.Model, config.TrainConfig]:
    cfg = config_from_args(["--variant=Pico/4", "--progressive_size=16", *args])
    return modeling.build_and_compile(cfg.model, cfg.optim, HEADS, (32, 32, 3), 4), cfg


def test_position_embedding_resizes_its_grid_and_every_entry_gets_gradient():
    import tensorflow as tf

    layer = AddPositionEmbedding()
    layer.build((None, 64, 8))
    ramp = np.tile(np.linspace(-1, 1, 8, dtype="float32")[None, :, None], (8, 1, 8)).reshape(1, 64, 8)
    layer.embedding.assign(ramp)
    x = np.zeros((2, 64, 8), "float32")
    np.testing.assert_array_equal(layer(x), np.broadcast_to(ramp, x.shape))  # its own size: unchanged
    small = keras.ops.convert_to_numpy(layer(np.zeros((2, 16, 8), "float32"))).reshape(2, 4, 4, 8)
    # A left-to-right ramp stays one: the same along each column, rising across the columns, inside [-1, 1].
    assert np.allclose(small, small[:, :1]) and np.all(np.diff(small[0, 0, :, 0]) > 0)
    assert -1 <= small.min() < -0.5 and 0.5 < small.max() <= 1
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(layer(tf.zeros((2, 16, 8))))
    grad = tape.gradient(total, layer.embedding.value).numpy()
    # Bilinear weights of each of the 16 new positions sum to 1: the whole gradient is 2 x 16 per channel.
    assert np.allclose(grad.sum(axis=(0, 1)), 32.0) and np.count_nonzero(grad.sum(axis=2)) > 16
    with pytest.raises(ValueError, match="64 tokens cannot be resized to 20: both must be square token grids"):
        layer(np.zeros((1, 20, 8), "float32"))


def test_the_smaller_model_shares_every_weight_and_the_full_model_keeps_its_input_check():
    model, _ = _model()
    small = modeling.at_resolution(model, 16)
    assert small.input_shape == (None, 32, 32, 3)  # the same pipeline feeds both sizes
    assert len(small.trainable_variables) == len(model.trainable_variables)
    assert all(a is b for a, b in zip(small.trainable_variables, model.trainable_variables))
    images = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    with modeling.free_input_shapes(model):
        out = small.predict(images, verbose=0)
    assert sorted(out) == ["coarse", "fine"] and out["fine"].shape == (3, 10) and out["coarse"].shape == (3, 2)
    assert not np.allclose(out["fine"], model.predict(images, verbose=0)["fine"])  # another size, other answers
    trunk = model.get_layer("vit_Pico_4")
    tokens = keras.Model(trunk.inputs, trunk.get_layer("pos_embed").output)
    with modeling.free_input_shapes(tokens):  # 16 px: a 4 x 4 grid of tokens, the embedding resized to it
        assert tokens(np.zeros((1, 16, 16, 3), "float32")).shape == (1, 16, 32)
    with pytest.raises(ValueError, match=r"expected shape=\(None, 32, 32, 3\), found shape=\(1, 16, 16, 3\)"):
        model(np.zeros((1, 16, 16, 3), "float32"))  # outside the block the model checks its input size again


def test_phases_split_the_epochs_or_the_budget_at_the_share():
    from mtl_keras.train import _phases

    model, cfg = _model("--epochs=10", "--progressive_share=0.3")
    small, whole = _phases(model, cfg, HEADS, 0, None)
    assert small[0] is not model and small[1:] == (3, None) and whole == (model, 10, None)
    assert _phases(model, cfg, HEADS, 3, None) == [(model, 10, None)]  # resumed past the switch: full size only
    timer = budget.TimeBudget(100.0, 1e-3, 0.1, "cosine", "/nonexistent")
    small, whole = _phases(model, cfg, HEADS, 0, timer)
    assert small[1:] == (10, pytest.approx(30.0)) and whole == (model, 10, 100.0)
    timer.spent = 30.0  # a run resumed after the switch
    assert _phases(model, cfg, HEADS, 2, timer) == [(model, 10, 100.0)]
    off = config_from_args(["--variant=Pico/4"])
    assert _phases(model, off, HEADS, 0, None) == [(model, 10, None)]


def test_a_run_resumed_after_the_switch_still_knows_its_epochs_at_the_smaller_size(tmp_path):
    from mtl_keras.train import _epochs_at_size

    common = ["--variant=Pico/4", "--progressive_size=16", "--epochs=10", "--progressive_share=0.3"]
    assert _epochs_at_size(config_from_args(common).optim, tmp_path, 5) == 3
    timed = config_from_args([*common, "--time_budget=100"])
    # The budget's records of the earlier attempt: the share (30 s) was reached in epoch 3.
    records = {str(e): {"seconds": 12.0 * e, "steps": 8 * e} for e in (1, 2, 3, 4)}
    (tmp_path / budget.FILE).write_text(json.dumps(records))
    assert _epochs_at_size(timed.optim, tmp_path, 4) == 3
    (tmp_path / budget.FILE).unlink()
    assert _epochs_at_size(timed.optim, tmp_path, 4) is None  # no records: not guessed


@pytest.mark.parametrize("args, message", [
    (["--model=cct", "--variant=Pico/3x1"], "--progressive_size needs --model=vit (got --model=cct)"),
    (["--variant=Mu/4", "--progressive_size=18"], "--progressive_size=18 is not a multiple of the patch size 4"),
    (["--task=mtl", "--loss_weighting=famo"], "--progressive_size works with --loss_weighting=fixed"),
    (["--distribution=mirrored"], "--progressive_size trains on one device: use --distribution=none"),
    (["--progressive_share=0"], "--progressive_share must lie strictly between 0 and 1"),
    (["--progressive_share=1"], "--progressive_share must lie strictly between 0 and 1"),
    (["--progressive_size=-8"], "--progressive_size"),
])
def test_bad_progressive_settings_are_one_line(args, message):
    with pytest.raises(flags.Error) as e:
        config_from_args(["--progressive_size=16", *args])
    assert message in error_line(e.value), error_line(e.value)


def test_a_size_not_below_the_images_is_refused_before_anything_is_written(tmp_path):
    from mtl_keras import train

    cfg = config.make(dataset="shapes", variant="Pico/4", max_train_examples=256, batch_size=64,
                      progressive_size=32, export=False, workdir=str(tmp_path / "w"))
    with pytest.raises(MtlError, match=r"^--progressive_size=32 must be below the images' size 32 x 32"):
        train.run(cfg)
    assert not (tmp_path / "w").exists()


def test_progressive_settings_identify_a_run_and_older_records_read_as_off():
    a = config.identity(config_from_args(["--progressive_size=16"]), "checkpoint")
    b = config.identity(config_from_args(["--progressive_size=24"]), "checkpoint")
    c = config.identity(config_from_args(["--progressive_size=16", "--progressive_share=0.3"]), "checkpoint")
    assert len({json.dumps(x, sort_keys=True) for x in (a, b, c)}) == 3
    off = config.identity(config_from_args([]), "checkpoint")
    older = {k: v for k, v in off.items() if not k.startswith("progressive_")}  # a version without the setting
    assert config.with_absent(older) == config.with_absent(off)


@pytest.mark.slow
def test_train_runs_the_smaller_size_first_then_the_full_size_within_the_budget(tmp_path, capsys, monkeypatch):
    import itertools

    from mtl_keras import train

    # The budget's clock advances a quarter second each time it is read (twice a step), whatever the machine's
    # load: a loaded machine once spent the whole budget in the first epoch's trace.
    ticks = itertools.count()
    monkeypatch.setattr(budget.time, "perf_counter", lambda: next(ticks) * 0.25)
    settings = dict(dataset="shapes", variant="Pico/4", max_train_examples=512, batch_size=64, epochs=40,
                    time_budget=8.0, progressive_size=16, progressive_share=0.5, jit_compile=False, export=False,
                    workdir=str(tmp_path / "w"))
    metrics = train.run(config.make(**settings))
    out = capsys.readouterr().out
    assert "progressive resolution: 16 x 16 px until 4 s of the budget, then full size" in out
    record, steps = metrics["time_budget"], metrics["progressive"]
    assert record["stopped_by_budget"] and record["spent"] >= 8.0, (record, steps)
    # At least one epoch at 16 px, stopped at 4 s, then at least one step at 32 px in an epoch of its own.
    assert steps == {"size": 16, "share": 0.5, "epochs_at_size": steps["epochs_at_size"],
                     "images_at_size": steps["images_at_size"]}
    assert 1 <= steps["epochs_at_size"] < record["epochs"] == metrics["epochs_run"]
    images = record["steps"] * 64
    assert 0 < steps["images_at_size"] < images and steps["images_at_size"] % 64 == 0
    # Training compute counts each image at the size it trained at: the 16 px pass of the same architecture.
    heads = {h: len(metrics["accuracy_per_class"][h]) for h in ("fine", "coarse")}
    small = forward_flops(modeling.build(config.make(variant="Pico/4").model, heads, (16, 16, 3))) / 1e9
    full, at_size = metrics["forward_gflops"], steps["images_at_size"]
    assert small < 0.5 * full  # a quarter of the tokens
    assert metrics["train_gflops"] == pytest.approx(3 * (small * at_size + full * (images - at_size)), rel=1e-2)
    work = tmp_path / "w"
    history = (work / "history.csv").read_text().splitlines()
    assert [int(row.split(",")[0]) for row in history[1:]] == list(range(record["epochs"]))
    assert json.loads((work / "checkpoints" / "state.json").read_text())["epoch"] == record["epochs"]
    assert keras.models.load_model(work / "model.keras").input_shape == (None, 32, 32, 3)
    assert metrics["fine_accuracy"] is not None
    # The checkpoint holds the full-size model's weights: the rerun restores it and trains no further.
    again = train.run(config.make(**settings))
    assert "nothing left to train" in capsys.readouterr().out and again["epochs_run"] == 0
    assert again["fine_accuracy"] == pytest.approx(metrics["fine_accuracy"])
    assert again["progressive"] == steps | {"images_at_size": 0}  # from the budget's records: nothing ran at 16 px
    with pytest.raises(MtlError, match="progressive_size"):  # another size is another run
        train.run(config.make(**{**settings, "progressive_size": 8}))


@pytest.mark.slow  # fits the smaller model for an epoch
def test_a_checkpoint_written_at_the_smaller_size_holds_the_full_models_weights(tmp_path):
    from mtl_keras.callbacks import Checkpoint

    model, _ = _model()
    small = modeling.at_resolution(model, 16)
    # Without XLA: what is checked is what the checkpoint holds, and compiling the step took most of the test.
    modeling.compile_model(small, config_from_args(["--variant=Pico/4"]).model, config.OptimConfig(jit_compile=False),
                           HEADS, model.optimizer)
    identity = config.identity(config_from_args(["--variant=Pico/4", "--progressive_size=16"]), "checkpoint")
    checkpoint = Checkpoint(tmp_path / "checkpoints", identity)
    assert checkpoint.restore(model) == 0  # nothing yet; the model to save from now on
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    labels = {h: keras.utils.to_categorical(rng.integers(0, n, 16), n) for h, n in HEADS.items()}
    with modeling.free_input_shapes(model):
        small.fit(images, labels, batch_size=8, epochs=1, verbose=0, callbacks=[checkpoint])
    fresh, _ = _model()
    assert Checkpoint(tmp_path / "checkpoints", identity).restore(fresh) == 1  # a full-size model loads it
    for a, b in zip(fresh.weights, model.weights):
        np.testing.assert_array_equal(a, b, err_msg=a.path)
    assert int(fresh.optimizer.iterations) == 2  # the optimizer's state came with it
