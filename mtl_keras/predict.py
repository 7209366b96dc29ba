"""Classifies image files with an exported model: top fine and coarse classes with probabilities.

    python -m mtl_keras.predict --model=export/quickstart/1 cat.png dog.jpg
    python -m mtl_keras.predict --model=export/quickstart/1/model.onnx --json --top_k=3 *.png

PATH is a SavedModel version folder (class names from assets.extra/classes.json) or an .onnx file (class
names from its metadata). A file that is missing or not an image gets one error line; the others are
still classified, and the exit status is 1 when any file failed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HEADS = ("fine", "coarse")


class Classifier:
    """An exported model behind one call: float32 images [N, H, W, C] -> {"fine": probs, "coarse": probs}."""

    def __init__(self, path: str):
        p = Path(path)
        if p.suffix == ".onnx" and p.is_file():
            import onnxruntime as ort

            self._session = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
            meta = self._session.get_modelmeta().custom_metadata_map
            self.names = {k[:-len("_classes")]: json.loads(v) for k, v in meta.items() if k.endswith("_classes")}
            self.shape = tuple(int(d) for d in self._session.get_inputs()[0].shape[1:])
        elif (p / "saved_model.pb").is_file():
            import tensorflow as tf

            self._loaded = tf.saved_model.load(str(p))
            self._serving = self._loaded.signatures["serving_default"]
            self.shape = tuple(self._serving.structured_input_signature[1]["image"].shape[1:])
            classes = p / "assets.extra" / "classes.json"
            self.names = json.loads(classes.read_text()) if classes.is_file() else {}
        else:
            raise ValueError(f"--model={path} is neither an .onnx file nor a SavedModel folder (saved_model.pb)")

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        if hasattr(self, "_session"):
            names = [o.name for o in self._session.get_outputs()]
            return dict(zip(names, self._session.run(names, {"image": images})))
        import tensorflow as tf

        return {k: v.numpy() for k, v in self._serving(image=tf.constant(images)).items()}


def load_image(path: str, shape: tuple[int, int, int]) -> np.ndarray:
    """Decodes PNG / JPEG / BMP / GIF to float32 pixels (0-255) of `shape`; ValueError with the reason."""
    import tensorflow as tf

    from mtl_keras.data import fit_images

    p = Path(path)
    if not p.is_file():
        raise ValueError("no such file")
    try:
        image = tf.io.decode_image(p.read_bytes(), channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
        raise ValueError("not a PNG, JPEG, BMP or GIF image, or the file is damaged") from None
    return np.asarray(fit_images(image.numpy()[None], shape), np.float32)[0]


def top(probs: np.ndarray, names: list[str] | None, k: int) -> list[dict]:
    order = np.argsort(-probs)[:k]
    return [{"class": names[i] if names else str(i), "id": int(i), "probability": float(probs[i])} for i in order]


def main() -> int:
    from absl import flags

    from mtl_keras.flags import PREDICT_FLAGS as FLAGS

    try:
        files = FLAGS(sys.argv)[1:]
    except flags.Error as e:
        print(f"predict: error: {e}", file=sys.stderr)
        return 2
    if not FLAGS.model or not files:
        print("predict: error: usage: python -m mtl_keras.predict --model=PATH IMAGE [IMAGE ...]", file=sys.stderr)
        return 2
    try:
        classifier = Classifier(FLAGS.model)
    except Exception as e:  # one line, not a traceback
        print(f"predict: error: {e}", file=sys.stderr)
        return 1
    results, failed = [], 0
    for path in files:
        try:
            image = load_image(path, classifier.shape)
        except ValueError as e:
            print(f"predict: error: {path}: {e}", file=sys.stderr)
            failed += 1
            continue
        probs = classifier(image[None])
        heads = {h: top(probs[h][0], classifier.names.get(h), FLAGS.top_k) for h in HEADS if h in probs}
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
