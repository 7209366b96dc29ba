"""Run reports: learning curves, confusion matrices, per-class accuracy, TensorBoard scalars."""

import json

import keras
import numpy as np
import pytest

from mtl_keras import callbacks, evaluate, reports
from mtl_keras.data import pipeline, types

PNG = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    raw = open(path, "rb").read(24)
    assert raw[:8] == PNG
    return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")


def write_history(path, rows: list[dict]) -> None:
    keys = list(rows[0])
    path.write_text(",".join(keys) + "\n" + "".join(",".join(str(r[k]) for k in keys) + "\n" for r in rows))


def test_learning_curves_two_heads_and_resumed_epochs(tmp_path):
    rows = [{"epoch": e, **{f"{s}{h}_{m}": 1.0 / (e + 1) if m == "loss" else e / 4 for s in ("", "val_")
                            for h in ("fine", "coarse") for m in ("loss", "accuracy")}, "loss": 1.0} for e in range(4)]
    write_history(tmp_path / "history.csv", rows[:3] + rows[2:])  # a resumed run repeats epoch 2
    history = reports.read_history(tmp_path / "history.csv")
    assert history["epoch"].tolist() == [0, 1, 2, 3]
    width, height = png_size(reports.learning_curves_png(tmp_path / "history.csv", tmp_path / "c.png", "run"))
    assert width == 900 and height == 600  # one row of loss + accuracy panels per head


def test_learning_curves_single_head(tmp_path):
    write_history(tmp_path / "h.csv", [{"epoch": e, "accuracy": e / 2, "loss": 1 - e / 2} for e in range(2)])
    assert png_size(reports.learning_curves_png(tmp_path / "h.csv", tmp_path / "c.png"))[1] == 300
    write_history(tmp_path / "empty.csv", [{"epoch": "", "loss": ""}])
    with pytest.raises(ValueError, match="no epochs"):
        reports.learning_curves_png(tmp_path / "empty.csv", tmp_path / "e.png")


def test_history_without_validation_reads_and_plots(tmp_path):
    # What CSVLogger writes for --validation_fraction=0: val_* columns of NA.
    (tmp_path / "h.csv").write_text("epoch,fine_loss,loss,val_fine_loss,val_loss\n0,2.5,2.4,NA,NA\n1,2.1,2.0,NA,NA\n")
    history = reports.read_history(tmp_path / "h.csv")
    assert sorted(history) == ["epoch", "fine_loss", "loss"] and history["loss"].tolist() == [2.4, 2.0]
    assert png_size(reports.learning_curves_png(tmp_path / "h.csv", tmp_path / "c.png"))[1] == 300


def test_confusions_and_per_class_accuracy():
    names = ["cat", "dog", "car", "bus"]
    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 0, 2, 2, 3, 2])
    m = evaluate.confusion_matrix(y_true, y_pred, 4)
    assert m.sum() == 9 and m[0, 1] == 2 and np.trace(m) == 5
    table = evaluate.per_class_accuracy(y_true, y_pred, names)
    assert table["cat"] == {"accuracy": pytest.approx(1 / 3), "examples": 3}
    assert table["car"]["accuracy"] == 0.75 and table["bus"] == {"accuracy": None, "examples": 0}
    json.dumps(table)  # goes into metrics.json as is
    top = evaluate.top_confusions(y_true, y_pred, names, k=2)
    assert top[0] == {"true": "cat", "predicted": "dog", "count": 2, "share": pytest.approx(2 / 3)}
    assert len(top) == 2 and top[1]["count"] == 1


def test_confusion_matrix_png_small_and_hundred_classes(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    small = png_size(reports.confusion_matrix_png(y, y, ["a", "b", "c"], tmp_path / "small.png", "coarse"))
    y = rng.integers(0, 100, 5000)
    noisy = np.where(rng.random(5000) < 0.3, rng.integers(0, 100, 5000), y)
    names = [f"class_{i:03d}" for i in range(100)]
    big = png_size(reports.confusion_matrix_png(y, noisy, names, tmp_path / "big.png", "fine"))
    assert small[0] < 800 and big[0] >= 1800 and big[1] >= 1400  # 100 names get room (and a confusion list)


def tiny_model() -> keras.Model:
    x = keras.Input((8, 8, 3), name="image")
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(x))
    out = {"fine": keras.layers.Dense(10, activation="softmax", name="fine")(h),
           "coarse": keras.layers.Dense(3, activation="softmax", name="coarse")(h)}
    model = keras.Model(x, out)
    model.compile("adam", loss={"fine": "categorical_crossentropy", "coarse": "categorical_crossentropy"},
                  metrics={"fine": ["accuracy"], "coarse": ["accuracy"]})
    return model


@pytest.fixture(scope="module")
def small_splits(shapes_splits):
    s = shapes_splits
    shrink = lambda split: types.Split(split.images[:64, ::4, ::4], split.fine[:64], split.coarse[:64])  # noqa: E731
    info = types.DatasetInfo("shapes", s.info.fine_names, s.info.coarse_names, s.info.fine_to_coarse,
                            skipped_files=("/data/x/broken.png",))
    return types.Splits(info, shrink(s.train), shrink(s.val), shrink(s.test))


