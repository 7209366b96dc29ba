"""Records and folders of the wrong content, and interruptions: the experiments runner checks every finished
run's records before training and goes on past any failing run; an export stops short of a version TF Serving
cannot read and of a guard turned off in config.json; Ctrl-C is one line with status 130. Nothing trains."""

import json
import sys

import numpy as np
import pytest

from conftest import REPO

FLAGFILE = REPO / "mtl_keras/configs/fmnist_mtl.flags"
EXTRA = ["--dataset=shapes"]


def _no_training(monkeypatch, fail_on=()):
    from mtl_keras import train

    trained = []

    def run(config):
        trained.append(config.run.seed)
        if config.run.seed in fail_on:
            raise ValueError("a bug in one run")

    monkeypatch.setattr(train, "run", run)
    return trained


def _finished_run(tmp_path):
    """A finished run's records, every one well formed; returns (results dir, run dir)."""
    from mtl_keras import config as config_lib
    from mtl_keras import evaluate
    from mtl_keras.experiments import runner

    results = tmp_path / "results"
    [exp] = runner.plan([FLAGFILE], [0], results, EXTRA)
    run = exp.run_dir(0)
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(config_lib.flat(exp.configs[0])))
    (run / "classes.json").write_text(json.dumps({"fine": ["a", "b"], "coarse": ["c"], "fine_to_coarse": [0, 0]}))
    (run / "metrics.json").write_text(json.dumps({"fine_accuracy": 0.5, "coarse_accuracy": 1.0, "both_wrong": 0.0,
                                                  "hierarchy_consistency": 1.0}))
    (run / "history.csv").write_text("epoch,loss\n0,1.5\n")
    truth = {"fine": np.array([0, 1]), "coarse": np.array([0, 0])}
    np.savez(run / evaluate.PREDICTIONS_FILE, **truth, **{f"true_{h}": v for h, v in truth.items()})
    return results, run


@pytest.mark.parametrize("name,text,message", [
    ("metrics.json", "[]", "holds a JSON list, not an object of metrics"),
    ("metrics.json", '{"fine_accuracy": "91%"}', "has fine_accuracy = '91%', not a number"),
    ("history.csv", "epoch,loss\nnot,a\nhistory", r"cannot be read as a training history \(ValueError: .*\)"),
    ("classes.json", "[]", "does not hold the fine and coarse class names"),
    ("test_predictions.npz", None, r"holds fine ids outside 0..1, the run's 2 fine classes"),
])
def test_a_finished_run_with_records_of_the_wrong_content_stops_the_grid_before_training(
        tmp_path, monkeypatch, name, text, message):
    from mtl_keras.experiments import runner

    results, run = _finished_run(tmp_path)
    trained = _no_training(monkeypatch)
    runner.run_experiments([FLAGFILE], [0], results, EXTRA)  # well-formed records: the table is written
    assert trained == [] and (results / "results.md").is_file()
    if text is None:
        truth = {"fine": np.array([0, 1]), "coarse": np.array([0, 0])}
        np.savez(run / name, fine=np.array([0, 999]), coarse=truth["coarse"],
                 **{f"true_{h}": v for h, v in truth.items()})
    else:
        (run / name).write_text(text)
    with pytest.raises(runner.ExperimentError, match=f"^{run / name} {message}; delete {run} to train that run "
                                                     f"again$"):
        runner.run_experiments([FLAGFILE], [0, 1], results, EXTRA)
    assert trained == []  # seed 1 was not trained first


def test_any_failing_run_is_reported_and_the_grid_goes_on(tmp_path, monkeypatch):
    from mtl_keras.experiments import runner

    trained = _no_training(monkeypatch, fail_on={0})
    failures = runner.run_experiments([FLAGFILE], [0, 1], tmp_path / "results", EXTRA)
    assert trained == [0, 1] and failures == ["fmnist_mtl seed 0: ValueError: a bug in one run"]


def test_a_results_md_the_runner_did_not_write_is_kept(tmp_path, monkeypatch):
    from mtl_keras.experiments import runner

    trained = _no_training(monkeypatch)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "results.md").write_text("my notes\n")
    with pytest.raises(runner.ExperimentError, match=r"results.md was not written by the experiments runner; move "
                                                     r"it away or choose another --results_dir$"):
        runner.run_experiments([FLAGFILE], [0], tmp_path / "results", EXTRA)
    assert trained == [] and (tmp_path / "results" / "results.md").read_text() == "my notes\n"


