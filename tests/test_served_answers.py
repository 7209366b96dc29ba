"""The answer a user is served is the answer that was evaluated: one decoder for predict (SavedModel, ONNX,
.keras) and serving_bytes, the consistent pair of --coarse_head=marginal everywhere, the decoding metadata in
every export, and a class list that does not fit the model as one line."""

import json

import numpy as np
import pytest
from conftest import predict_in_process

pytestmark = pytest.mark.slow

FINE, COARSE, F2C = list("abcde"), ["X", "Y"], [0, 0, 1, 1, 1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An untrained marginal-head model exported with its decoding, and its run folder (model.keras +
    classes.json)."""
    import keras

    from mtl_keras.models import build_model
    from mtl_keras.serving import export

    keras.utils.set_random_seed(3)
    root = tmp_path_factory.mktemp("served")
    model = build_model("vit", (16, 16, 3), {"fine": 5, "coarse": 2}, variant="Pico/4", coarse_head="marginal",
                        fine_to_coarse=F2C)
    classes = {"fine": FINE, "coarse": COARSE, "fine_to_coarse": F2C, "coarse_head": "marginal",
               "hedge_threshold": 0.6}
    version = export.export(model, str(root / "export"), "m", class_names=classes)
    run = root / "run"
    run.mkdir()
    model.save(run / "model.keras")
    (run / "classes.json").write_text(json.dumps(classes))
    return version, run


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """PNG at the input size, a JPEG larger than the input, grey, RGBA and GIF files."""
    from PIL import Image

    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("files")
    smooth = np.kron(rng.integers(0, 255, (12, 16, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # 96 x 128
    images = {"rgb.png": Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)),
              "large.jpg": Image.fromarray(smooth),
              "grey.png": Image.fromarray(rng.integers(0, 255, (40, 24), dtype=np.uint8), "L"),
              "rgba.png": Image.fromarray(rng.integers(0, 255, (20, 20, 4), dtype=np.uint8), "RGBA"),
              "anim.gif": Image.fromarray(smooth[:50, :70]).convert("P")}
    for name, image in images.items():
        image.save(root / name, quality=90) if name.endswith(".jpg") else image.save(root / name)
    files = [str(root / name) for name in images]
    for i in range(25):  # more images: enough pairs where the argmax and the consistent pair differ
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / f"n{i}.png")
        files.append(str(root / f"n{i}.png"))
    return files


def _served(version, files):
    import tensorflow as tf

    from mtl_keras.serving import signatures

    loaded = tf.saved_model.load(str(version))
    return signatures.run_bytes(loaded, [open(f, "rb").read() for f in files], batch_size=8)


def _probabilities(result: dict, head: str, n: int) -> np.ndarray:
    p = np.zeros(n)
    for entry in result[head]:
        p[entry["id"]] = entry["probability"]
    return p


@pytest.mark.parametrize("artifact", ["saved_model", "onnx", "keras"])
def test_predict_and_serving_bytes_see_the_same_pixels(exported, image_files, artifact):
    from mtl_keras.serving import predict, runtime

    version, run = exported
    path = {"saved_model": version, "onnx": version / "model.onnx", "keras": run / "model.keras"}[artifact]
    results, failed = predict.classify(runtime.load(path), image_files, 10**8, top_k=5, batch_size=4)
    assert not failed and [r["path"] for r in results] == image_files
    served = _served(version, image_files)
    for head, n in (("fine", 5), ("coarse", 2)):
        got = np.stack([_probabilities(r, head, n) for r in results])
        np.testing.assert_allclose(got, served[head], rtol=0, atol=1e-5)


def test_served_pairs_are_the_pairs_evaluation_scores(exported, image_files, capsys):
    """serving_bytes's first names, predict's JSON (SavedModel and ONNX) and label all give evaluate.py's
    consistent pair; the test images include pairs where each head's argmax would contradict it."""
    import types

    from mtl_keras import evaluate

    version, _ = exported
    served = _served(version, image_files)
    scored = evaluate.predicted_classes({h: served[h] for h in ("fine", "coarse")},
                                        types.SimpleNamespace(fine_to_coarse=F2C), consistent=True)
    assert (served["fine"].argmax(-1) != scored["fine"]).any()  # else this test could not tell the two apart
    for head, names in (("fine", FINE), ("coarse", COARSE)):
        assert [c.decode() for c in served[f"{head}_classes"][:, 0]] == [names[i] for i in scored[head]]
    confident = served["fine"][np.arange(len(image_files)), scored["fine"]] >= np.float32(0.6)
    assert 0 < confident.sum() < len(image_files)  # both levels occur
    expected = [FINE[f] if c else COARSE[k] for f, k, c in zip(scored["fine"], scored["coarse"], confident)]
    assert [c.decode() for c in served["label"]] == expected
    assert [c.decode() for c in served["level"]] == ["fine" if c else "coarse" for c in confident]
    for model in (version, version / "model.onnx"):
        status, out, err = predict_in_process([f"--model={model}", "--json", "--batch_size=7", *image_files], capsys)
        assert status == 0, err[-2000:]
        results = json.loads(out)
        assert [(r["fine"][0]["class"], r["coarse"][0]["class"]) for r in results] == [
            (FINE[f], COARSE[c]) for f, c in zip(scored["fine"], scored["coarse"])]
        assert [r["label"] for r in results] == expected
        assert not any("contradicts_hierarchy" in r for r in results)  # consistent by construction


def test_decoding_travels_with_every_export(exported):
    import onnx
    import tensorflow as tf

    version, _ = exported
    classes = json.loads((version / "assets.extra" / "classes.json").read_text())
    assert (classes["fine_to_coarse"], classes["coarse_head"], classes["hedge_threshold"]) == (F2C, "marginal", 0.6)
    proto = onnx.load(str(version / "model.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["fine_to_coarse"]) == F2C and meta["coarse_head"] == "marginal"
    assert float(meta["hedge_threshold"]) == 0.6
    assert (meta["Image.BitmapPixelFormat"], meta["Image.ColorSpaceGamma"], meta["Image.NominalPixelRange"]) == (
        "Rgb8", "SRGB", "NominalRange_0_255")
    assert proto.graph.input[0].type.denotation == "IMAGE"
    described = tf.saved_model.load(str(version)).signatures["decoding"]()
    assert described["fine_to_coarse"].numpy().tolist() == F2C
    assert described["hedge_threshold"].numpy() == np.float32(0.6) and described["consistent"].numpy() == 1


def test_learned_pairs_say_when_they_contradict_the_hierarchy():
    from mtl_keras.serving.answers import Decoding, answers

    probs = {"fine": np.array([[0.4, 0.0, 0.3, 0.3, 0.0], [0.9, 0.1, 0, 0, 0]]), "coarse": np.array([[0.4, 0.6],
                                                                                                    [0.8, 0.2]])}
    learned = answers(probs, {"fine": FINE, "coarse": COARSE}, Decoding(F2C, "learned"))
    assert [(a["fine"]["class"], a["coarse"]["class"], a["contradicts_hierarchy"]) for a in learned] == [
        ("a", "Y", True), ("a", "X", False)]
    marginal = answers(probs, {"fine": FINE, "coarse": COARSE}, Decoding(F2C, "marginal"))
    assert [(a["fine"]["class"], a["coarse"]["class"]) for a in marginal] == [("c", "Y"), ("a", "X")]


def test_a_short_class_list_is_one_line(exported, image_files, tmp_path, capsys):
    import shutil

    _, run = exported
    shutil.copy(run / "model.keras", tmp_path / "model.keras")
    (tmp_path / "classes.json").write_text(json.dumps({"fine": FINE[:3], "coarse": COARSE}))
    status, _, err = predict_in_process([f"--model={tmp_path / 'model.keras'}", image_files[0]], capsys)
    assert status == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"predict: error: {tmp_path / 'classes.json'} names 3 fine classes for the model's 5 fine outputs, so they "
        "are not this model's names; use the classes of the run that trained it")
