"""Ulcers found by size: recall in bins of the true box's side √(w·h), in the photo's own pixels.

Small wounds are where detectors fail first, and one recall figure hides it: on FUSeg every pretrained FCOS run
finds 0 – 3 of the 27 test ulcers under 16 px and nearly all above 32 px (docs/experiments.md). Matching is the
report's own (greedy in score order, IoU >= iou_threshold, one prediction per ulcer): "found" counts ulcers matched
by a prediction at or above the operating threshold, "found_at_any_score" those matched by any prediction the
model returned, so the gap between the two is what a lower threshold could recover. "located" counts ulcers with a
returned box (any score) whose centre lies inside the true box, and "side_ratio" is the median, over them, of the
side √(w·h) of the best-scoring such box divided by the true side: on FUSeg the small ulcers are located but boxed
1.5 – 2× too large, which IoU 0.5 counts as a miss (docs/experiments.md), and a wound-size readout inherits that bias.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dfudet.errors import ConfigError
from dfudet.metrics.matching import check_inputs, match_ranked

SIZE_EDGES = (16.0, 32.0, 64.0)  # bins [0, 16), [16, 32), [32, 64), [64, inf) px of √(w·h)


def found_by_size(preds: Sequence[tuple[Any, Any]], gts: Sequence[Any], score_threshold: float,
                  iou_threshold: float = 0.5, edges: Sequence[float] = SIZE_EDGES) -> list[dict[str, Any]]:
    """One row per size bin: {min_side, max_side (None: open), ulcers, found, recall (None: no ulcers),
    found_at_any_score, located, side_ratio (None: none located)}."""
    e = [float(x) for x in edges]
    if not e or any(not np.isfinite(x) or x <= 0 for x in e) or any(b <= a for a, b in zip(e, e[1:])):
        raise ConfigError(f"size bin edges must be positive, finite and increasing, got {list(edges)}")
    p, g = check_inputs(preds, gts)
    n_bins = len(e) + 1
    total = np.zeros(n_bins, dtype=np.int64)
    found = np.zeros(n_bins, dtype=np.int64)
    found_any = np.zeros(n_bins, dtype=np.int64)
    ratios: list[list[float]] = [[] for _ in range(n_bins)]
    for (boxes, scores), gt in zip(p, g):
        if not len(gt):
            continue
        side = _sides(gt)
        bins = np.searchsorted(e, side, side="right")
        ranked = match_ranked(boxes, scores, gt, iou_threshold)
        hit_any = np.zeros(len(gt), dtype=bool)
        hit_any[ranked.matched_gt[ranked.is_tp]] = True
        kept = ranked.is_tp & (ranked.scores >= score_threshold)
        hit = np.zeros(len(gt), dtype=bool)
        hit[ranked.matched_gt[kept]] = True
        np.add.at(total, bins, 1)
        np.add.at(found, bins, hit.astype(np.int64))
        np.add.at(found_any, bins, hit_any.astype(np.int64))
        for b, r in zip(bins, _side_ratios(boxes, scores, gt, side)):
            if r is not None:
                ratios[b].append(r)
    lows = [0.0, *e]
    highs: list[float | None] = [*e, None]
    return [{"min_side": lo, "max_side": hi, "ulcers": int(n), "found": int(k),
             "recall": float(k / n) if n else None, "found_at_any_score": int(a),
             "located": len(r), "side_ratio": float(np.median(r)) if r else None}
            for lo, hi, n, k, a, r in zip(lows, highs, total, found, found_any, ratios)]


def _sides(boxes: np.ndarray) -> np.ndarray:
    """Side √(w·h) of each xyxy box (0 for a degenerate one)."""
    return np.sqrt(np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))


def _side_ratios(boxes: np.ndarray, scores: np.ndarray, gt: np.ndarray, side: np.ndarray) -> list[float | None]:
    """Per true box: side √(w·h) of the best-scoring box centred inside it ÷ its own side (None: no such box, or a
    zero-area true box)."""
    if not len(boxes):
        return [None] * len(gt)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    inside = ((cx[None] >= gt[:, 0:1]) & (cx[None] <= gt[:, 2:3])
              & (cy[None] >= gt[:, 1:2]) & (cy[None] <= gt[:, 3:4]))
    best = np.where(inside, scores[None].astype(np.float64), -np.inf).argmax(axis=1)
    pred_side = _sides(boxes)
    return [float(pred_side[k] / s) if inside[i].any() and s > 0 else None
            for i, (k, s) in enumerate(zip(best, side))]
