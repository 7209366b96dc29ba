"""Parity check: Keras model, SavedModel (TensorFlow) and ONNX model (onnxruntime, CPU) on the same inputs.

    python -m mtl_keras.check_onnx --saved_model=export/quickstart/1 --onnx=export/quickstart/1/model.onnx \
        [--keras_model=runs/quickstart/model.keras] [--check_dataset=shapes] [--atol=1e-5] [--json]

Inputs: random pixels, plus real test images with --check_dataset. Per pair of runtimes and per output it
reports the max and mean absolute difference and the argmax agreement; with --check_dataset and a
`model.int8.onnx` beside the ONNX file, also the int8 model's test-accuracy drop per head. Exit status 0
only when every output is within --atol, every argmax agrees and int8 loses at most --int8_max_drop points.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np


@dataclasses.dataclass
class OutputParity:
    name: str
    max_abs_diff: float
    mean_abs_diff: float
    argmax_agreement: float


@dataclasses.dataclass
class ParityResult:
    pair: str
    outputs: list[OutputParity]
    atol: float
    num_inputs: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def table(self) -> str:
        rows = [f"{self.pair}: {self.num_inputs} inputs, atol {self.atol:g}",
                f"  {'output':<8} {'max |diff|':>11} {'mean |diff|':>12} {'argmax agree':>13}"]
        rows += [f"  {o.name:<8} {o.max_abs_diff:>11.3g} {o.mean_abs_diff:>12.3g} {o.argmax_agreement:>13.2%}"
                 for o in self.outputs]
        return "\n".join(rows + ["  PASS" if self.ok else "  FAIL: " + "; ".join(self.problems)])


def random_pixels(shape: tuple[int, ...], n: int, seed: int = 0) -> np.ndarray:
    """`n` images of random integer pixel values 0-255 as float32."""
    return np.random.default_rng(seed).integers(0, 256, (n, *shape)).astype(np.float32)


def run_keras(path: str, images: np.ndarray) -> dict[str, np.ndarray]:
    import keras

    import mtl_keras.models  # noqa: F401  (registers the custom layers)

    out = keras.saving.load_model(path).predict(images, batch_size=64, verbose=0)
    return {k: np.asarray(v) for k, v in out.items()}


def run_saved_model(saved_model_dir: str, images: np.ndarray) -> dict[str, np.ndarray]:
    import tensorflow as tf

    loaded = tf.saved_model.load(saved_model_dir)  # keep a reference: it owns the variables
    outputs = loaded.signatures["serving_default"](image=tf.constant(images))
    return {k: v.numpy() for k, v in outputs.items()}


def onnx_session(onnx_path: str):
    import onnxruntime as ort

    return ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])


def run_onnx(onnx_path: str, images: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    session = onnx_session(onnx_path)
    input_name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    parts = [session.run(names, {input_name: images[i:i + batch_size]}) for i in range(0, len(images), batch_size)]
    return {name: np.concatenate([p[j] for p in parts]) for j, name in enumerate(names)}


def compare(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], atol: float,
            pair: str = "saved_model vs onnx") -> ParityResult:
    """Per-output max / mean abs diff and argmax agreement of `candidate` against `reference`."""
    problems, outputs = [], []
    if set(reference) != set(candidate):
        problems.append(f"output names differ: {sorted(reference)} vs {sorted(candidate)}")
    for name in sorted(set(reference) & set(candidate)):
        ref, cand = reference[name], candidate[name]
        if ref.shape != cand.shape:
            problems.append(f"{name}: shape {ref.shape} vs {cand.shape}")
            continue
        diff = np.abs(ref.astype(np.float64) - cand)
        max_diff, mean_diff = (float(diff.max()), float(diff.mean())) if ref.size else (0.0, 0.0)
        agree = float(np.mean(ref.argmax(-1) == cand.argmax(-1))) if ref.size else 1.0
        outputs.append(OutputParity(name, max_diff, mean_diff, agree))
        if not max_diff <= atol:  # also catches NaN
            problems.append(f"{name}: max |diff| {max_diff:.3g} > atol {atol:g}")
        if agree < 1.0:
            problems.append(f"{name}: argmax agrees on {agree:.2%} only")
    n = len(next(iter(reference.values()))) if reference else 0
    return ParityResult(pair, outputs, atol, n, problems)


def check(saved_model_dir: str, onnx_path: str, images: np.ndarray, atol: float = 1e-5) -> ParityResult:
    """Runs the SavedModel and the ONNX model on `images` (float32 raw pixels) and compares every output."""
    return compare(run_saved_model(saved_model_dir, images), run_onnx(onnx_path, images), atol)


def int8_accuracy_drop(onnx_path: str, int8_path: str, images: np.ndarray,
                       labels: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Test accuracy per head of the fp32 and int8 ONNX models, and the drop in percentage points."""
    fp32, int8 = run_onnx(onnx_path, images), run_onnx(int8_path, images)
    report = {}
    for head in sorted(set(fp32) & set(labels)):
        a32 = float(np.mean(fp32[head].argmax(-1) == labels[head]))
        a8 = float(np.mean(int8[head].argmax(-1) == labels[head]))
        report[head] = {"fp32_accuracy": a32, "int8_accuracy": a8, "drop_points": round(100 * (a32 - a8), 2)}
    return report


