"""Calibrated confidence for box scores, its error (ECE) and the triage band (ulcer / review / no ulcer).

A detector's score is a ranking, not a probability. `fit_calibration` maps scores to the probability that a box is
a true ulcer at IoU >= 0.5 (each true ulcer matched once, greedily in score order: the evaluation's own matching),
fitted on the val split's boxes:
- Platt scaling (a logistic regression on the score's logit: two parameters, scipy's L-BFGS on the log-loss), or
- isotonic regression (scipy.optimize.isotonic_regression: monotone, step-wise, many parameters).
"auto" fits both and keeps the one with the lower log-loss in 5-fold cross-validation over val photos (folds by
photo, so boxes of one photo never sit on both sides); a calibration fitted on fewer than `MIN_BOXES` boxes (or with
no true or no false box among them) is refused with the count.

`expected_calibration_error` uses 15 equal-mass bins (each holds the same number of boxes, so the many low scores
and the few high ones are binned alike): sum over bins of (bin share) * |mean confidence - share true|.

Triage: besides the operating threshold (a box at or above it makes the photo `ulcer`), a review threshold is chosen
on val as the highest score at which at least `target` of the ulcer photos have a box: a photo whose best box lies
between the two is `review`, below both `no ulcer`. `triage_label` applies that rule (and a failed photo-quality
check, given by the caller, also sends a photo to review).

Nothing at import time needs torch: the ONNX runtime applies stored calibrations without it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import isotonic_regression, minimize

from dfudet.confidence import LABELS, Calibration, check_review_target, logit, triage_label
from dfudet.errors import ConfigError, DataError

__all__ = ["Calibration", "LABELS", "box_outcomes", "check_review_target", "choose_review_threshold",
           "cross_validated_loss", "expected_calibration_error", "fit_calibration", "log_loss", "reliability",
           "triage_label", "triage_table"]

MIN_BOXES = 30
ECE_BINS = 15
_EPS = 1e-6


def box_outcomes(preds: Sequence[tuple[np.ndarray, np.ndarray]], gts: Sequence[np.ndarray],
                 iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, is_true, photo index) of every predicted box: true when it matches a true ulcer at the IoU
    threshold, each ulcer taken once in score order."""
    from dfudet.metrics.matching import match_ranked  # torch (box_iou): the ONNX runtime only applies calibrations

    scores, truth, photo = [], [], []
    for i, ((boxes, s), g) in enumerate(zip(preds, gts)):
        m = match_ranked(boxes, s, g, iou_threshold)
        scores.append(m.scores)
        truth.append(m.is_tp)
        photo.append(np.full(len(m.scores), i, dtype=np.int64))
    if not scores:
        return np.zeros(0), np.zeros(0, bool), np.zeros(0, np.int64)
    return np.concatenate(scores).astype(np.float64), np.concatenate(truth), np.concatenate(photo)


def _platt_fit(scores: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    x, y = logit(scores), truth.astype(np.float64)

    def loss(p: np.ndarray) -> tuple[float, np.ndarray]:
        z = p[0] * x + p[1]
        q = 1 / (1 + np.exp(-z))
        nll = float(np.sum(np.logaddexp(0, z) - y * z))
        g = q - y
        return nll, np.array([np.sum(g * x), np.sum(g)])

    res = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    return float(res.x[0]), float(res.x[1])


def _isotonic_fit(scores: np.ndarray, truth: np.ndarray) -> tuple[list[float], list[float]]:
    order = np.argsort(scores, kind="stable")
    x, y = scores[order], truth[order].astype(np.float64)
    fitted = isotonic_regression(y, increasing=True).x
    # keep one knot per run of equal fitted values (its two ends), enough for np.interp to reproduce the steps
    keep = np.ones(len(x), bool)
    if len(x) > 2:
        same_prev = np.r_[False, fitted[1:] == fitted[:-1]]
        same_next = np.r_[fitted[:-1] == fitted[1:], False]
        keep = ~(same_prev & same_next)
    return [float(v) for v in x[keep]], [float(v) for v in np.clip(fitted[keep], _EPS, 1 - _EPS)]


def _fit(method: str, scores: np.ndarray, truth: np.ndarray, iou: float) -> Calibration:
    n, t = int(len(scores)), int(truth.sum())
    if method == "platt":
        a, b = _platt_fit(scores, truth)
        return Calibration("platt", a=a, b=b, n_boxes=n, n_true=t, iou_threshold=iou)
    kx, ky = _isotonic_fit(scores, truth)
    return Calibration("isotonic", knots_x=tuple(kx), knots_y=tuple(ky), n_boxes=n, n_true=t, iou_threshold=iou)


def log_loss(p: np.ndarray, truth: np.ndarray) -> float:
    """Mean negative log-likelihood of the outcomes under probabilities p."""
    q = np.clip(np.asarray(p, np.float64), _EPS, 1 - _EPS)
    y = np.asarray(truth, np.float64)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))) if len(q) else math.nan


