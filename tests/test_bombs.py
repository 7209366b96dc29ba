"""Decompression bombs that a header check reading the wrong header let through, and files that are not files:
each must be refused in one line by predict, skipped and reported by the folder loader, and refused by name in
serving_bytes, with the process staying under 1 GB (its maximum RSS, measured from outside by wait4).

The corpus, made here: a 16000 x 16000 JPEG whose real frame header sits behind a stuffed `FF 00` and a fake
16 x 16 one; a GIF with a 1 x 1 logical screen over one 12000 x 12000 frame; a 12000 x 12000 GIF whose signature
is `GIF8zz` (TensorFlow decodes it); a GIF with 15 frames of 2000 x 2000 in a 1 x 1 screen."""

import io
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, require, subprocess_env

from mtl_keras.data import headers

PIL = require("PIL.Image")
GB = 2 ** 30
LIMIT = 40_000_000  # the default --max_image_pixels


def _jpeg_behind_ff00() -> bytes:
    image = io.BytesIO()
    PIL.new("L", (16000, 16000), 128).save(image, "JPEG", quality=10)
    fake = b"\xff\xc0\x00\x0b\x08\x00\x10\x00\x10\x01\x01\x11\x00"  # a 16 x 16 frame header, inside an APP1
    app1 = b"\xff\xe1" + struct.pack(">H", 14 + len(fake)) + b"Exif" + fake + bytes(4)
    return b"\xff\xd8\xff\x00" + struct.pack(">H", 10) + app1 + image.getvalue()[2:]


def _gif(frames: list, screen: tuple[int, int] | None = None, signature: bytes = b"GIF89a") -> bytes:
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=len(frames) > 1, append_images=frames[1:])
    data = bytearray(out.getvalue())
    if screen:
        data[6:10] = struct.pack("<HH", *screen)
    data[:6] = signature
    return bytes(data)


