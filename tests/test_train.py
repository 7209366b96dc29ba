"""The training CLI end to end, and its one-line errors."""

import dataclasses
import json
import shutil
import subprocess
import sys
import time

import pytest

from conftest import REPO, TINY_FLAGS, parsed_in_process, refused_in_process, run_module, subprocess_env


@pytest.mark.slow
def test_quick_start_run_learns_far_above_chance(trained_run):
    metrics = json.loads((trained_run.work / "metrics.json").read_text())
    # Chance: 10 % fine, 40 % coarse (majority family). Measured: 93.65 % / 94.65 % (README, deterministic on this
    # CPU); the bounds leave room for another CPU's float order, and a run that learns half as well fails.
    assert metrics["fine_accuracy"] > 0.90 and metrics["coarse_accuracy"] > 0.90, metrics
    # Consistency and accuracy recomputed from the saved test predictions (shapes.FINE_TO_COARSE).
    import numpy as np

    from mtl_keras.data.sources.shapes import FINE_TO_COARSE

    saved = np.load(trained_run.work / "test_predictions.npz")
    assert len(saved["fine"]) == metrics["test_examples"] == 2000
    family = np.asarray(FINE_TO_COARSE)[saved["fine"]]
    assert metrics["hierarchy_consistency"] == pytest.approx(np.mean(family == saved["coarse"]))
    assert metrics["fine_accuracy"] == pytest.approx(np.mean(saved["fine"] == saved["true_fine"]))
    # Every training image labelled at both levels: train_labelled counts them (README, metrics.json); the
    # first line of the run names the training split's size.
    trained = int(trained_run.proc.stdout.split("shapes: ", 1)[1].split(" train", 1)[0])
    assert metrics["train_labelled"] == {"fine": trained, "coarse": trained} and trained > 10_000, metrics
    assert metrics["onnx_parity_ok"] is True
    assert metrics["onnx_parity"]["fine"]["argmax_agreement"] == 1.0
    assert "Test: fine_accuracy" in trained_run.proc.stdout and "export/quickstart/1" in trained_run.proc.stdout


@pytest.mark.slow
def test_resolved_flags_reproduce_the_run(trained_run):
    work = trained_run.work
    text = (work / "flags.txt").read_text()
    assert "--variant=Mu/4" in text and "--epochs=8" in text and "--seed=0" in text
    assert (work / "model.keras").is_file() and (work / "history.csv").is_file()


@pytest.mark.parametrize("flag,expected", [
    ("--gamma=1.5", "--gamma"),
    ("--dataset=mnist", "--dataset"),
    ("--task=both", "--task"),
    ("--epochs=0", "--epochs"),
    ("--variant=Huge/4", "unknown ViT variant 'Huge/4'"),
    ("--batch_size=0", "--batch_size"),
    ("--flagfile=configs/no_such.flags", "no_such.flags"),
    ("--mixed_precision=int8", "--mixed_precision"),
    ("--distribution=tpu", "--distribution"),
    ("--validation_fraction=nan", "--validation_fraction"),
])
def test_bad_flags_fail_before_anything_is_written(tmp_path, flag, expected, capsys):
    # train's own parser in-process (the CLI end to end: tests/test_flag_errors.py): it exits before run().
    status, lines = parsed_in_process("train", [flag, f"--workdir={tmp_path / 'w'}",
                                                f"--export_dir={tmp_path / 'e'}"], capsys)
    assert status == 2 and len(lines) == 1 and lines[0].startswith("train: error: ") and expected in lines[0], lines
    assert not (tmp_path / "w").exists() and not (tmp_path / "e").exists()


# A machine without network, for one subprocess: DNS fails and no socket connects (tfds's own download too).
OFFLINE = """
import errno, socket

def _no_dns(*args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (offline test)")

def _no_route(*args, **kwargs):
    raise OSError(errno.ENETUNREACH, "Network is unreachable (offline test)")

socket.getaddrinfo = _no_dns
socket.socket.connect = _no_route
"""


