"""Checkpoint (atomic save, resume, clear errors), NaN guard and failed-value guard, on a tiny Keras model."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from mtl_keras import config
from mtl_keras import processes
from mtl_keras.callbacks import Checkpoint, CheckpointError, FailedValueGuard, NanGuard, trim_history

SETTINGS = {"dataset": "shapes", "epochs": 3, "learning_rate": 1e-3, "workdir": "a"}


def _identity(**changes) -> dict:
    """What identifies the run's checkpoint with SETTINGS + `changes` (config.identity: the one place that decides)."""
    return config.identity(config.make(**{**SETTINGS, **changes}), "checkpoint")


CONFIG = _identity()


def _model(lr: float = 1e-2) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    model.compile(keras.optimizers.AdamW(lr), "mse")
    return model


def _data():
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    return x, x.sum(1, keepdims=True)


@pytest.mark.slow
def test_checkpoint_keeps_newest_epoch_and_restores_weights_and_optimizer(tmp_path):
    model = _model()
    model.fit(*_data(), epochs=3, batch_size=16, verbose=0, callbacks=[Checkpoint(tmp_path, CONFIG)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-3.weights.h5", "state.json"]
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["epoch"] == 3 and "workdir" not in state["config"]

    fresh = _model()
    assert Checkpoint(tmp_path, _identity(workdir="b", jit_compile=False)).restore(fresh) == 3  # may move, no XLA
    assert int(fresh.optimizer.iterations) == int(model.optimizer.iterations) == 12
    for a, b in zip(fresh.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_no_checkpoint_means_epoch_zero(tmp_path):
    assert Checkpoint(tmp_path / "none", CONFIG).restore(_model()) == 0


@pytest.mark.slow
def test_truncated_checkpoint_is_named_in_the_error(tmp_path):
    _model().fit(*_data(), epochs=1, verbose=0, callbacks=[Checkpoint(tmp_path, CONFIG)])
    weights = tmp_path / "epoch-1.weights.h5"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=f"checkpoint {weights} cannot be read .*delete {tmp_path}"):
        Checkpoint(tmp_path, CONFIG).restore(_model())


def test_corrupt_state_file_is_named_in_the_error(tmp_path):
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=f"checkpoint {tmp_path / 'state.json'} is corrupt"):
        Checkpoint(tmp_path, CONFIG).restore(_model())


@pytest.mark.slow
def test_checkpoint_of_other_flags_is_refused(tmp_path):
    _model().fit(*_data(), epochs=1, verbose=0, callbacks=[Checkpoint(tmp_path, CONFIG)])
    with pytest.raises(CheckpointError, match=r"run with other flags \(epochs, learning_rate\)"):
        Checkpoint(tmp_path, _identity(epochs=5, learning_rate=0.1)).restore(_model())


@pytest.mark.slow
def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path):
    x, y = _data()
    model = _model()
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[Checkpoint(tmp_path, CONFIG)])
    y_bad = y.copy()
    y_bad[40] = np.nan  # batch 3 of the next epoch turns the loss NaN
    guard = NanGuard()
    model.fit(x, y_bad, epochs=3, batch_size=16, verbose=0, shuffle=False, initial_epoch=1,
              callbacks=[guard, Checkpoint(tmp_path, CONFIG)])
    assert guard.failure is not None and guard.failure[:2] == (2, 3)
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 1


def test_a_logged_value_whose_step_failed_raises_its_own_error_before_the_csv_logger_reads_it(tmp_path, monkeypatch):
    # On JAX, a step whose collective lost its peer leaves log values that raise that error when read. Keras keeps
    # a value it cannot turn into a float, and CSVLogger then failed on it with "iteration over a 0-d array",
    # which hid the lost peer from train's one-line report.
    lost = "Gloo all-reduce failed: [pair.cc:534] Connection closed by peer [127.0.0.1]:40105"

    class Failed:
        def __float__(self):
            raise RuntimeError(lost)

        def __array__(self, *args, **kwargs):
            raise RuntimeError(lost)

        def __iter__(self):  # as a 0-d jax.Array
            raise TypeError("iteration over a 0-d array")

    csv = keras.callbacks.CSVLogger(str(tmp_path / "history.csv"))
    callbacks = keras.callbacks.CallbackList([FailedValueGuard(), csv], model=_model())
    callbacks.on_train_begin()
    callbacks.on_epoch_end(0, {"loss": 0.5, "val_loss": np.float32(0.25)})  # values that convert pass
    with pytest.raises(RuntimeError) as failed:
        callbacks.on_epoch_end(1, {"loss": 0.5, "val_loss": Failed()})
    assert str(failed.value) == lost
    monkeypatch.setattr(processes, "_group", processes.Group(("localhost:1234",), 2, 0, 5))
    assert str(processes.lost_peer(failed.value)).startswith("lost peer process 1: it stopped during training")
    assert (tmp_path / "history.csv").read_text().splitlines()[1:] == ["0,0.5,0.25"]