CORPUS = {  # name -> (make, what decoding costs in pixels at least)
    "ff00.jpg": (_jpeg_behind_ff00, 16000 * 16000),
    "frame.gif": (lambda: _gif([PIL.new("P", (12000, 12000))], screen=(1, 1)), 12000 * 12000),
    "signature.gif": (lambda: _gif([PIL.new("P", (12000, 12000))], signature=b"GIF8zz"), 12000 * 12000),
    "frames.gif": (lambda: _gif([PIL.new("L", (2000, 2000), 37 * i % 256) for i in range(15)], screen=(1, 1)),
                   15 * 2000 * 2000),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("bombs")
    for name, (make, _) in CORPUS.items():
        (folder / name).write_bytes(make())
    return {name: folder / name for name in CORPUS}


def _good_png(path, value: int = 0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)
    return str(path)


# The child is started by a small launcher, not forked from the test process itself: Linux counts a process's
# maximum RSS across fork and exec (a child forked from a pytest worker that has grown to 2 GB reports 2 GB before
# it runs a line), while a child forked from the launcher starts from the launcher's few MB.
LAUNCHER = """
import os, resource, signal, sys
report, seconds, cap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pid = os.fork()
if pid == 0:
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    os.execv(sys.executable, [sys.executable, *sys.argv[4:]])
signal.signal(signal.SIGALRM, lambda *_: os.kill(pid, signal.SIGKILL))
signal.alarm(seconds)
_, status, usage = os.wait4(pid, 0)
open(report, "w").write(str(usage.ru_maxrss * 1024))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def _measured(code: str, *args: str, timeout: int = 300) -> tuple[str, str, int, int]:
    """Runs `python -c code args` under `timeout` and a 6 GB address-space cap (a bomb that slipped through fails
    instead of taking the shared machine's memory); returns stdout, stderr, exit status and the child's maximum
    RSS in bytes (wait4's rusage, read by LAUNCHER)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "maxrss"
        proc = subprocess.run([sys.executable, "-c", LAUNCHER, str(report), str(timeout), str(6 * GB), "-c",
                               textwrap.dedent(code), *args], cwd=REPO, env=subprocess_env(),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout + 60)
        return proc.stdout, proc.stderr, proc.returncode, int(report.read_text())


def test_headers_read_what_the_decoders_allocate(corpus):
    """headers.py (files) and graph_headers.py (serving_bytes) agree, and each is at least the decoder's cost."""
    import tensorflow as tf

    from mtl_keras.data.graph_headers import header_pixels

    for name, (_, cost) in CORPUS.items():
        width, height, frames = headers.image_pixels(str(corpus[name]))
        assert width * height * frames >= cost, name
        assert headers.too_large(str(corpus[name]), LIMIT).endswith("raise it to read this image)"), name
        assert int(header_pixels(tf.constant(corpus[name].read_bytes()))) >= cost, name


def test_other_formats_tensorflow_decodes_are_refused_by_the_header_check(tmp_path):
    webp, jxl = tmp_path / "a.webp.png", tmp_path / "a.jxl.png"
    PIL.new("RGB", (8, 8)).save(webp, "WEBP")
    jxl.write_bytes(b"\xff\x0a" + bytes(64))
    assert headers.too_large(str(webp), LIMIT) == ("a WebP image: only PNG, JPEG, GIF and BMP images are read; its "
                                                   "size cannot be read, so it is not decoded")
    assert headers.too_large(str(jxl), LIMIT).startswith("a JPEG XL image: only PNG, JPEG, GIF and BMP")


def test_predict_refuses_each_bomb_in_one_line_under_1_gb(corpus, tmp_path):
    import keras

    inputs = keras.Input((8, 8, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    model = keras.Model(inputs, {"fine": keras.layers.Dense(2, activation="softmax", name="fine")(pooled),
                                 "coarse": keras.layers.Dense(2, activation="softmax", name="coarse")(pooled)})
    model.save(tmp_path / "model.keras")
    (tmp_path / "classes.json").write_text('{"fine": ["a", "b"], "coarse": ["x", "y"]}')
    ok = _good_png(tmp_path / "ok.png")
    paths = [str(corpus[name]) for name in CORPUS]
    out, err, status, rss = _measured("import sys; from mtl_keras.serving.predict import main; sys.argv[0] = "
                                      "'predict'; sys.exit(main())", f"--model={tmp_path / 'model.keras'}",
                                      *paths, ok)
    lines = [line for line in err.splitlines() if line.startswith("predict: error:")]
    assert [line.split(": ")[2] for line in lines] == paths, err
    assert all("above --max_image_pixels=40000000" in line for line in lines), err
    assert out.startswith(f"{ok}: fine=") and status == 1
    print(f"predict: maximum RSS {rss / GB:.2f} GB")
    assert rss < GB, f"predict peaked at {rss / GB:.2f} GB"


def test_folder_loader_skips_bombs_and_special_files_under_1_gb(corpus, tmp_path):
    root = tmp_path / "data"
    for fine in ("cat", "dog"):
        for i in range(4):
            _good_png(root / "animal" / fine / f"{i}.png", 20 * i)
    hostile = []
    for name in CORPUS:
        hostile.append(root / "animal" / "cat" / f"bomb-{name}")
        hostile[-1].symlink_to(corpus[name])
    (root / "animal" / "cat" / "zero.png").symlink_to("/dev/zero")
    os.mkfifo(root / "animal" / "dog" / "fifo.png")
    hostile += [root / "animal" / "cat" / "zero.png", root / "animal" / "dog" / "fifo.png"]
    out, err, status, rss = _measured("""
        import sys
        from mtl_keras.data import datasets
        s = datasets.load("folder", data_dir=sys.argv[1], folder_cache_mb=0, validation_fraction=0,
                          folder_test_fraction=0)
        print(len(s.train)); print("\\n".join(s.info.skipped_files))""", str(root), timeout=120)
    assert status == 0, err[-2000:]
    count, *skipped = out.split("\n")[:-1]
    assert count == "8" and sorted(skipped) == sorted(map(str, hostile))
    assert f"skipping {hostile[-2]}: a character device, not an image file; it is not read" in err
    assert f"skipping {hostile[-1]}: a FIFO, not an image file; it is not read" in err
    assert err.count("above --max_image_pixels=40000000") == len(CORPUS)
    print(f"the loader: maximum RSS {rss / GB:.2f} GB")
    assert rss < GB, f"the loader peaked at {rss / GB:.2f} GB"


def test_serving_bytes_refuses_each_bomb_by_index_under_1_gb(corpus, tmp_path):
    ok = (tmp_path / "ok.png")
    _good_png(ok)
    out, err, status, rss = _measured("""
        import sys
        import tensorflow as tf
        from mtl_keras.serving.signatures import bytes_spec, decode_batch
        serve = tf.function(lambda b: decode_batch(b, (8, 8, 3), 40_000_000), input_signature=[bytes_spec()])
        files = [open(p, "rb").read() for p in sys.argv[1:]]
        print(serve(tf.constant(files[-1:])).shape)
        for batch in [[files[-1], f] for f in files[:-1]] + [files[:-1]]:
            try:
                serve(tf.constant(batch))
                print("decoded")
            except tf.errors.InvalidArgumentError as e:
                print(e.message.split("serving_bytes: ")[1].splitlines()[0])""",
                                      *[str(corpus[name]) for name in CORPUS], str(ok))
    assert status == 0, err[-2000:]
    lines = out.splitlines()
    assert lines[0] == "(1, 8, 8, 3)" and len(lines) == 2 + len(CORPUS), out
    for line, (name, (_, cost)) in zip(lines[1:], CORPUS.items()):
        pixels = int(line.split(" holds ")[1].split()[0])
        assert line.startswith("image_bytes[1] holds") and pixels >= cost, (name, line)
    assert lines[-1].startswith("image_bytes[0] holds"), lines[-1]  # four bombs in one request
    print(f"serving_bytes: maximum RSS {rss / GB:.2f} GB")
    assert rss < GB, f"serving_bytes peaked at {rss / GB:.2f} GB"