def cross_validated_loss(method: str, scores: np.ndarray, truth: np.ndarray, photo: np.ndarray, folds: int = 5,
                         seed: int = 0) -> float:
    """Log-loss of `method` fitted on 4/5 of the photos and scored on the rest, over 5 folds by photo."""
    ids = np.unique(photo)
    rng = np.random.default_rng(seed)
    fold_of = dict(zip(rng.permutation(ids).tolist(), np.arange(len(ids)) % folds))
    f = np.array([fold_of[int(p)] for p in photo])
    total, count = 0.0, 0
    for k in range(folds):
        test, train = f == k, f != k
        if not test.any() or truth[train].all() or not truth[train].any():
            continue
        p = _fit(method, scores[train], truth[train], 0.5).apply(scores[test])
        total += log_loss(p, truth[test]) * int(test.sum())
        count += int(test.sum())
    return total / count if count else math.inf


def fit_calibration(scores: Any, truth: Any, photo: Any | None = None, method: str = "auto",
                    iou_threshold: float = 0.5, min_boxes: int = MIN_BOXES) -> tuple[Calibration, dict[str, float]]:
    """Fit the score -> probability map on val boxes; returns it and the cross-validated log-loss per method tried.

    Args:
        scores: every val box's score (down to the model's lowest score).
        truth: whether each box matched a true ulcer (see `box_outcomes`).
        photo: each box's photo index, for the folds of "auto" (None: every box its own photo).
        method: "platt", "isotonic", or "auto" (the lower cross-validated log-loss of the two).
        iou_threshold: recorded with the calibration (the IoU at which `truth` was decided).
        min_boxes: fewer boxes than this is refused.

    Returns:
        (Calibration, {method: cross-validated log-loss}).
    """
    s = np.asarray(scores, np.float64).reshape(-1)
    y = np.asarray(truth, bool).reshape(-1)
    if method not in ("auto", "platt", "isotonic"):
        raise ConfigError(f"calibration method must be auto, platt or isotonic, got {method!r}")
    if len(s) < min_boxes:
        raise DataError(f"cannot fit a calibration on {len(s)} val boxes (at least {min_boxes} needed): the "
                        "probabilities would be noise; use a larger val split")
    if y.all() or not y.any():
        raise DataError(f"cannot fit a calibration: all {len(s)} val boxes are {'true' if y.all() else 'false'} "
                        "ulcers, so nothing tells a true box from a false one")
    p = np.arange(len(s)) if photo is None else np.asarray(photo).reshape(-1)
    tried = ("platt", "isotonic") if method == "auto" else (method,)
    losses = {m: cross_validated_loss(m, s, y, p) for m in tried} if method == "auto" else {}
    chosen = min(losses, key=lambda m: losses[m]) if losses else method
    return _fit(chosen, s, y, iou_threshold), losses


