"""The predict CLI on a SavedModel and on ONNX, with good and bad files."""

import json

import numpy as np
import pytest

from conftest import predict_in_process, run_module

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    import tensorflow as tf

    from mtl_keras.data.sources import shapes

    root = tmp_path_factory.mktemp("images")
    images, _, _ = shapes.generate(2, seed=4)
    (root / "a.png").write_bytes(tf.io.encode_png(images[0]).numpy())
    big = tf.image.resize(images[1:], (64, 64)).numpy().astype(np.uint8)[0]  # other size: resized to 32x32
    (root / "b.jpg").write_bytes(tf.io.encode_jpeg(big).numpy())
    (root / "c.png").write_text("not an image")
    return root


@pytest.mark.parametrize("model_file", ["", "model.onnx"])
def test_predict_names_both_heads_and_skips_bad_files(trained_run, image_files, model_file):
    version = trained_run.version
    files = [image_files / "a.png", image_files / "missing.png", image_files / "c.png", image_files / "b.jpg"]
    proc = run_module("mtl_keras.predict", f"--model={version / model_file}", "--json", "--top_k=2",
                      *map(str, files))
    assert proc.returncode == 1  # two files failed, two were classified
    results = json.loads(proc.stdout)
    assert [r["path"] for r in results] == [str(files[0]), str(files[3])]
    from mtl_keras.data.sources import shapes

    for r in results:
        assert len(r["fine"]) == 2 and r["fine"][0]["class"] in shapes.FINE_NAMES
        assert r["coarse"][0]["class"] in shapes.COARSE_NAMES and 0 <= r["coarse"][0]["probability"] <= 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("predict: error:")]
    assert errors == [f"predict: error: {files[1]}: no such file",
                      f"predict: error: {files[2]}: not a PNG, JPEG, BMP or GIF image, or the file is damaged"]


def test_predict_text_output(trained_run, image_files):
    version = trained_run.version
    proc = run_module("mtl_keras.predict", f"--model={version}", str(image_files / "a.png"))
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert line.startswith(f"{image_files / 'a.png'}: fine=") and "  coarse=" in line and "%)" in line


def test_predict_bad_model_path_is_one_line(tmp_path, image_files, capsys):
    status, _, err = predict_in_process([f"--model={tmp_path}", image_files / "a.png"], capsys)
    assert status == 1
    assert err.strip().splitlines()[-1] == (
        f"predict: error: --model={tmp_path} is neither a .keras file, an .onnx file nor a SavedModel folder "
        f"(saved_model.pb)")
