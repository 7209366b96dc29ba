"""Checkpoint (atomic save, resume, clear errors) and NaN guard, on a tiny Keras model."""

import json

import keras
import numpy as np
import pytest

from mtl_keras import config
from mtl_keras.callbacks import Checkpoint, CheckpointError, NanGuard, trim_history

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


def test_checkpoint_of_other_flags_is_refused(tmp_path):
    _model().fit(*_data(), epochs=1, verbose=0, callbacks=[Checkpoint(tmp_path, CONFIG)])
    with pytest.raises(CheckpointError, match=r"run with other flags \(epochs, learning_rate\)"):
        Checkpoint(tmp_path, _identity(epochs=5, learning_rate=0.1)).restore(_model())


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


def test_checkpoint_of_the_previous_version_still_resumes(tmp_path):
    # state.json of main at f49e8fa stored every setting but its _NOT_TRAINING list, flat: the same keys.
    old_not_training = {"workdir", "export_dir", "model_name", "export", "int8", "check", "download", "data_dir",
                        "fashion_mnist_dir", "jit_compile"}
    flat = config.flat(config.make())
    added_since = {"atol", "int8_max_drop", "tta_flip", "top_k", "onnx_converter", "max_image_pixels",
                   "csv_allow_outside_paths", "input_pipeline"}  # none identifies a checkpoint
    old = {k: v for k, v in flat.items() if k not in old_not_training | added_since}
    assert old == config.identity(config.make(), "checkpoint")


def test_config_json_of_the_previous_version_reads_and_a_foreign_one_is_one_line(tmp_path):
    from mtl_keras.errors import ConfigError

    # config.json at f49e8fa: the same flat keys, without the settings added since (atol, int8_max_drop, tta_flip;
    # top_k and onnx_converter of issue 14).
    old = {k: v for k, v in config.flat(config.make(epochs=3, variant="Pico/4")).items()
           if k not in ("atol", "int8_max_drop", "tta_flip", "top_k", "onnx_converter")}
    (tmp_path / "config.json").write_text(json.dumps(old))
    read = config.read_json(tmp_path / "config.json")
    assert (read.optim.epochs, read.model.variant, read.serving.atol) == (3, "Pico/4", 1e-5)
    assert (read.serving.top_k, read.serving.onnx_converter) == (5, "tf2onnx")
    (tmp_path / "config.json").write_text(json.dumps({**old, "warp_drive": 9}))
    with pytest.raises(ConfigError, match=r"holds settings this version does not know \(warp_drive\)") as err:
        config.read_json(tmp_path / "config.json")
    assert "\n" not in str(err.value)


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
