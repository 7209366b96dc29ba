"""Classifies image files with an exported model: top fine and coarse classes with probabilities.

    mtl-keras predict --model=export/quickstart/1 cat.png dog.jpg
    mtl-keras predict --model=export/quickstart/1/model.onnx --json --top_k=3 *.png

PATH is a SavedModel version folder (class names from assets.extra/classes.json), an .onnx file (class
names from its metadata) or a run's model.keras (class names from the run's classes.json), opened by
`serving.runtime.load`. A file that is missing, not an image or larger than --max_image_pixels (read from its
header, so a decompression bomb is never decoded) gets one error line; the others are still classified, and
the exit status is 1 when any file failed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def load_image(path: str, shape: tuple[int, int, int], max_pixels: int) -> np.ndarray:
    """Decodes PNG / JPEG / BMP / GIF to float32 pixels (0-255) of `shape`; ValueError with the reason, also for
    an image above `max_pixels` (read from its header, before anything is decoded)."""
    import tensorflow as tf

    from mtl_keras.data.headers import too_large
    from mtl_keras.data.images import fit_images

    p = Path(path)
    if not p.exists():
        raise ValueError("no such file")
    refused = too_large(path, max_pixels)  # also anything but a regular file (a FIFO, /dev/zero): never read
    if refused:
        raise ValueError(refused)
    try:
        image = tf.io.decode_image(p.read_bytes(), channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
        raise ValueError("not a PNG, JPEG, BMP or GIF image, or the file is damaged") from None
    return np.asarray(fit_images(image.numpy()[None], shape), np.float32)[0]


def top(probs: np.ndarray, names: list[str] | None, k: int) -> list[dict]:
    order = np.argsort(-probs)[:k]
    return [{"class": names[i] if names else str(i), "id": int(i), "probability": float(probs[i])} for i in order]


def main(argv: list[str] | None = None) -> int:
    """`mtl-keras predict` and `python -m mtl_keras.predict`; `argv` as sys.argv (program name first)."""
    from mtl_keras.errors import interrupted

    try:
        return _main(argv)
    except KeyboardInterrupt:
        return interrupted("predict", "the images before it were classified")


def _main(argv: list[str] | None) -> int:
    from absl import flags

    from mtl_keras import flagfiles
    from mtl_keras.errors import report
    from mtl_keras.flags import define_predict_flags, error_line
    from mtl_keras.serving import runtime

    FLAGS = flags.FlagValues()  # its own: a --model path here is not train's trunk
    define_predict_flags(FLAGS)
    argv = sys.argv if argv is None else argv
    if {"--help", "-h", "--helpfull"} & set(argv[1:]):
        print(__doc__.strip() + "\n\nflags:\n" + FLAGS.get_help())
        return 0
    try:
        files = FLAGS(flagfiles.expand(argv, config=False))[1:]
    except flagfiles.FlagfileError as e:
        print(f"predict: error: {e}", file=sys.stderr)
        return 2
    except flags.Error as e:
        print(f"predict: error: {error_line(e)}", file=sys.stderr)
        return 2
    if not FLAGS.model or not files:
        print("predict: error: usage: mtl-keras predict --model=PATH IMAGE [IMAGE ...]", file=sys.stderr)
        return 2
    try:
        classifier = runtime.load(FLAGS.model)
    except Exception as e:  # one line, not a traceback
        return report("predict", e)
    results, failed = [], 0
    for path in files:
        try:
            image = load_image(path, classifier.shape, FLAGS.max_image_pixels)
        except ValueError as e:
            print(f"predict: error: {path}: {e}", file=sys.stderr)
            failed += 1
            continue
        probs = classifier(image[None])
        heads = {h: top(probs[h][0], classifier.names.get(h), FLAGS.top_k) for h in ("fine", "coarse") if h in probs}
        results.append({"path": path, **heads})
        if not FLAGS.json:
            print(f"{path}: " + "  ".join(
                f"{h}=" + ", ".join(f"{t['class']} ({t['probability']:.1%})" for t in tops)
                for h, tops in heads.items()))
    if FLAGS.json:
        print(json.dumps(results, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
