"""Verification of an export: parity Keras <-> SavedModel <-> ONNX, and the int8 model's accuracy drop.

`verify` is the one check every entry point runs (train on either backend, `python -m mtl_keras.export`,
`python -m mtl_keras.check_onnx`): per pair of runtimes and per output the max and mean absolute difference
and the argmax agreement on the same inputs (random pixels, plus real test images when given; the SavedModel's
serving_bytes signature gets them PNG-encoded and is compared with serving_default on the same pixels), and, with
labelled test batches and an int8 model, the test-accuracy drop per head. It passes only when every output
is within `atol`, every argmax agrees and int8 loses at most `int8_max_drop` points.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from mtl_keras.serving import runtime, signatures


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


@dataclasses.dataclass
class Verification:
    comparisons: list[ParityResult]
    int8: dict[str, dict[str, float]] | None  # head -> fp32 / int8 accuracy and the drop in points
    int8_max_drop: float

    @property
    def int8_problems(self) -> list[str]:
        return [f"int8 {head}: -{r['drop_points']} points > {self.int8_max_drop}"
                for head, r in (self.int8 or {}).items() if r["drop_points"] > self.int8_max_drop]

    @property
    def problems(self) -> list[str]:
        return [p for r in self.comparisons for p in r.problems] + self.int8_problems

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {"ok": self.ok, "comparisons": [dataclasses.asdict(r) | {"ok": r.ok} for r in self.comparisons],
                "int8": self.int8, "int8_problems": self.int8_problems}

    def text(self) -> str:
        lines = [r.table() for r in self.comparisons]
        lines += [f"int8 {head}: test accuracy {r['fp32_accuracy']:.2%} -> {r['int8_accuracy']:.2%} "
                  f"({-r['drop_points']:+.2f} points)" for head, r in (self.int8 or {}).items()]
        return "\n".join(lines + ["PASS" if self.ok else "FAIL: " + "; ".join(self.problems)])

    def metrics(self) -> dict:
        """The metrics.json entries of a run: SavedModel vs ONNX per output, every comparison, int8, ok."""
        onnx = next((r for r in self.comparisons if r.pair == "saved_model vs onnx"), None)
        out = {"onnx_parity": {o.name: {"max_abs_diff": o.max_abs_diff, "argmax_agreement": o.argmax_agreement}
                               for o in (onnx.outputs if onnx else [])},
               "onnx_parity_ok": self.ok, "onnx_parity_problems": self.problems,
               "parity": self.to_json()["comparisons"]}
        if self.int8 is not None:
            out["int8"] = self.int8
        return out


def random_pixels(shape: tuple[int, ...], n: int, seed: int = 0) -> np.ndarray:
    """`n` images of random integer pixel values 0-255 as float32."""
    return np.random.default_rng(seed).integers(0, 256, (n, *shape)).astype(np.float32)


def compare(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], atol: float,
            pair: str = "saved_model vs onnx") -> ParityResult:
    """Per-output max / mean abs diff and argmax agreement of `candidate` against `reference`."""
    problems, outputs = [], []
    if set(reference) != set(candidate):
        problems.append(f"output names differ: {sorted(reference)} vs {sorted(candidate)}")
    if not set(reference) & set(candidate):  # nothing compared proves nothing
        problems.append("no output in common: nothing was compared")
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


def bytes_parity(saved: runtime.Runtime, images: np.ndarray, atol: float) -> ParityResult:
    """serving_bytes on `images` (rounded to uint8) sent as PNG strings against serving_default on the same
    pixels; its top-k lists must be serving/answers.py's (the answered class first, then the most probable
    others) and its label / level the hedged answer."""
    from mtl_keras.serving import answers

    pixels = np.clip(np.round(images), 0, 255).astype(np.uint8)
    out = signatures.run_bytes(saved.handle, signatures.encode_png(pixels))
    reference = saved(pixels.astype(np.float32))
    result = compare(reference, {head: out[head] for head in reference if head in out}, atol,
                     f"serving_default vs {signatures.BYTES}")
    decoding = answers.Decoding.from_dict(saved.decoding)
    ids = answers.pair({h: out.get(h, p) for h, p in reference.items()}, decoding.fine_to_coarse,
                       decoding.consistent)
    names = {h: np.asarray(saved.names.get(h) or [str(i) for i in range(p.shape[1])]) for h, p in reference.items()}
    for head, probabilities in reference.items():
        scores, classes = out.get(f"{head}_scores"), out.get(f"{head}_classes")
        if scores is None or classes is None:
            result.problems.append(f"{head}: {signatures.BYTES} has no {head}_scores / {head}_classes")
            continue
        order = answers.ranked(probabilities, ids[head], scores.shape[1])
        if not np.allclose(scores, np.take_along_axis(probabilities, order, -1), rtol=0, atol=atol):
            result.problems.append(f"{head}_scores: not the answered class's, then the largest probabilities")
        if [c.decode() for c in classes[:, 0]] != names[head][ids[head]].tolist():
            result.problems.append(f"{head}_classes: first name is not the answered class")
    if set(ids) == {"fine", "coarse"}:
        fine_level = answers.at_fine_level({h: out.get(h, p) for h, p in reference.items()}, ids,
                                           decoding.hedge_threshold)
        expected = np.where(fine_level, names["fine"][ids["fine"]], names["coarse"][ids["coarse"]])
        if "label" not in out or [c.decode() for c in out["label"]] != expected.tolist():
            result.problems.append(f"label: {signatures.BYTES} does not give the hedged answer")
    return result


def int8_accuracy_drop(fp32: runtime.Runtime, int8: runtime.Runtime,
                       batches: Iterable[tuple[np.ndarray, dict[str, np.ndarray]]]) -> dict[str, dict[str, float]]:
    """Test accuracy per head of the fp32 and int8 models over labelled `batches` (streamed, so a split of
    image files is never decoded whole), and the drop in percentage points."""
    right: dict[str, list[int]] = {}
    for images, labels in batches:
        a, b = fp32(images), int8(images)
        for head in sorted(set(a) & set(labels)):
            counts = right.setdefault(head, [0, 0, 0])
            counts[0] += int(np.sum(a[head].argmax(-1) == labels[head]))
            counts[1] += int(np.sum(b[head].argmax(-1) == labels[head]))
            counts[2] += len(labels[head])
    report = {}
    for head, (r32, r8, n) in right.items():
        a32, a8 = r32 / max(n, 1), r8 / max(n, 1)
        report[head] = {"fp32_accuracy": a32, "int8_accuracy": a8, "drop_points": round(100 * (a32 - a8), 2)}
    return report


def verify(saved_model: str | Path, onnx: str | Path, images: np.ndarray, *, keras_model=None,
           int8: str | Path | None = None, labelled_batches: Iterable | None = None, atol: float = 1e-5,
           int8_max_drop: float = 1.0) -> Verification:
    """Runs every artifact on `images` (float32 raw pixels) and compares: Keras vs SavedModel (when
    `keras_model`, a path or a model, is given) and SavedModel vs ONNX; with `int8` and `labelled_batches`,
    also the int8 model's accuracy drop against the ONNX model."""
    saved = runtime.load(saved_model, "--saved_model")
    onnx_runtime = runtime.load(onnx, "--onnx")
    saved_out = saved(images)
    comparisons = [compare(saved_out, onnx_runtime(images), atol, "saved_model vs onnx")]
    if signatures.BYTES in getattr(saved.handle, "signatures", {}):  # exports of 0.1.0 before serving_bytes lack it
        comparisons.append(bytes_parity(saved, images, atol))
    if keras_model is not None:
        keras_out = runtime.load(keras_model, "--keras_model")(images)
        comparisons.insert(0, compare(keras_out, saved_out, atol, "keras vs saved_model"))
    drop = None
    if int8 is not None and labelled_batches is not None and Path(int8).is_file():
        drop = int8_accuracy_drop(onnx_runtime, runtime.load(int8, "--int8"), labelled_batches)
    return Verification(comparisons, drop, int8_max_drop)
