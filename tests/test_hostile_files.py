"""What a hostile workdir, export folder or data set must not make a run do: rewrite a resumed run's records
when the rerun is refused, name classes with another model's names, write through a planted symbolic link,
open a FIFO or a device as an image, train a coarse class the hierarchy heads cannot predict, or let a hard link
put one image in two places. Unit-level: nothing trains."""

import hashlib
import json
import os
import sys

import numpy as np
import pytest

from conftest import REPO, require
from mtl_keras import config as config_lib
from mtl_keras import flags as mtl_flags
from mtl_keras.errors import DatasetError, ExportError, RunError

PIL = require("PIL.Image")
FT = [f"--flagfile={REPO}/mtl_keras/configs/quickstart.flags", "--variant=Pico/4", "--epochs=1", "--batch_size=4",
      "--dataset=folder", "--noexport", "--validation_fraction=0", "--folder_test_fraction=0.25"]


def png(path, value: int = 0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)
    return str(path)


def tree(root, classes=(("animal", "cat"), ("animal", "dog")), per_class: int = 8) -> None:
    for coarse, fine in classes:
        for i in range(per_class):
            png(root / coarse / fine / f"{i}.png", 30 * i)


def digests(folder) -> dict:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _run(args):
    from mtl_keras import train

    return train.run(mtl_flags.config_from_args(FT + args))


# Records: a refused rerun writes nothing.
def test_a_rerun_over_changed_classes_is_refused_and_keeps_the_records(tmp_path):
    data, workdir = tmp_path / "data", tmp_path / "run"
    tree(data)
    args = [f"--data_dir={data}", f"--workdir={workdir}"]
    config = mtl_flags.config_from_args(FT + args)
    (workdir / "checkpoints").mkdir(parents=True)  # what a finished first run leaves
    (workdir / "checkpoints" / "epoch-1.weights.h5").write_bytes(b"weights")
    (workdir / "checkpoints" / "state.json").write_text(json.dumps(
        {"epoch": 1, "weights": "epoch-1.weights.h5", "config": config_lib.identity(config, "checkpoint")}))
    for name in ("flags.txt", "config.json"):
        (workdir / name).write_text("first run\n")
    (workdir / "classes.json").write_text(json.dumps({"fine": ["cat", "dog"], "coarse": ["animal"]}))
    before = digests(workdir)
    tree(data, (("animal", "cow"),))  # a class folder added in place
    with pytest.raises(RunError, match=r"^the data's fine classes changed since \S+/checkpoints was written \(3 now, "
                                       r"2 in classes.json\); use another --workdir"):
        _run(args)
    assert digests(workdir) == before


def test_mixup_on_partial_labels_is_refused_before_any_record(tmp_path):
    data, workdir = tmp_path / "data", tmp_path / "run"
    tree(data)
    for i in range(4):
        png(data / "animal" / f"coarse-only-{i}.png", i)
    with pytest.raises(Exception, match="mixup"):
        _run([f"--data_dir={data}", f"--workdir={workdir}", "--augment=mixup"])
    assert not {"flags.txt", "config.json", "classes.json"} & {p.name for p in workdir.iterdir()}


@pytest.mark.parametrize("head", ["marginal", "both"])
def test_a_coarse_only_class_under_the_hierarchy_heads_is_one_line(tmp_path, head):
    data, workdir = tmp_path / "data", tmp_path / "run"
    tree(data, (("animal", "cat"), ("animal", "dog"), ("vehicle", "car")))
    for i in range(8):
        png(data / "plant" / f"{i}.png", i)  # sorts between animal and vehicle: once 0 % with no warning
    with pytest.raises(RunError) as error:
        _run([f"--data_dir={data}", f"--workdir={workdir}", f"--coarse_head={head}"])
    assert str(error.value) == (f"coarse class 'plant' has no fine class (its images carry the coarse label only), "
                                f"so --coarse_head={head} can never predict it; use --coarse_head=learned")
    assert not workdir.exists()


