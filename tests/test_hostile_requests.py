"""What a hostile request to the exported model, or a full disk under a run, must not do: crash or hang the
server, answer garbage silently, or print a storm of tracebacks. Requests: a bare PNG signature, files cut short
(serving_bytes names the image by its index), an empty batch and NaN / infinite pixels (InvalidArgument naming
the problem); whole files with odd content or bytes after their end are still served. Disk: a real full tmpfs
under a run's checkpoint (one line, the last checkpoint intact, the rerun resumes from it), and a full disk in
train's own export named as the export folder."""

import errno
import io
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, predict_in_process, require, subprocess_env

PIL = require("PIL.Image")
FINE, COARSE = 4, 2


def _encoded(array: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    PIL.fromarray(array).save(out, fmt)
    return out.getvalue()


IMAGE = np.random.RandomState(0).randint(0, 256, (40, 40, 3)).astype(np.uint8)
JPEG, PNG, GIF = (_encoded(IMAGE, fmt) for fmt in ("JPEG", "PNG", "GIF"))
GOOD = PNG

# name -> (batch, index named, what the message says the image is)
DAMAGED = {
    "bare PNG signature": ([GOOD, b"\x89PNG\r\n\x1a\n"], 1, "a PNG with no IHDR header"),
    "PNG cut in half": ([GOOD, GOOD, PNG[:len(PNG) // 2]], 2, "a PNG with no IEND chunk"),
    "JPEG cut in its header": ([JPEG[:20]], 0, r"a JPEG with no frame header \(SOF\)"),
    "JPEG of SOI, APP0, EOI": ([GOOD, b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9"],
                               1, r"a JPEG with no frame header \(SOF\)"),
    "JPEG cut in its data": ([GOOD, JPEG[:len(JPEG) - 100]], 1, r"a JPEG with no end marker \(EOI\)"),
    "bare GIF signature": ([b"GIF89a"], 0, "a GIF whose first frame runs past its end"),
    "GIF cut in half": ([GOOD, GIF[:len(GIF) // 2]], 1, "a GIF whose first frame runs past its end"),
    "bare BMP signature": ([b"BM"], 0, "a BMP with no complete header"),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny untrained two-head model exported (SavedModel + ONNX), and the loaded SavedModel."""
    import tensorflow as tf

    from mtl_keras.models import build_model
    from mtl_keras.serving import export

    model = build_model("vit", (16, 16, 3), {"fine": FINE, "coarse": COARSE}, variant="Pico/4")
    version = export.export(model, str(tmp_path_factory.mktemp("export")), "m")
    return version, tf.saved_model.load(str(version))


@pytest.mark.slow
@pytest.mark.parametrize("case", list(DAMAGED))
def test_serving_bytes_names_a_bare_signature_or_a_file_cut_short(exported, case):
    import tensorflow as tf

    from mtl_keras.serving import signatures

    _, loaded = exported
    batch, index, what = DAMAGED[case]
    # Was: the decoder's own error naming no image ("Invalid PNG. Failed to initialize decoder.", "Invalid JPEG
    # data, size 20"), or a message no client could decode (the raw bytes), or "Incompatible shapes" (bare BM).
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=rf"serving_bytes: image_bytes\[{index}\] is {what}: cut short or damaged"):
        signatures.run_bytes(loaded, batch)
    assert signatures.run_bytes(loaded, [GOOD])["fine"].shape == (1, FINE)  # and the model still serves


@pytest.mark.slow
def test_a_rest_request_with_a_bare_png_signature_gets_a_readable_error(exported):
    """TF Serving's REST form: the b64 instance decoded to bytes, the signature's error as the JSON response.
    Was: the raw request bytes in the message, which a Python client failed to decode (UnicodeDecodeError)."""
    import base64
    import json

    import tensorflow as tf

    _, loaded = exported
    body = json.dumps({"signature_name": "serving_bytes", "instances": [
        {"image_bytes": {"b64": base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()}}]})
    request = json.loads(body)
    inputs = [base64.b64decode(row["image_bytes"]["b64"]) for row in request["instances"]]
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        loaded.signatures[request["signature_name"]](image_bytes=tf.constant(inputs))
    response = json.loads(json.dumps({"error": caught.value.message}, ensure_ascii=True))
    assert "image_bytes[0] is a PNG with no IHDR header" in response["error"]
    assert "PNG\r\n" not in response["error"]  # no request bytes echoed


@pytest.mark.slow
def test_whole_files_with_bytes_after_their_end_are_served_as_without(exported):
    """The structure checks refuse nothing the decoders read: bytes after a JPEG's EOI or a PNG's IEND, a GIF
    without its trailer, and an animated GIF cut in its second frame (TensorFlow decodes its first) are served
    with the same answer as the whole file."""
    from mtl_keras.serving import signatures

    _, loaded = exported
    frames = [PIL.fromarray(IMAGE), PIL.fromarray(IMAGE[::-1])]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:])
    animated = out.getvalue()
    whole = signatures.run_bytes(loaded, [JPEG, PNG, GIF, animated])
    extra = signatures.run_bytes(loaded, [JPEG + bytes(100), PNG + b"junk", GIF[:-1],
                                          animated[:len(animated) * 3 // 4]])
    np.testing.assert_allclose(extra["fine"], whole["fine"], atol=1e-6)
    np.testing.assert_array_equal(extra["label"], whole["label"])


@pytest.mark.slow
def test_odd_but_whole_images_are_classified(exported):
    """Grey, RGBA, 16-bit, 1 x 1 and 1 x 3000 images: decoded to 3 channels, resized, and answered."""
    import tensorflow as tf

    from mtl_keras.serving import signatures

    _, loaded = exported
    odd = [_encoded(IMAGE[..., 0], "PNG"), _encoded(np.dstack([IMAGE, IMAGE[..., :1]]), "PNG"),
           tf.io.encode_png(np.full((16, 16, 3), 60000, np.uint16)).numpy(), _encoded(IMAGE[:1, :1], "PNG"),
           _encoded(np.zeros((1, 3000, 3), np.uint8), "PNG"), _encoded(np.zeros((16, 16, 3), np.uint8), "BMP")]
    out = signatures.run_bytes(loaded, odd)
    for head, n in (("fine", FINE), ("coarse", COARSE)):
        assert out[head].shape == (len(odd), n) and np.isfinite(out[head]).all()
        np.testing.assert_allclose(out[head].sum(-1), 1, atol=1e-5)
    assert out["label"].shape == (len(odd),)


@pytest.mark.slow
def test_an_empty_batch_is_an_invalid_argument_in_both_signatures(exported):
    """A request of no image is refused by name (was "Incompatible shapes: [16] vs. [0,16,16,3]")."""
    import tensorflow as tf

    _, loaded = exported
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"serving_bytes: the request holds no image "
                                                             r"\(image_bytes is a batch of 0\)"):
        loaded.signatures["serving_bytes"](image_bytes=tf.constant([], tf.string))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"serving_default: the request holds no image "
                                                             r"\(image is a batch of 0\)"):
        loaded.signatures["serving_default"](image=tf.zeros((0, 16, 16, 3)))


@pytest.mark.slow
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_pixels_are_refused_by_the_saved_model_and_nan_rows_in_onnx(exported, bad):
    """serving_default refuses NaN / infinite pixels (it answered NaN probabilities). model.onnx, converted from
    the same graph, cannot assert: it answers NaN for that image only, and the others as the SavedModel does."""
    import tensorflow as tf

    from mtl_keras.serving import runtime

    version, loaded = exported
    images = np.random.RandomState(1).uniform(0, 255, (3, 16, 16, 3)).astype(np.float32)
    clean = loaded.signatures["serving_default"](image=tf.constant(images))
    images[1, 4, 5, 2] = bad
    with pytest.raises(tf.errors.InvalidArgumentError, match="serving_default: image holds NaN or infinite pixels"):
        loaded.signatures["serving_default"](image=tf.constant(images))
    onnx = runtime.load(version / "model.onnx").run_batch(images)
    for head in ("fine", "coarse"):
        assert np.isnan(onnx[head][1]).all()
        np.testing.assert_allclose(onnx[head][[0, 2]], clean[head].numpy()[[0, 2]], atol=1e-5)


@pytest.mark.slow
def test_predict_names_each_damaged_file_and_classifies_the_rest(exported, tmp_path, capsys):
    version, _ = exported
    files = {f"{case.replace(' ', '_')}.bin": batch[index] for case, (batch, index, _) in DAMAGED.items()}
    files |= {"ok.png": GOOD, "grey.png": _encoded(IMAGE[..., 0], "PNG"), "dot.png": _encoded(IMAGE[:1, :1], "PNG")}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    status, out, err = predict_in_process([f"--model={version}", *sorted(str(tmp_path / n) for n in files)], capsys)
    errors = [line for line in err.splitlines() if line.startswith("predict: error: ")]
    assert status == 1 and "Traceback" not in err
    assert sorted(line.split(": ")[2] for line in errors) == sorted(str(tmp_path / n) for n in files
                                                                   if n.endswith(".bin")), err
    answered = [line for line in out.splitlines() if ": fine=" in line]
    assert sorted(line.split(": ")[0] for line in answered) == sorted(str(tmp_path / n) for n in
                                                                      ("ok.png", "grey.png", "dot.png"))


def test_a_full_disk_in_trains_export_names_the_export_folder(tmp_path, monkeypatch):
    """TensorFlow reports ENOSPC as ResourceExhaustedError with no file name; the line named the workdir."""
    import tensorflow as tf

    from mtl_keras import train
    from mtl_keras.config import ServingConfig
    from mtl_keras.serving import runs

    def full(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, f"saved_model.pb; {os.strerror(errno.ENOSPC)}")

    monkeypatch.setattr(runs, "export_run", full)
    with pytest.raises(OSError) as caught:
        train._export(None, ServingConfig(export_dir=str(tmp_path / "exports")), tmp_path / "work", None)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "exports")


def _can_mount() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                          capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount(), reason="a real full disk needs root to mount a tmpfs (unshare -m)")
def test_a_real_full_disk_at_a_checkpoint_is_one_line_and_the_rerun_resumes(tmp_path):
    """A 700 KB tmpfs (in a private mount namespace) holds the records and epoch 1's checkpoint (466 KB), not
    epoch 2's beside it. Was: 120 h5py tracebacks before the line (and once a segfault at exit)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    train = [sys.executable, "-m", "mtl_keras.train", f"--flagfile={REPO}/mtl_keras/configs/quickstart.flags",
             "--variant=Pico/4", "--epochs=2", "--max_train_examples=256", "--batch_size=64", "--noexport",
             "--validation_fraction=0", "--nojit_compile", f"--workdir={disk / 'w'}"]
    script = (f"mount -t tmpfs -o size=700k tmpfs {disk} || exit 99\n"
              f"{' '.join(train)} 2>{tmp_path / 'full.err'}; echo $? > {tmp_path / 'full.rc'}\n"
              f"ls {disk / 'w' / 'checkpoints'} > {tmp_path / 'kept'}\n"
              f"mount -o remount,size=4m {disk} && {' '.join(train)} > {tmp_path / 'rerun.out'} 2>&1\n")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], env=subprocess_env(), capture_output=True,
                          text=True, timeout=900)
    err = (tmp_path / "full.err").read_text()
    lines = [line for line in err.splitlines() if not line.startswith(("WARNING", "I0000", "E0000", "W0000"))]
    assert (tmp_path / "full.rc").read_text().strip() == "1", err[-3000:]
    assert lines == [f"train: error: no space left on the device writing {disk / 'w' / 'checkpoints'}/"
                     f"epoch-2.weights.h5; free some space and rerun the same command: it resumes from the last "
                     f"finished epoch"], err[-3000:]
    assert (tmp_path / "kept").read_text().split() == ["epoch-1.weights.h5", "state.json"]  # no .tmp-* file
    rerun = (tmp_path / "rerun.out").read_text()
    assert proc.returncode == 0 and "Resumed from epoch 1" in rerun, rerun[-3000:]