@pytest.mark.slow
def test_offline_cifar_download_fails_within_seconds_in_one_line(tmp_path):
    # The real path of a first run offline: not prepared, --download on (the default), no network.
    (tmp_path / "offline").mkdir()
    (tmp_path / "offline" / "sitecustomize.py").write_text(OFFLINE)
    env = subprocess_env(PYTHONPATH=f"{tmp_path / 'offline'}:{REPO}")
    start = time.time()
    proc = run_module("mtl_keras.train", "--config=mtl_vit_c10", f"--data_dir={tmp_path / 'tfds'}",
                      f"--workdir={tmp_path / 'w'}", env=env, timeout=90)  # tfds alone retries for minutes
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert _last_line(proc).startswith(f"train: error: dataset cifar10 not found in --data_dir={tmp_path / 'tfds'} "
                                       "and www.cs.toronto.edu is unreachable ("), _last_line(proc)
    assert "tfds build cifar10" in _last_line(proc)
    assert time.time() - start < 60 and not (tmp_path / "w").exists()


def _last_line(proc) -> str:
    return proc.stderr.strip().splitlines()[-1]


def test_workdir_under_a_file_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert refused_in_process([*TINY_FLAGS, f"--workdir={blocker / 'sub'}"]) == (
        f"train: error: --workdir={blocker / 'sub'} cannot be used: {blocker} is not a folder")


def test_export_dir_under_a_file_fails_before_anything_is_written(tmp_path):
    from mtl_keras import config, train

    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg = config.make(workdir=str(tmp_path / "w"), export_dir=str(blocker / "e"), variant="Pico/4", epochs=1,
                      batch_size=32, max_train_examples=64)  # small, should the check ever let it train
    with pytest.raises(train.RunError,
                       match=f"^--export_dir={blocker / 'e'} cannot be used: {blocker} is not a folder$"):
        train.run(cfg)  # it used to fail after training, with a traceback and no metrics.json
    assert not (tmp_path / "w").exists()
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "m").write_text("")  # the model's folder under a good --export_dir
    cfg = dataclasses.replace(cfg, serving=dataclasses.replace(cfg.serving, export_dir=str(tmp_path / "e"),
                                                               model_name="m"))
    with pytest.raises(train.RunError,
                       match=f"^--model_name=m cannot be used: {tmp_path / 'e' / 'm'} is not a folder$"):
        train.run(cfg)
    assert not (tmp_path / "w").exists()