def test_predict_refuses_class_names_of_another_model(tmp_path, monkeypatch, capsys):
    import keras

    from mtl_keras.serving import predict

    inputs = keras.Input((8, 8, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    model = keras.Model(inputs, {"fine": keras.layers.Dense(2, activation="softmax", name="fine")(pooled),
                                 "coarse": keras.layers.Dense(1, activation="softmax", name="coarse")(pooled)})
    model.save(tmp_path / "model.keras")
    image = png(tmp_path / "x.png")
    for fine in (["cat", "dog", "cow"], ["cat"]):  # more names than outputs mislabels; fewer was an IndexError
        (tmp_path / "classes.json").write_text(json.dumps({"fine": fine, "coarse": ["animal"]}))
        monkeypatch.setattr(sys, "argv", ["predict", f"--model={tmp_path / 'model.keras'}", image])
        assert predict.main() == 1
        out, err = capsys.readouterr()
        assert out == "" and err == (f"predict: error: {tmp_path / 'classes.json'} names {len(fine)} fine classes "
                                     f"for the model's 2 fine outputs, so they are not this model's names; use the "
                                     f"classes of the run that trained it\n")


# Links: nothing is written through a link planted in the workdir or the export folder.
@pytest.mark.parametrize("name", ["history.csv", ".lock", "checkpoints", "tensorboard"])
def test_a_link_planted_in_the_workdir_is_refused_and_its_target_untouched(tmp_path, name):
    data, workdir, victim = tmp_path / "data", tmp_path / "run", tmp_path / "victim.txt"
    tree(data)
    victim.write_text("precious\n")
    workdir.mkdir()
    (workdir / name).symlink_to(victim)
    with pytest.raises(RunError, match=rf"^{workdir / name} is a symbolic link \(to {victim}\); --workdir=\S+ is "
                                       r"written in place, never through a link: remove the link$"):
        _run([f"--data_dir={data}", f"--workdir={workdir}"])
    assert victim.read_text() == "precious\n" and sorted(p.name for p in workdir.iterdir()) == [name]


def test_lock_files_are_never_opened_through_a_link(tmp_path):
    from mtl_keras import locks

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    for folder, lock in ((tmp_path / "w", locks.workdir_lock), (tmp_path / "export" / "m", locks.folder_lock)):
        folder.mkdir(parents=True)
        (folder / ".lock").symlink_to(victim)
        with pytest.raises(RunError, match=rf"^{folder / '.lock'} is a symbolic link \(to {victim}\); a lock file "
                                           r"is never written through a link: remove it$"):
            with lock(folder, "--workdir=w") if lock is locks.workdir_lock else lock(folder):
                pass
    assert victim.read_text() == "precious\n"


# Special files: only regular files are images.
def test_predict_names_a_fifo_and_a_device_in_one_line_without_reading_them(tmp_path, monkeypatch, capsys):
    from mtl_keras.serving import predict, runtime

    class Classifier:
        shape, names, decoding = (8, 8, 3), {"fine": ["a", "b"]}, {}

        def __call__(self, images, batch_size=256):
            return {"fine": np.tile([[0.25, 0.75]], (len(images), 1))}

    monkeypatch.setattr(runtime, "load", lambda path: Classifier())
    fifo, zero, ok = tmp_path / "f.png", tmp_path / "z.png", png(tmp_path / "ok.png")
    os.mkfifo(fifo)
    zero.symlink_to("/dev/zero")
    monkeypatch.setattr(sys, "argv", ["predict", "--model=m", str(fifo), str(zero), str(tmp_path), ok])
    assert predict.main() == 1
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"predict: error: {fifo}: a FIFO, not an image file; it is not read",
                                f"predict: error: {zero}: a character device, not an image file; it is not read",
                                f"predict: error: {tmp_path}: a folder, not an image file; it is not read"]
    assert out.strip() == f"{ok}: fine=b (75.0%)"


def test_a_csv_row_naming_a_fifo_is_skipped_and_reported(tmp_path, caplog):
    import logging

    from mtl_keras.data import datasets

    rows = ["path,fine,coarse"]
    for fine in ("cat", "dog"):
        for i in range(4):
            rows.append(f"{png(tmp_path / fine / f'{i}.png', 40 * i)},{fine},animal")
    os.mkfifo(tmp_path / "cat" / "fifo.png")
    rows.append(f"{tmp_path / 'cat' / 'fifo.png'},cat,animal")
    (tmp_path / "labels.csv").write_text("\n".join(r.replace(f"{tmp_path}/", "") for r in rows) + "\n")
    with caplog.at_level(logging.WARNING):
        s = datasets.load("csv", data_dir=str(tmp_path / "labels.csv"), validation_fraction=0, folder_test_fraction=0)
    assert len(s.train) == 8 and s.info.skipped_files == (str(tmp_path / "cat" / "fifo.png"),)
    assert "a FIFO, not an image file; it is not read" in caplog.text


# Hard links: a CSV's rows compared by inode, as the folder source does.
def test_csv_hard_links_are_the_same_image(tmp_path):
    from mtl_keras.data.sources.csv_labels import list_csv

    png(tmp_path / "cat" / "0.png")
    os.link(tmp_path / "cat" / "0.png", tmp_path / "dog.png")
    (tmp_path / "labels.csv").write_text("path,fine,coarse,split\ncat/0.png,cat,animal,train\n"
                                         "dog.png,dog,animal,train\n")
    with pytest.raises(DatasetError, match=r"labels.csv:3: 'dog.png' is the image of line 2 again with other "
                                           r"labels or split \(cat,animal,train there, dog,animal,train here\)"):
        list_csv(str(tmp_path / "labels.csv"))
    (tmp_path / "labels.csv").write_text("path,fine,coarse,split\ncat/0.png,cat,animal,train\n"
                                         "dog.png,cat,animal,test\n")
    with pytest.raises(DatasetError, match=r"'dog.png' is the image of line 2 again with other labels or split"):
        list_csv(str(tmp_path / "labels.csv"))


def test_runtime_checks_the_names_of_an_onnx_file_and_a_saved_model_too():
    from mtl_keras.serving.runtime import _checked

    assert _checked({"fine": ["a", "b"]}, {"fine": 2, "coarse": 3}, "x") == {"fine": ["a", "b"]}
    with pytest.raises(ExportError, match=r"^x names 1 coarse classes for the model's 3 coarse outputs"):
        _checked({"coarse": ["a"]}, {"fine": 2, "coarse": 3}, "x")


def test_a_nul_byte_in_a_csv_is_one_line(tmp_path):
    from mtl_keras.data.sources.csv_labels import list_csv

    png(tmp_path / "a.png")
    (tmp_path / "labels.csv").write_text("path,fine,coarse\na.png,c\0t,animal\n")
    with pytest.raises(DatasetError, match=r"labels.csv:2: a NUL byte; is it a label file\?"):
        list_csv(str(tmp_path / "labels.csv"))