def test_run_identity_is_derived_in_one_place():
    # Resume and finished experiment runs: where things live and XLA do not matter; the task and seed do.
    base = config.make()
    same = config.make(workdir="x", export_dir="y", jit_compile=False, data_dir="/d", int8=False, atol=1.0)
    assert config.identity(base) == config.identity(same)
    for changed in ({"task": "fine"}, {"seed": 1}, {"gamma": 0.3}, {"epochs": 2}, {"augment": "none"}):
        assert config.identity(config.make(**changed)) != config.identity(base), changed
    # How the model is evaluated (flip TTA) identifies a finished run, but a checkpoint resumes under either.
    tta = config.make(tta_flip=True)
    assert config.identity(tta) != config.identity(base)
    assert config.identity(tta, "checkpoint") == config.identity(base, "checkpoint")
    # MTL / STL pairing also ignores the task, its loss mix and the seed, but not the recipe.
    stl = config.make(task="fine", gamma=0.3, loss_weighting="fixed", head_dropout=0.1, seed=4)
    assert config.identity(stl, "pairing") == config.identity(base, "pairing")
    assert config.identity(config.make(epochs=2), "pairing") != config.identity(base, "pairing")


def test_a_folder_or_csv_checkpoint_resumes_only_on_its_own_data(tmp_path, monkeypatch):
    # data_dir was a place: a resumed folder run on another --data_dir re-scored the old model on new data.
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "a")
    monkeypatch.chdir(tmp_path)
    for dataset, leaf in (("folder", ""), ("csv", "labels.csv")):
        checkpoints = tmp_path / f"checkpoints-{dataset}"
        checkpoints.mkdir()
        (checkpoints / "epoch-1.weights.h5").write_bytes(b"")
        saved = _identity(dataset=dataset, data_dir=f"a/{leaf}")
        (checkpoints / "state.json").write_text(json.dumps({"epoch": 1, "weights": "epoch-1.weights.h5",
                                                            "config": saved}))
        for same in (f"a/{leaf}", str(tmp_path / "a" / leaf), f"./link/{leaf}"):  # a plain rerun, however spelt
            assert Checkpoint(checkpoints, _identity(dataset=dataset, data_dir=same)).check()[0] == 1
        with pytest.raises(CheckpointError, match=r"a run with other flags \(data_dir\); use another --workdir"):
            Checkpoint(checkpoints, _identity(dataset=dataset, data_dir=f"b/{leaf}")).check()
    # Where tfds keeps CIFAR is still a place: moving its cache does not make another run.
    assert _identity(dataset="cifar10", data_dir="a") == _identity(dataset="cifar10", data_dir="b")


OLD = Path(__file__).resolve().parent / "fixtures" / "main_f49e8fa"  # state.json / config.json of a 1-epoch run


def _old_checkpoint(tmp_path, saved: dict | None = None) -> Path:
    """A checkpoint folder holding the previous version's state.json (or `saved` as its config)."""
    state = json.loads((OLD / "state.json").read_text())
    state["config"] = state["config"] if saved is None else saved
    (tmp_path / "state.json").write_text(json.dumps(state))
    (tmp_path / state["weights"]).write_bytes(b"")  # check() needs the file, not its contents
    return tmp_path


def test_checkpoint_of_the_previous_version_still_resumes(tmp_path):
    # Written by main at f49e8fa (train --dataset=shapes --epochs=1 --batch_size=64 --max_train_examples=256
    # --seed=1): it lacks the settings added since (coarse_head, consistency_weight, famo_lr, famo_decay), whose
    # defaults reproduce what that version did.
    old = json.loads((OLD / "config.json").read_text())
    flags = {k: old[k] for k in ("dataset", "epochs", "batch_size", "max_train_examples", "seed")}
    assert Checkpoint(_old_checkpoint(tmp_path), config.identity(config.make(**flags), "checkpoint")).check()[0] == 1
    # A setting the old run did not record, changed from the old behaviour: another run, named.
    for change, name in (({"coarse_head": "marginal"}, "coarse_head"), ({"famo_lr": 0.1}, "famo_lr"),
                         ({"seed": 2}, "seed")):
        other = config.identity(config.make(**{**flags, **change}), "checkpoint")
        with pytest.raises(CheckpointError, match=rf"a run with other flags \({name}\); use another --workdir"):
            Checkpoint(tmp_path, other).check()