@pytest.mark.slow
def test_tensorboard_scalars_per_head_and_learning_rate(tmp_path, small_splits):
    model, s = tiny_model(), small_splits
    history = model.fit(pipeline.pipeline(s.train, s.info, batch_size=16), epochs=2, verbose=0,
                        validation_data=pipeline.pipeline(s.val, s.info, batch_size=16),
                        callbacks=[callbacks.TensorBoardScalars(tmp_path / "tb")])
    scalars = callbacks.read_scalars(tmp_path / "tb")
    for split in ("train", "validation"):
        assert {"epoch_fine_loss", "epoch_fine_accuracy", "epoch_coarse_accuracy"} <= set(scalars[split])
    assert scalars["train"]["epoch_learning_rate"] == pytest.approx([1e-3, 1e-3])
    np.testing.assert_allclose(scalars["validation"]["epoch_fine_accuracy"],
                               history.history["val_fine_accuracy"], rtol=1e-6)


def test_write_run_reports(tmp_path, small_splits, capsys):
    write_history(tmp_path / "history.csv", [{"epoch": 0, "fine_loss": 2.0, "coarse_loss": 1.0}])
    truth, probs = evaluate.predict_split(tiny_model(), small_splits.test, small_splits.info, batch_size=32)
    metrics = evaluate.test_metrics(truth, probs, small_splits.info)
    reports.write_run_reports(truth, {h: p.argmax(-1) for h, p in probs.items()}, small_splits.info, tmp_path)
    assert set(metrics["accuracy_per_class"]) == {"fine", "coarse"}
    assert set(metrics["accuracy_per_class"]["fine"]) == set(small_splits.info.fine_names)
    assert sum(r["examples"] for r in metrics["accuracy_per_class"]["coarse"].values()) == 64
    assert metrics["skipped_files"] == 1 and (tmp_path / "skipped_files.txt").read_text() == "/data/x/broken.png\n"
    for name in ("learning_curves.png", "confusion_fine.png", "confusion_coarse.png"):
        png_size(tmp_path / name)
    assert "skipped 1 image files" in capsys.readouterr().out
    json.dumps(metrics)


def test_each_pass_predicts_at_one_batch_shape_and_padding_changes_no_images_outputs(small_splits, monkeypatch):
    """The test pass and a model in memory behind runtime.load run a smaller last batch padded to the others'
    size, so the predict step is traced (and compiled by XLA or JAX) once per pass; each image's outputs are
    what the model gives it in any batch."""
    from mtl_keras.serving import runtime

    model, test = tiny_model(), small_splits.test  # 64 images
    alone = model.predict_on_batch(test.images)
    rows, predict = [], model.predict_on_batch
    monkeypatch.setattr(model, "predict_on_batch", lambda x: rows.append(len(x)) or predict(x))
    truth, probs = evaluate.predict_split(model, test, small_splits.info, batch_size=48)
    assert rows == [48, 48] and len(truth["fine"]) == 64
    for head in ("fine", "coarse"):
        np.testing.assert_allclose(probs[head], alone[head], atol=1e-6)
    rows.clear()
    out = runtime.load(model)(np.concatenate([test.images] * 5))  # 320 images: 256 + 64
    assert rows == [runtime.BATCH, runtime.BATCH] and len(out["fine"]) == 320
    np.testing.assert_allclose(out["coarse"][256:], alone["coarse"], atol=1e-6)


@pytest.mark.slow
def test_every_training_run_leaves_its_reports(trained_run):
    """The CLI run shared by the export tests: TensorBoard events, PNGs and per-class accuracy in its workdir."""
    work = trained_run.work
    for name in ("learning_curves.png", "confusion_fine.png", "confusion_coarse.png"):
        png_size(work / name)
    scalars = callbacks.read_scalars(work / "tensorboard")
    assert {"epoch_fine_accuracy", "epoch_coarse_loss", "epoch_learning_rate"} <= set(scalars["train"])
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["accuracy_per_class"]["fine"]["disk"]["examples"] > 0 and metrics["skipped_files"] == 0
    assert (work / "history.csv").is_file()


@pytest.mark.parametrize("classes", [3, 31])  # every cell annotated / the top-confusions panel
def test_class_names_that_look_like_mathtext_are_drawn_as_they_are(tmp_path, classes, monkeypatch):
    # A class folder named `$x^$` crashed savefig (mathtext ParseException) after training.
    from matplotlib.figure import Figure

    drawn, savefig = [], Figure.savefig

    def saving(fig, *args, **kwargs):  # every text of each saved figure, with whether mathtext parses it
        savefig(fig, *args, **kwargs)
        drawn.append({t.get_text(): t.get_parse_math() for t in fig.findobj(lambda o: hasattr(o, "get_parse_math"))
                      if t.get_text()})
    monkeypatch.setattr(Figure, "savefig", saving)
    names = ["$x^$", "a$b", "$\\frac{$"] + [f"c{i}" for i in range(classes - 3)]
    y = np.arange(classes)
    out = reports.confusion_matrix_png(y, np.roll(y, 1), names, tmp_path / "c.png", title="$^$ head")
    assert png_size(out)[0] > 0
    write_history(tmp_path / "h.csv", [{"epoch": e, "accuracy": e / 2, "loss": 1 - e / 2} for e in range(2)])
    assert png_size(reports.learning_curves_png(tmp_path / "h.csv", tmp_path / "l.png", "$run^$"))[0] > 0
    confusion, curves = drawn
    for name in names[:3]:  # the literal text, never handed to mathtext
        assert confusion.get(name) is False, (name, confusion)
    assert any("$^$ head" in text and not math for text, math in confusion.items())
    assert any("$run^$" in text and not math for text, math in curves.items()), curves
