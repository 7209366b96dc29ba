"""Classifies image files with an exported model: the served (fine, coarse) answer, top classes, hedged label.

    mtl-keras predict --model=export/quickstart/1 cat.png dog.jpg
    mtl-keras predict --model=export/quickstart/1/model.onnx --json --top_k=3 *.png

PATH is a SavedModel version folder (class names and decoding from assets.extra/classes.json), an .onnx file
(from its metadata) or a run's model.keras (from the run's classes.json), opened by `serving.runtime.load`.
Files are decoded exactly as training and the SavedModel's serving_bytes signature decode them
(`data.images.decode_bytes`, then `fit_images`), and classified --batch_size at a time. The answer is the one
serving_bytes gives and evaluation scores (serving/answers.py): the consistent pair for --coarse_head=marginal |
both, each head's argmax for learned (JSON `contradicts_hierarchy` flags a pair outside the hierarchy), and the
hedged `label` / `level` (the superclass when the fine class's probability is under the export's threshold).
Each head's top list starts with the answered class. A file that is missing, not an image or larger than
--max_image_pixels (read from its header, so a decompression bomb is never decoded) gets one error line; the
others are still classified, and the exit status is 1 when any file failed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def decode_file(path: str, size: int, max_pixels: int) -> np.ndarray:
    """One image file as uint8 [size, size, 3], by `decode_bytes` (what training and serving_bytes run);
    ValueError with the reason, also for an image above `max_pixels` (read from its header, before anything is
    decoded)."""
    import tensorflow as tf

    from mtl_keras.data.headers import too_large
    from mtl_keras.data.images import decode_bytes

    p = Path(path)
    if not p.exists():
        raise ValueError("no such file")
    refused = too_large(path, max_pixels)  # also anything but a regular file (a FIFO, /dev/zero): never read
    if refused:
        raise ValueError(refused)
    try:
        return decode_bytes(tf.constant(p.read_bytes()), size).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
        raise ValueError("not a PNG, JPEG, BMP or GIF image, or the file is damaged") from None


def load_image(path: str, shape: tuple[int, int, int], max_pixels: int) -> np.ndarray:
    """float32 pixels (0-255) of `shape`, as serving_bytes feeds the model (signatures.model_input)."""
    from mtl_keras.serving.signatures import model_input

    return np.asarray(model_input(decode_file(path, int(shape[0]), max_pixels)[None], shape))[0]


def top(probs: np.ndarray, names: list[str] | None, k: int, first: int) -> list[dict]:
    """The answered class `first`, then the most probable others: `k` in all (answers.ranked)."""
    from mtl_keras.serving.answers import ranked

    order = [int(i) for i in ranked(probs[None], np.asarray([first]), k)[0]]
    return [{"class": names[i] if names else str(i), "id": i, "probability": float(probs[i])} for i in order]


def check_names(classifier) -> None:
    """ExportError when the artifact's fine -> coarse map does not match its fine head (its class names are
    checked against the heads when it is loaded, serving/runtime.py)."""
    from mtl_keras.errors import ExportError

    probs = classifier(np.zeros((1, *classifier.shape), np.float32))
    f2c = classifier.decoding.get("fine_to_coarse")
    if f2c is not None and "fine" in probs and len(f2c) != probs["fine"].shape[-1]:
        raise ExportError(f"{classifier.path}: its fine_to_coarse map lists {len(f2c)} fine classes, the model's "
                          f"fine head {probs['fine'].shape[-1]}; export the run again")


def classify(classifier, paths: list[str], max_pixels: int, top_k: int, batch_size: int) -> tuple[list, list]:
    """(one result per decoded file, (path, reason) per failed file), the model run `batch_size` at a time."""
    from mtl_keras.serving.answers import Decoding, answers
    from mtl_keras.serving.signatures import model_input

    decoding = Decoding.from_dict(classifier.decoding)
    size = int(classifier.shape[0])
    results, failed = [], []
    for start in range(0, len(paths), batch_size):
        good, pixels = [], []
        for path in paths[start:start + batch_size]:
            try:
                pixels.append(decode_file(path, size, max_pixels))
                good.append(path)
            except ValueError as e:
                failed.append((path, str(e)))
        if not good:
            continue
        probs = classifier(np.asarray(model_input(np.stack(pixels), classifier.shape)), batch_size)
        for i, (path, answer) in enumerate(zip(good, answers(probs, classifier.names, decoding))):
            tops = {h: top(probs[h][i], classifier.names.get(h), top_k, answer[h]["id"]) for h in probs}
            results.append({"path": path, **tops, **{k: v for k, v in answer.items() if k not in probs}})
    return results, failed


def _line(result: dict) -> str:
    heads = [h for h in ("fine", "coarse") if h in result]
    text = f"{result['path']}: " + "  ".join(
        f"{h}=" + ", ".join(f"{t['class']} ({t['probability']:.1%})" for t in result[h]) for h in heads)
    if "label" in result:
        text += f"  -> {result['label']} ({result['level']})"
    if result.get("contradicts_hierarchy"):
        text += "  [the pair contradicts the hierarchy]"
    return text


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
        check_names(classifier)
    except Exception as e:  # one line, not a traceback
        return report("predict", e)
    results, failed = classify(classifier, files, FLAGS.max_image_pixels, FLAGS.top_k, FLAGS.batch_size)
    for path, reason in failed:
        print(f"predict: error: {path}: {reason}", file=sys.stderr)
    if FLAGS.json:
        print(json.dumps(results, indent=1))
    else:
        for result in results:
            print(_line(result))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
