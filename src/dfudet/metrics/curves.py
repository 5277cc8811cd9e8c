"""Precision-recall curve, FROC and composite-vs-threshold series, plus PNG plots of each.

Every point uses the matching and score definitions of ``dfudet.metrics.scores`` (one ranking per image).

- PR curve: one point per distinct prediction score ``t`` (predictions with score >= t kept), descending ``t``, so
  recall never decreases along the curve. ``ap`` is the all-point interpolated average precision (VOC 2010+): the
  precision envelope (running max from the right) integrated over recall, with recall 0..1 and the envelope 0 past
  the last point. 0 when there is no ground-truth box.
- FROC: lesion-level sensitivity ``TP / n_gt`` against mean false positives per image ``FP / n_images`` at every
  distinct score, starting from the point (0, 0) where nothing is kept. Sensitivity at the standard FP rates
  1/8, 1/4, 1/2, 1, 2, 4, 8 is linearly interpolated (for a repeated FP value the highest sensitivity is used; rates
  past the last point take its sensitivity, the curve cannot go further); ``froc_score`` is their mean.
- Threshold series: the composite and its parts against the score threshold, from ``sweep_thresholds``.

Plots draw on a bare matplotlib Figure with the Agg canvas (no pyplot, no global backend switch) and are written
atomically.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dfudet.metrics.scores import Scores, pick_best, rank_dataset, scores_from_ranked
from dfudet.utils import atomic_write_bytes

STANDARD_FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
SERIES_KEYS: tuple[str, ...] = ("composite", "f1", "precision", "recall", "mean_iou")


def _distinct_scores(ranked: Sequence[Any]) -> np.ndarray:
    scores = np.concatenate([r.scores for r in ranked])
    return np.unique(scores)[::-1]


def all_point_ap(recall: Sequence[float], precision: Sequence[float]) -> float:
    """Area under the precision envelope over recall (points in increasing recall order)."""
    mrec = np.concatenate([[0.0], np.asarray(recall, dtype=np.float64), [1.0]])
    mpre = np.concatenate([[0.0], np.asarray(precision, dtype=np.float64), [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def pr_curve(preds: Sequence[tuple[Any, Any]], gts: Sequence[Any], iou_threshold: float = 0.5) -> dict[str, Any]:
    """Precision and recall at every distinct score, and the all-point AP at `iou_threshold`."""
    ranked = rank_dataset(preds, gts, iou_threshold)
    ts = _distinct_scores(ranked)
    rows = scores_from_ranked(ranked, ts, iou_threshold) if len(ts) else []
    n_gt = sum(r.n_gt for r in ranked)
    recall = [row.tp / n_gt if n_gt else 0.0 for row in rows]
    precision = [row.precision for row in rows]
    return {
        "thresholds": [float(t) for t in ts], "precision": precision, "recall": recall,
        "ap": all_point_ap(recall, precision) if n_gt and rows else 0.0,
        "iou_threshold": float(iou_threshold), "n_gt": n_gt,
    }


def froc(preds: Sequence[tuple[Any, Any]], gts: Sequence[Any], iou_threshold: float = 0.5,
         fp_rates: Sequence[float] = STANDARD_FP_RATES) -> dict[str, Any]:
    """FROC points (sensitivity vs mean FPs per image) and sensitivity at standard FP rates."""
    ranked = rank_dataset(preds, gts, iou_threshold)
    ts = _distinct_scores(ranked)
    rows = scores_from_ranked(ranked, ts, iou_threshold) if len(ts) else []
    n_gt, n_img = sum(r.n_gt for r in ranked), len(ranked)
    sens = np.array([0.0] + [row.tp / n_gt if n_gt else 0.0 for row in rows])
    fps = np.array([0.0] + [row.fp / n_img for row in rows])
    # fps and sens both grow as the threshold falls; keep the best sensitivity per distinct FP value for np.interp
    uniq_fps, last = np.unique(fps[::-1], return_index=True)
    uniq_sens = sens[::-1][last]
    rates = np.asarray(fp_rates, dtype=np.float64)
    at_rates = np.interp(rates, uniq_fps, uniq_sens)
    return {
        "thresholds": [float("inf")] + [float(t) for t in ts],
        "sensitivity": [float(v) for v in sens], "fp_per_image": [float(v) for v in fps],
        "fp_rates": [float(v) for v in rates], "sensitivity_at_rates": [float(v) for v in at_rates],
        "froc_score": float(at_rates.mean()) if len(rates) else 0.0,
        "iou_threshold": float(iou_threshold), "n_gt": n_gt, "n_images": n_img,
    }


def threshold_series(sweep: Sequence[Scores]) -> dict[str, list[float]]:
    """Column view of a `sweep_thresholds` result: thresholds and the composite with its parts."""
    out = {"thresholds": [float(s.score_threshold) for s in sweep]}
    for k in SERIES_KEYS:
        out[k] = [float(getattr(s, k)) for s in sweep]
    return out


def _save(fig: Figure, path: Path | str) -> Path:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def plot_pr(curve: Mapping[str, Any], path: Path | str) -> Path:
    """Write the PR curve of `pr_curve` as a PNG."""
    fig = Figure(figsize=(5, 4.5))
    ax = fig.add_subplot()
    ax.plot(curve["recall"], curve["precision"], drawstyle="steps-post", color="tab:blue")
    ax.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
           title=f"PR @ IoU {curve['iou_threshold']:.2f}  AP {curve['ap']:.3f}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_froc(points: Mapping[str, Any], path: Path | str) -> Path:
    """Write the FROC curve of `froc` (log2 FP axis, standard rates marked) as a PNG."""
    fig = Figure(figsize=(5, 4.5))
    ax = fig.add_subplot()
    fps = np.asarray(points["fp_per_image"], dtype=np.float64)
    pos = fps > 0  # the (0, 0) start cannot sit on a log axis
    ax.plot(fps[pos], np.asarray(points["sensitivity"])[pos], drawstyle="steps-post", color="tab:red")
    ax.plot(points["fp_rates"], points["sensitivity_at_rates"], "o", color="black", ms=4)
    ax.set_xscale("log", base=2)
    ax.set(ylim=(0, 1.02), xlabel="mean false positives per image", ylabel="sensitivity",
           title=f"FROC  score {points['froc_score']:.3f}")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return _save(fig, path)


def plot_threshold_sweep(sweep: Sequence[Scores], path: Path | str) -> Path:
    """Write the composite and its parts against the score threshold as a PNG, best threshold marked."""
    series = threshold_series(sweep)
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    for k in SERIES_KEYS:
        ax.plot(series["thresholds"], series[k], label=k, lw=2.2 if k == "composite" else 1.2)
    if sweep:
        thr, row = pick_best(sweep)
        ax.axvline(thr, color="grey", ls="--", lw=1)
        ax.set_title(f"best threshold {thr:.2f}  composite {row.composite:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="score threshold", ylabel="score")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_reliability(report: Mapping[str, Any], path: Path | str) -> Path:
    """Reliability diagram of `calibration_report`: share of true boxes against mean confidence per equal-mass
    bin, raw scores and (when the model has one) the calibrated confidence, with each curve's ECE."""
    fig = Figure(figsize=(5, 4.5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    curves = [("reliability_raw", "ece_raw", "raw score", "tab:orange")]
    if report.get("reliability_calibrated"):
        curves.append(("reliability_calibrated", "ece_calibrated", f"confidence ({report['method']})", "tab:blue"))
    for key, ece, name, color in curves:
        rows = report.get(key) or []
        ax.plot([r["confidence"] for r in rows], [r["share_true"] for r in rows], "o-", color=color, ms=4,
                label=f"{name}, ECE {report[ece]:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="mean predicted probability (bin)", ylabel="share of true ulcers",
           title=f"Reliability, {report['boxes']} boxes, {report['bins']} bins")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