def reliability(confidence: Any, truth: Any, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Equal-mass bins of (mean confidence, share true, count), low to high confidence."""
    c = np.asarray(confidence, np.float64).reshape(-1)
    y = np.asarray(truth, np.float64).reshape(-1)
    if not len(c):
        return []
    order = np.argsort(c, kind="stable")
    out = []
    for chunk in np.array_split(order, min(bins, len(c))):
        if len(chunk):
            out.append({"confidence": float(c[chunk].mean()), "share_true": float(y[chunk].mean()),
                        "count": int(len(chunk))})
    return out


def expected_calibration_error(confidence: Any, truth: Any, bins: int = ECE_BINS) -> float:
    """ECE over equal-mass bins: sum of (bin share) * |mean confidence - share true|."""
    rows = reliability(confidence, truth, bins)
    n = sum(r["count"] for r in rows)
    return float(sum(r["count"] / n * abs(r["confidence"] - r["share_true"]) for r in rows)) if n else math.nan


def choose_review_threshold(best_scores: Any, has_ulcer: Any, target: float, operating: float) -> float:
    """The highest threshold (never above `operating`) at which at least `target` of the ulcer photos have a box.

    Args:
        best_scores: each photo's highest box score (0 for a photo without boxes).
        has_ulcer: whether each photo holds a true ulcer.
        target: image-level sensitivity to reach, in (0, 1].
        operating: the operating threshold (the review band lies below it).
    """
    target = check_review_target(target)
    b = np.asarray(best_scores, np.float64)[np.asarray(has_ulcer, bool)]
    if not len(b):
        raise DataError("cannot choose a review threshold: the val split has no ulcer photo")
    # the k-th highest best score keeps k photos; need k >= ceil(target * n)
    k = max(1, math.ceil(target * len(b) - 1e-9))
    t = float(np.sort(b)[::-1][k - 1])
    return min(t, float(operating))


def triage_table(best_scores: Any, has_ulcer: Any, operating: float, review: float,
                 quality_ok: Any | None = None) -> dict[str, Any]:
    """Counts of each label, the triage sensitivity (ulcer photos labelled ulcer or review), the share of photos sent
    to review, and the false-alarm share on ulcer-free photos (labelled ulcer or review)."""
    b = np.asarray(best_scores, np.float64)
    u = np.asarray(has_ulcer, bool)
    q = np.ones(len(b), bool) if quality_ok is None else np.asarray(quality_ok, bool)
    labels = np.array([triage_label(s, operating, review, bool(ok)) for s, ok in zip(b, q)])
    flagged = labels != "no ulcer"
    return {"operating_threshold": float(operating), "review_threshold": float(review),
            "photos": int(len(b)), "ulcer_photos": int(u.sum()), "ulcer_free_photos": int((~u).sum()),
            "labels": {lab: int((labels == lab).sum()) for lab in LABELS},
            "labels_ulcer_photos": {lab: int((labels[u] == lab).sum()) for lab in LABELS},
            "labels_ulcer_free_photos": {lab: int((labels[~u] == lab).sum()) for lab in LABELS},
            "sensitivity": float(flagged[u].mean()) if u.any() else math.nan,
            "sensitivity_operating_only": float((labels[u] == "ulcer").mean()) if u.any() else math.nan,
            "review_share": float((labels == "review").mean()) if len(b) else math.nan,
            "false_alarm_share": float(flagged[~u].mean()) if (~u).any() else math.nan,
            "false_alarm_share_operating_only": float((labels[~u] == "ulcer").mean()) if (~u).any() else math.nan}


def ulcer_free_alarms(best_scores: Any, n_kept: Any, groups: Sequence[str]) -> list[dict[str, Any]]:
    """Per group of ulcer-free photos (e.g. their folder): how many, the share with any box at the operating
    threshold (95% Wilson interval, scipy's binomtest) and boxes per photo."""
    from scipy.stats import binomtest

    kept = np.asarray(n_kept, np.int64)
    out = []
    for g in sorted(set(groups)):
        idx = [i for i, x in enumerate(groups) if x == g]
        n, k = len(idx), int((kept[idx] > 0).sum())
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        out.append({"group": g, "photos": n, "photos_with_a_box": k, "share_with_a_box": k / n,
                    "ci95": [float(ci.low), float(ci.high)], "boxes_per_photo": float(kept[idx].sum() / n),
                    "best_score_median": float(np.median(np.asarray(best_scores, np.float64)[idx]))})
    return out


def calibration_report(preds: Sequence[tuple[np.ndarray, np.ndarray]], gts: Sequence[np.ndarray],
                       calibration: Calibration | None, threshold: float, iou_threshold: float = 0.5
                       ) -> dict[str, Any]:
    """ECE of the raw scores and of the calibrated confidence on this split (every box the model returned, and the
    boxes kept at the threshold), with the reliability bins behind the diagram."""
    scores, truth, _ = box_outcomes(preds, gts, iou_threshold)
    kept = scores >= threshold
    out: dict[str, Any] = {"bins": f"{ECE_BINS} equal-mass", "boxes": int(len(scores)), "true_boxes": int(truth.sum()),
                           "kept_boxes": int(kept.sum()), "method": None if calibration is None else calibration.method,
                           "ece_raw": expected_calibration_error(scores, truth),
                           "ece_raw_kept": expected_calibration_error(scores[kept], truth[kept]),
                           "reliability_raw": reliability(scores, truth)}
    if calibration is not None:
        conf = calibration.apply(scores)
        out.update({"ece_calibrated": expected_calibration_error(conf, truth),
                    "ece_calibrated_kept": expected_calibration_error(conf[kept], truth[kept]),
                    "reliability_calibrated": reliability(conf, truth)})
    return out