def onnx_input_shape(onnx_path: str) -> tuple[int, ...]:
    """The ONNX model's image shape without the batch dimension."""
    return tuple(int(d) for d in onnx_session(onnx_path).get_inputs()[0].shape[1:])


def _missing(flags) -> str | None:
    if not Path(flags.onnx).is_file():
        return f"--onnx={flags.onnx}: no such file"
    if not (Path(flags.saved_model) / "saved_model.pb").is_file():
        return f"--saved_model={flags.saved_model}: no saved_model.pb there"
    if flags.keras_model and not Path(flags.keras_model).is_file():
        return f"--keras_model={flags.keras_model}: no such file"
    return None


def main(argv: list[str]) -> int:
    from absl import logging

    from mtl_keras import data
    from mtl_keras.flags import FLAGS, to_config

    del argv
    logging.set_verbosity(logging.WARNING)
    if problem := _missing(FLAGS):
        print(f"check_onnx: error: {problem}", file=sys.stderr)
        return 1
    try:
        shape = onnx_input_shape(FLAGS.onnx)
        images = random_pixels(shape, FLAGS.num_random, FLAGS.seed)
        test = None
        if FLAGS.check_dataset:
            test = data.load_for(to_config(), dataset=FLAGS.check_dataset, download=False).test
            test_images = data.fit_images(test.images, shape).astype(np.float32)
            images = np.concatenate([images, test_images[:FLAGS.num_real]])
        saved = run_saved_model(FLAGS.saved_model, images)
        results = [compare(saved, run_onnx(FLAGS.onnx, images), FLAGS.atol, "saved_model vs onnx")]
        if FLAGS.keras_model:
            results.insert(0, compare(run_keras(FLAGS.keras_model, images), saved, FLAGS.atol,
                                      "keras vs saved_model"))
        int8_path, int8 = Path(FLAGS.onnx).with_name("model.int8.onnx"), None
        if test is not None and int8_path.is_file():
            int8 = int8_accuracy_drop(FLAGS.onnx, str(int8_path), test_images,
                                      {"fine": test.fine, "coarse": test.coarse})
    except Exception as e:  # one clear line, not a traceback
        print(f"check_onnx: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    int8_problems = [f"int8 {head}: -{r['drop_points']} points > {FLAGS.int8_max_drop}"
                     for head, r in (int8 or {}).items() if r["drop_points"] > FLAGS.int8_max_drop]
    ok = all(r.ok for r in results) and not int8_problems
    if FLAGS.json:
        print(json.dumps({"ok": ok, "comparisons": [dataclasses.asdict(r) | {"ok": r.ok} for r in results],
                          "int8": int8, "int8_problems": int8_problems}, indent=1))
    else:
        print("\n".join(r.table() for r in results))
        for head, r in (int8 or {}).items():
            print(f"int8 {head}: test accuracy {r['fp32_accuracy']:.2%} -> {r['int8_accuracy']:.2%} "
                  f"(-{r['drop_points']} points)")
        print("PASS" if ok else "FAIL: " + "; ".join([p for r in results for p in r.problems] + int8_problems))
    return 0 if ok else 1


if __name__ == "__main__":
    from absl import app, flags

    import mtl_keras.flags  # noqa: F401  (defines the flags before absl parses argv)

    flags.mark_flags_as_required(["saved_model", "onnx"])
    app.run(lambda argv: sys.exit(main(argv)))
