"""How far an answer can be trusted: calibration, mistake severity and the hedged answer, from probabilities.

    ece                      expected calibration error of a head: 15 equal-width confidence bins, the
                             |accuracy - mean confidence| of each weighted by its share of images (Guo et al. 2017)
    fit_temperature          one temperature per calibrated distribution, by validation negative log-likelihood;
                             `--calibrate` keeps it only where it lowers validation ECE (`calibrate`)
    within_superclass        share of the wrong fine answers whose class is still in the true superclass (the
                             mistake severity of hierarchy-aware work)
    hedge_metrics            the hedged answer (serving/answers.py) on test images: precision at each level,
                             coverage (share answered at the fine level) and the risk-coverage curve's area (AURC)

A temperature divides the log-probabilities of the fine head (and, with a learned coarse head, of the coarse
head, each its own); with --coarse_head=marginal | both the coarse output is re-marginalised from the tempered
fine one, as models.hierarchy.Tempered does inside the exported model. numpy only.
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 15
TEMPERATURES = np.exp(np.linspace(np.log(0.05), np.log(20.0), 301))  # the grid searched: 0.05 to 20, 2 % steps
EPSILON = 1e-7


def ece(probs: np.ndarray, truth: np.ndarray, bins: int = ECE_BINS) -> float | None:
    """Expected calibration error of the argmax answers over the labelled images (truth >= 0)."""
    keep = np.asarray(truth) >= 0
    if not keep.any():
        return None
    conf, hit = probs[keep].max(-1), probs[keep].argmax(-1) == truth[keep]
    which = np.minimum((conf * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(hit[inside].mean() - conf[inside].mean())
    return float(total)


def reliability(probs: np.ndarray, truth: np.ndarray, bins: int = ECE_BINS) -> dict[str, list]:
    """Per bin: mean confidence, accuracy and image count (the reliability diagram's bars)."""
    keep = np.asarray(truth) >= 0
    conf, hit = probs[keep].max(-1), probs[keep].argmax(-1) == truth[keep]
    which = np.minimum((conf * bins).astype(int), bins - 1)
    rows = [(float(conf[which == b].mean()), float(hit[which == b].mean()), int((which == b).sum()))
            if (which == b).any() else (None, None, 0) for b in range(bins)]
    return {"confidence": [r[0] for r in rows], "accuracy": [r[1] for r in rows], "count": [r[2] for r in rows]}


def temper(p: np.ndarray, t: float) -> np.ndarray:
    """softmax(log p / t): probabilities at temperature `t`."""
    z = np.log(np.clip(np.asarray(p, np.float64), EPSILON, 1.0)) / t
    z = np.exp(z - z.max(-1, keepdims=True))
    return (z / z.sum(-1, keepdims=True)).astype(np.float32)


def apply(probs: dict[str, np.ndarray], temperature: dict[str, float], fine_to_coarse=None) -> dict[str, np.ndarray]:
    """`probs` at the given temperatures; a coarse head tied to the fine one (`fine_to_coarse` given) is the
    marginal of the tempered fine head."""
    out = {h: temper(p, temperature[h]) if h in temperature else p for h, p in probs.items()}
    if fine_to_coarse is not None and "fine" in temperature and "coarse" in out:
        from mtl_keras.models.hierarchy import membership

        out["coarse"] = (out["fine"] @ membership(fine_to_coarse)).astype(np.float32)
    return out


def nll(p: np.ndarray, truth: np.ndarray) -> float:
    keep = truth >= 0
    return float(-np.log(np.clip(p[keep, truth[keep]], EPSILON, 1.0)).mean())


def fit_temperature(p: np.ndarray, truth: np.ndarray) -> float:
    """The temperature of TEMPERATURES with the lowest negative log-likelihood on these labelled images."""
    keep = np.asarray(truth) >= 0
    logp = np.log(np.clip(np.asarray(p[keep], np.float64), EPSILON, 1.0))
    losses = []
    for t in TEMPERATURES:
        z = logp / t
        z = z - z.max(-1, keepdims=True)
        losses.append(float((np.log(np.exp(z).sum(-1)) - z[np.arange(len(z)), truth[keep]]).mean()))
    return float(TEMPERATURES[int(np.argmin(losses))])


def calibrate(truth: dict, probs: dict, fine_to_coarse=None) -> tuple[dict[str, float], dict]:
    """(temperatures kept, report) from validation labels and probabilities. With `fine_to_coarse` (a coarse
    head tied to the fine one) one temperature on the fine head, kept when it lowers the two heads' summed
    validation ECE; else one per head, each kept when it lowers that head's validation ECE."""
    groups = [["fine", "coarse"]] if fine_to_coarse is not None and "fine" in probs else [[h] for h in probs]
    kept, report = {}, {}
    for group in groups:
        head = group[0]
        t = fit_temperature(probs[head], truth[head])
        after = apply({h: probs[h] for h in group if h in probs}, {head: t}, fine_to_coarse)
        before_ece = sum(ece(probs[h], truth[h]) or 0.0 for h in group if h in probs)
        after_ece = sum(ece(after[h], truth[h]) or 0.0 for h in group if h in probs)
        report[head] = {"temperature": round(t, 4), "val_ece_before": round(before_ece, 5),
                        "val_ece_after": round(after_ece, 5), "kept": after_ece < before_ece}
        if after_ece < before_ece:
            kept[head] = round(t, 4)
    return kept, report


def within_superclass(truth: dict, preds: dict, fine_to_coarse) -> float | None:
    """Share of the wrong fine answers (on images with a fine label) whose class lies in the true superclass."""
    f2c = np.asarray(fine_to_coarse)
    wrong = (truth["fine"] >= 0) & (preds["fine"] != truth["fine"])
    if not wrong.any():
        return None
    return float(np.mean(f2c[preds["fine"][wrong]] == f2c[truth["fine"][wrong]]))


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(coverage, risk, AURC): answering the k most confident images at the fine level for every k, the share
    answered and the fine error among them; AURC is the mean risk over k (lower is better)."""
    order = np.argsort(-np.asarray(confidence), kind="stable")
    hits = np.asarray(correct, bool)[order]
    k = np.arange(1, len(hits) + 1)
    risk = 1.0 - np.cumsum(hits) / k
    return k / len(hits), risk, float(risk.mean()) if len(risk) else float("nan")


def hedge_metrics(truth: dict, probs: dict, ids: dict, threshold: float | None) -> dict:
    """The hedged answer on labelled images: fine- and coarse-level precision, coverage, overall accuracy, AURC."""
    from mtl_keras.serving.answers import at_fine_level, fine_confidence

    keep = (truth["fine"] >= 0) & (truth["coarse"] >= 0)
    fine_level = at_fine_level(probs, ids, threshold)[keep]
    fine_ok = (ids["fine"] == truth["fine"])[keep]
    coarse_ok = (ids["coarse"] == truth["coarse"])[keep]
    right = np.where(fine_level, fine_ok, coarse_ok)
    _, _, aurc = risk_coverage(fine_confidence(probs, ids)[keep], fine_ok)

    def share(hit, mask):
        return float(hit[mask].mean()) if mask.any() else None

    return {"hedge_threshold": threshold, "hedge_coverage": float(fine_level.mean()) if keep.any() else None,
            "hedge_fine_precision": share(fine_ok, fine_level), "hedge_coarse_precision": share(coarse_ok, ~fine_level),
            "hedge_accuracy": float(right.mean()) if keep.any() else None, "fine_aurc": aurc}
