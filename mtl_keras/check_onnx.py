"""Parity check: the SavedModel (TensorFlow) and the ONNX model (onnxruntime, CPU) on the same inputs.

    python -m mtl_keras.check_onnx --saved_model=export/mtl_keras/1 --onnx=export/mtl_keras/1/model.onnx \
        [--atol=1e-5] [--check_dataset=shapes]

Inputs: random pixels, plus real test images when --check_dataset is given. For each output it prints the
max absolute difference and the argmax agreement; exit status 0 only when every output is within --atol
and every argmax agrees, 1 otherwise (with the reason).
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np


@dataclasses.dataclass
class OutputParity:
    name: str
    max_abs_diff: float
    argmax_agreement: float


@dataclasses.dataclass
class ParityResult:
    outputs: list[OutputParity]
    atol: float
    num_inputs: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def table(self) -> str:
        rows = [f"{'output':<8} {'max |diff|':>12} {'argmax agree':>13}"]
        rows += [f"{o.name:<8} {o.max_abs_diff:>12.3g} {o.argmax_agreement:>13.2%}" for o in self.outputs]
        verdict = "PASS" if self.ok else "FAIL: " + "; ".join(self.problems)
        return "\n".join(rows + [f"{self.num_inputs} inputs, atol {self.atol:g}: {verdict}"])


def random_pixels(shape: tuple[int, ...], n: int, seed: int = 0) -> np.ndarray:
    """`n` images of random integer pixel values 0-255 as float32."""
    return np.random.default_rng(seed).integers(0, 256, (n, *shape)).astype(np.float32)


def run_saved_model(saved_model_dir: str, images: np.ndarray) -> dict[str, np.ndarray]:
    import tensorflow as tf

    loaded = tf.saved_model.load(saved_model_dir)  # keep a reference: it owns the variables
    outputs = loaded.signatures["serving_default"](image=tf.constant(images))
    return {k: v.numpy() for k, v in outputs.items()}


def run_onnx(onnx_path: str, images: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {input_name: images})))


def compare(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], atol: float) -> ParityResult:
    """Per-output max abs diff and argmax agreement of `candidate` against `reference`."""
    problems, outputs = [], []
    if set(reference) != set(candidate):
        problems.append(f"output names differ: {sorted(reference)} vs {sorted(candidate)}")
    for name in sorted(set(reference) & set(candidate)):
        ref, cand = reference[name], candidate[name]
        if ref.shape != cand.shape:
            problems.append(f"{name}: shape {ref.shape} vs {cand.shape}")
            continue
        diff = float(np.max(np.abs(ref - cand))) if ref.size else 0.0
        agree = float(np.mean(ref.argmax(-1) == cand.argmax(-1))) if ref.size else 1.0
        outputs.append(OutputParity(name, diff, agree))
        if not diff <= atol:  # also catches NaN
            problems.append(f"{name}: max |diff| {diff:.3g} > atol {atol:g}")
        if agree < 1.0:
            problems.append(f"{name}: argmax agrees on {agree:.2%} only")
    n = len(next(iter(reference.values()))) if reference else 0
    return ParityResult(outputs, atol, n, problems)


def check(saved_model_dir: str, onnx_path: str, images: np.ndarray, atol: float = 1e-5) -> ParityResult:
    """Runs both models on `images` (float32 raw pixels) and compares every output."""
    return compare(run_saved_model(saved_model_dir, images), run_onnx(onnx_path, images), atol)


def main(argv: list[str]) -> int:
    from mtl_keras import data
    from mtl_keras.flags import FLAGS

    del argv
    from pathlib import Path

    if not Path(FLAGS.onnx).is_file():
        print(f"check_onnx: error: --onnx={FLAGS.onnx}: no such file", file=sys.stderr)
        return 1
    if not (Path(FLAGS.saved_model) / "saved_model.pb").is_file():
        print(f"check_onnx: error: --saved_model={FLAGS.saved_model}: no saved_model.pb there", file=sys.stderr)
        return 1
    try:
        reference_shape = tuple(run_onnx_input_shape(FLAGS.onnx))
        images = random_pixels(reference_shape, FLAGS.num_random, FLAGS.seed)
        if FLAGS.check_dataset:
            test = data.load(FLAGS.check_dataset, data_dir=FLAGS.data_dir, download=False).test
            real = data.fit_images(test.images[:FLAGS.num_real], reference_shape).astype(np.float32)
            images = np.concatenate([images, real])
        result = check(FLAGS.saved_model, FLAGS.onnx, images, FLAGS.atol)
    except Exception as e:  # one clear line, not a traceback
        print(f"check_onnx: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(result.table())
    return 0 if result.ok else 1


def run_onnx_input_shape(onnx_path: str) -> list[int]:
    """The ONNX model's image shape without the batch dimension."""
    import onnxruntime as ort

    shape = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"]).get_inputs()[0].shape[1:]
    return [int(d) for d in shape]


if __name__ == "__main__":
    from absl import app, flags

    import mtl_keras.flags  # noqa: F401  (defines the flags before absl parses argv)

    flags.mark_flags_as_required(["saved_model", "onnx"])
    app.run(lambda argv: sys.exit(main(argv)))