def test_the_automatic_version_stops_at_int64(tmp_path):
    from mtl_keras.errors import ExportError
    from mtl_keras.serving import export

    model_dir = tmp_path / "m"
    (model_dir / str(2 ** 63 - 1)).mkdir(parents=True)
    with pytest.raises(ExportError, match=rf"^the next version under {model_dir} would be 9223372036854775808, "
                                          r"past 9223372036854775807 \(TF Serving reads versions as int64\)"):
        export._reserve(model_dir, None)
    assert sorted(p.name for p in model_dir.iterdir() if not p.name.startswith(".")) == [str(2 ** 63 - 1)]


def test_export_refuses_a_config_json_that_turns_the_pixel_guard_off(tmp_path):
    from mtl_keras import config as config_lib
    from mtl_keras import flags as mtl_flags
    from mtl_keras.errors import ExportError
    from mtl_keras.serving import runs

    values = config_lib.flat(mtl_flags.config_from_args(["--dataset=shapes"]))
    (tmp_path / "classes.json").write_text("{}")
    (tmp_path / "config.json").write_text(json.dumps({**values, "max_image_pixels": 10 ** 18}))
    with pytest.raises(ExportError, match=r"config.json has max_image_pixels 1000000000000000000, outside "
                                          r"1..1,000,000,000"):
        runs.read_run(tmp_path, need_model=False)


def test_ctrl_c_is_one_line_with_status_130(monkeypatch, capsys):
    from mtl_keras import train
    from mtl_keras.serving import predict, runtime

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    from mtl_keras import config as mtl_config
    from mtl_keras import flags as mtl_flags

    monkeypatch.setattr(train, "run", interrupt)
    monkeypatch.setattr(train, "freeze_imported", lambda: None)  # a process-wide step of the command line
    monkeypatch.setattr(mtl_flags, "to_config", lambda fv: mtl_config.make())
    with pytest.raises(SystemExit) as exit_:
        train.main(["train"])
    assert exit_.value.code == 130
    assert capsys.readouterr().err == ("\ntrain: error: interrupted (Ctrl-C); rerun the same command to resume from "
                                       "the last finished epoch\n")
    monkeypatch.setattr(runtime, "load", interrupt)
    monkeypatch.setattr(sys, "argv", ["predict", "--model=m", "x.png"])
    assert predict.main() == 130
    assert capsys.readouterr().err.strip() == "predict: error: interrupted (Ctrl-C); the images before it were " \
                                              "classified"


def test_a_full_disk_in_tensorflow_or_h5py_is_one_line_that_promises_no_missing_checkpoint(tmp_path):
    import tensorflow as tf

    from mtl_keras import train

    errors = [tf.errors.ResourceExhaustedError(None, None, "model.onnx; No space left on device"),
              RuntimeError("Can't write data (file write failed: errno = 28, error message = 'No space left on "
                           "device')")]
    for error in errors:
        with pytest.raises(train.DiskFull, match=rf"^no space left on the device writing {tmp_path}; free some space "
                                                 r"and rerun the same command: no epoch has a checkpoint yet, so it "
                                                 r"starts over$"):
            with train.disk_full_is_one_line(tmp_path):
                raise error
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "state.json").write_text("{}")
    with pytest.raises(train.DiskFull, match="it resumes from the last finished epoch$"):
        with train.disk_full_is_one_line(tmp_path):
            raise OSError(28, "No space left on device")
    with pytest.raises(ValueError):
        with train.disk_full_is_one_line(tmp_path):
            raise ValueError("another error passes through")


def test_a_link_planted_in_the_results_dir_stops_the_grid_before_training(tmp_path, monkeypatch):
    from mtl_keras.errors import RunError
    from mtl_keras.experiments import runner

    trained = _no_training(monkeypatch)
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"precious")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "mtl_vs_stl.png").symlink_to(victim)
    with pytest.raises(RunError, match=r"mtl_vs_stl.png is a symbolic link .*never through a link"):
        runner.run_experiments([FLAGFILE], [0], tmp_path / "results", EXTRA)
    assert trained == [] and victim.read_bytes() == b"precious"