def test_a_checkpoint_lacking_a_setting_with_no_old_value_or_holding_an_unknown_one_is_refused(tmp_path):
    saved = json.loads((OLD / "state.json").read_text())["config"]
    run = config.identity(config.make(**{k: saved[k] for k in ("epochs", "batch_size", "max_train_examples",
                                                                "seed")}), "checkpoint")
    # learning_rate has always been recorded: a record without it is not filled in from today's default.
    lacking = {k: v for k, v in saved.items() if k != "learning_rate"}
    with pytest.raises(CheckpointError, match=r"other flags \(learning_rate\)"):
        Checkpoint(_old_checkpoint(tmp_path, lacking), run).check()
    with pytest.raises(CheckpointError, match=r"settings this version does not know \(warp_drive\)"):
        Checkpoint(_old_checkpoint(tmp_path, {**saved, "warp_drive": 9}), run).check()
    # A setting that no longer identifies a checkpoint (here: one of this version's evaluation settings) is
    # not compared, whatever the record holds.
    assert Checkpoint(_old_checkpoint(tmp_path, {**saved, "tta_flip": True}), run).check()[0] == 1


def test_config_json_of_the_previous_version_reads_and_a_foreign_one_is_one_line(tmp_path):
    from mtl_keras.errors import ConfigError

    read = config.read_json(OLD / "config.json")  # main at f49e8fa: without the settings added since
    assert (read.optim.epochs, read.optim.batch_size, read.run.seed) == (1, 64, 1)
    assert (read.serving.atol, read.serving.top_k, read.serving.onnx_converter) == (1e-5, 5, "tf2onnx")
    assert (read.model.coarse_head, read.model.tta_flip, read.optim.famo_lr) == ("learned", False, 0.025)
    old = json.loads((OLD / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**old, "warp_drive": 9}))
    with pytest.raises(ConfigError, match=r"holds settings this version does not know \(warp_drive\)") as err:
        config.read_json(tmp_path / "config.json")
    assert "\n" not in str(err.value)
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in old.items() if k != "seed"}))
    with pytest.raises(ConfigError, match=r"lacks settings that identify its run \(seed\)"):
        config.read_json(tmp_path / "config.json")


def test_resume_trims_history_rows_logged_after_the_checkpoint(tmp_path):
    # CSVLogger's rows (\r\n) of a run killed after epoch 2's row (epoch 1, 0-based) but before its checkpoint,
    # and a row cut by a kill mid-write: resuming from epoch 1 keeps epoch 0 only (tests/test_robustness.py
    # kills a real run at that moment).
    path = tmp_path / "history.csv"
    path.write_bytes(b"epoch,loss\r\n0,2.5\r\n1,2.0\r\n1,1.9\r\n2,1.")
    trim_history(path, 1)
    assert path.read_bytes() == b"epoch,loss\r\n0,2.5\r\n"
    trim_history(path, 3)  # nothing beyond the checkpoint: unchanged
    assert path.read_bytes() == b"epoch,loss\r\n0,2.5\r\n"
    trim_history(tmp_path / "none.csv", 1)  # no history yet
    assert not (tmp_path / "none.csv").exists()


def test_records_written_atomically_get_the_usual_file_mode(tmp_path):
    import os
    import stat

    from mtl_keras import atomic

    old = os.umask(0o022)
    try:
        atomic.write_json(tmp_path / "state.json", {"epoch": 1})  # mkstemp alone gives 0600
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "state.json").stat().st_mode) == 0o644


def test_checkpoint_on_a_full_disk_leaves_no_half_written_file(tmp_path):
    class FullDisk:
        def save_weights(self, path):
            with open(path, "wb") as f:
                f.write(b"\x89HDF half")
            raise OSError(28, "No space left on device", str(path))

    checkpoint = Checkpoint(tmp_path, CONFIG)
    checkpoint.set_model(FullDisk())
    with pytest.raises(OSError, match="No space left"):  # train turns it into one line (disk_full_is_one_line)
        checkpoint.on_epoch_end(0, {"loss": 1.0})
    assert list(tmp_path.iterdir()) == []