def test_read_only_workdir_is_named(tmp_path, monkeypatch):
    import os

    from mtl_keras import train

    # As root every folder is writable, so stand in for a read-only mount by denying access.
    monkeypatch.setattr(os, "access", lambda path, mode: os.fspath(path) != str(tmp_path))
    with pytest.raises(train.RunError, match=f"--workdir={tmp_path / 'w'} cannot be used: {tmp_path} is not writable"):
        train.check_workdir(str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("flags,expected", [
    (["--task=fine", "--loss_weighting=dwa"], "train: error: --loss_weighting"),
    # Keras 3 cannot run TensorFlow's multi-worker strategy: refused, pointing to the JAX route.
    (["--distribution=multi_worker"], "train: error: --distribution=multi_worker runs on the JAX backend only"),
    (["--batch_size=4096", "--max_train_examples=100"],
     "train: error: --batch_size=4096 exceeds the 100 training examples"),
])
def test_conflicting_flags_are_refused_in_process_before_anything_is_written(tmp_path, flags, expected, capsys):
    # The parse, then the checks train.run makes before it writes anything (the CLI end to end: below, slow).
    args = ["--variant=Pico/4", *flags, f"--workdir={tmp_path / 'w'}", f"--export_dir={tmp_path / 'e'}"]
    status, lines = parsed_in_process("train", args, capsys) if flags[0] == "--task=fine" else (1, [
        refused_in_process(args)])
    assert status in (1, 2) and len(lines) == 1 and lines[0].startswith(expected), lines
    assert not (tmp_path / "w").exists() and not (tmp_path / "e").exists()


# train's command line in a fresh Python, then the line "FROZEN <objects in the collector's permanent generation>
# <whether the collector is on>".
TRAIN_THEN_FROZEN = """
import gc, runpy, sys
sys.argv = ["train", *sys.argv[1:]]
try:
    runpy.run_module("mtl_keras.train", run_name="__main__")
finally:
    print("FROZEN", gc.get_freeze_count(), gc.isenabled())
"""


@pytest.mark.slow
def test_conflicting_flags_fail_before_anything_is_written_once_the_imports_are_frozen(tmp_path):
    # --cpu_devices sets up TensorFlow's devices, which only a fresh process can: end to end. GPUs hidden: mirrored
    # prefers them, and on a one-GPU machine --cpu_devices=2 would give one replica.
    args = ["--variant=Pico/4", "--cpu_devices=2", "--distribution=mirrored", "--batch_size=63",
            f"--workdir={tmp_path / 'w'}", f"--export_dir={tmp_path / 'e'}"]
    proc = subprocess.run([sys.executable, "-c", TRAIN_THEN_FROZEN, *args], cwd=REPO, capture_output=True,
                          text=True, env=subprocess_env(CUDA_VISIBLE_DEVICES=""), timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--batch_size=63 does not divide by the 2 replicas of --distribution=mirrored" in proc.stderr, \
        proc.stderr[-2000:]
    assert not (tmp_path / "w").exists() and not (tmp_path / "e").exists()
    # The command imported its frameworks, then froze them before the run (train.freeze_imported), and collects.
    label, frozen, collecting = proc.stdout.split()[-3:]
    assert label == "FROZEN" and int(frozen) > 100_000 and collecting == "True", proc.stdout[-500:]


QUICK = ["--config=quickstart", "--variant=Pico/4", "--epochs=1", "--max_train_examples=256",
         "--noexport", "--nojit_compile"]  # what these tests check comes after fit; XLA compiling takes longer


@pytest.mark.slow
def test_refused_rerun_leaves_the_records_alone(trained_run, tmp_path):
    # A copy of the shared quick-start run (tests only read the shared one), rerun with another learning rate.
    work = shutil.copytree(trained_run.work, tmp_path / "w")
    records = {name: (work / name).read_bytes() for name in ("flags.txt", "config.json", "classes.json")}
    assert json.loads(records["config.json"])["learning_rate"] != 0.01
    line = refused_in_process(["--config=quickstart", "--learning_rate=0.01", f"--workdir={work}"])
    assert line.startswith("train: error: ") and "other flags (learning_rate)" in line, line
    assert {name: (work / name).read_bytes() for name in records} == records  # flags.txt still reproduces the run


@pytest.mark.slow
def test_a_held_workdir_is_refused_naming_its_holder(tmp_path):
    import os
    import socket

    from mtl_keras.locks import workdir_lock

    work = tmp_path / "w"
    work.mkdir()
    with workdir_lock(work, "--workdir=held"):  # stands in for a training running on `work`
        proc = run_module("mtl_keras.train", *QUICK, f"--workdir={work}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    line = _last_line(proc)
    assert line.startswith(f"train: error: --workdir={work} is in use by pid {os.getpid()} on {socket.gethostname()} "
                           "(started "), line
    assert line.endswith("; wait for it or use another --workdir")
    assert sorted(p.name for p in work.iterdir()) == [".lock"]  # nothing of the refused run
    with workdir_lock(work, "--workdir=again"):  # released when its holder let go
        pass


def test_evaluate_top5_and_hierarchy_consistency():
    import numpy as np

    from mtl_keras import evaluate
    from mtl_keras.data import types

    info = types.DatasetInfo("toy", tuple(f"f{i}" for i in range(100)), tuple(f"c{i}" for i in range(20)),
                            tuple(i // 5 for i in range(100)))
    fine = np.array([0, 7, 42, 99])
    test = types.Split(np.zeros((4, 8, 8, 3), np.uint8), fine, fine // 5)
    p_fine = np.zeros((4, 100), np.float32)
    p_fine[[0, 1, 2, 3], [0, 8, 41, 3]] = 1.0  # top-1 right only for the first image
    p_fine[1, 7] = p_fine[2, 42] = 0.5  # second choice right for images 2 and 3
    p_coarse = np.zeros((4, 20), np.float32)
    p_coarse[[0, 1, 2, 3], [0, 1, 8, 19]] = 1.0  # all right; predicted fine 3 -> coarse 0 disagrees with 19

    m = evaluate.accuracy_metrics({"fine": test.fine, "coarse": test.coarse},
                                  {"fine": p_fine, "coarse": p_coarse}, info)
    assert m["fine_accuracy"] == 0.25 and m["fine_top5_accuracy"] == 0.75 and m["coarse_accuracy"] == 1.0
    assert "coarse_top5_accuracy" not in m and m["hierarchy_consistency"] == 0.75


def _tiny_splits(test_images: int):
    """shapes-like random splits: 64 training, 8 validation and `test_images` test images of 16x16."""
    import numpy as np

    from mtl_keras.data import types

    rng = np.random.default_rng(0)
    info = types.DatasetInfo("shapes", ("a", "b", "c", "d"), ("x", "y"), (0, 0, 1, 1))

    def split(n):
        fine = rng.integers(0, 4, n).astype(np.int32)
        return types.Split(rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8), fine, (fine // 2).astype(np.int32))

    return types.Splits(info, split(64), split(8), split(test_images))


TINY_CONFIG = dict(variant="Pico/4", epochs=1, batch_size=32, export=False, jit_compile=False)


def test_empty_test_split_is_refused_before_training(tmp_path, monkeypatch):
    from mtl_keras import config, train

    # A folder of 1,000 classes x 1 image carves no test image: the test pass ended in StopIteration after
    # training, and the model was lost.
    monkeypatch.setattr(train.datasets, "prepare", lambda data, seed: _tiny_splits(0))
    with pytest.raises(train.RunError, match=r"^--dataset=shapes has no test images \(64 train / 8 validation\): "):
        train.run(config.make(workdir=str(tmp_path / "w"), **TINY_CONFIG))
    assert not (tmp_path / "w").exists()


def test_model_is_saved_before_anything_after_fit_can_fail(tmp_path, monkeypatch):
    from mtl_keras import config, evaluate, train

    monkeypatch.setattr(train.datasets, "prepare", lambda data, seed: _tiny_splits(8))
    monkeypatch.setattr(train, "_fit", lambda *args: (0.0, 0, {}))  # stands in for a finished training

    def test_pass_fails(*args, **kwargs):
        raise RuntimeError("stands in for any failure after fit (a plot, a metric, the export)")

    monkeypatch.setattr(evaluate, "predict_split", test_pass_fails)
    with pytest.raises(RuntimeError, match="stands in"):
        train.run(config.make(workdir=str(tmp_path / "w"), **TINY_CONFIG))
    assert (tmp_path / "w" / "model.keras").is_file()


class _FullDiskModel:
    def save(self, path):
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device", str(path))


def test_full_disk_saving_the_model_is_one_line_and_leaves_no_temporary_file(tmp_path):
    from mtl_keras import train

    with pytest.raises(train.RunError, match=rf"^{tmp_path / 'model.keras'} could not be written \(No space left on "
                                             r"device\); the trained weights are in the last checkpoint: "):
        train.save_model(_FullDiskModel(), tmp_path / "model.keras")
    assert list(tmp_path.iterdir()) == []  # no .model.tmp.keras


@pytest.mark.parametrize("error", [
    OSError(28, "No space left on device", "w/checkpoints/state.json"),
    OSError("Unable to synchronously create file (file write failed: errno = 28, error message = 'No space left "
            "on device')"),  # what h5py raises, without an errno
])
def test_full_disk_during_training_is_one_line(tmp_path, error):
    from mtl_keras import train

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "state.json").write_text("{}")  # without one, the line says the run starts over
    with pytest.raises(train.RunError, match=r"^no space left on the device writing .*; free some space and rerun the "
                                             "same command: it resumes from the last finished epoch$"):
        with train.disk_full_is_one_line(tmp_path):
            raise error
    with pytest.raises(PermissionError):  # any other OSError is not a full disk
        with train.disk_full_is_one_line(tmp_path):
            raise PermissionError(13, "Permission denied")


def test_dangling_symlink_workdir_is_one_line(tmp_path):
    from mtl_keras import train

    (tmp_path / "link").symlink_to(tmp_path / "gone")  # mkdir(exist_ok=True) raised FileExistsError on it
    for workdir in (tmp_path / "link", tmp_path / "link" / "run"):
        with pytest.raises(train.RunError, match=f"^--workdir={workdir} cannot be used: {tmp_path / 'link'} is a "
                                                 f"symbolic link to {tmp_path / 'gone'}, which does not exist$"):
            train.check_workdir(str(workdir))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link"]
