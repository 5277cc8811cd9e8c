"""Greedy per-image matching of predicted boxes to ground truth, as the DFU training scripts define it.

Definition (one image, boxes xyxy):

1. Keep the predictions with ``score >= score_threshold``; process them in descending score order, ties kept in
   their original order (stable sort).
2. Each prediction takes the still-unmatched ground-truth box of highest IoU (``torchvision.ops.box_iou``; among
   equal IoUs the lowest GT index). If that IoU ``>= iou_threshold`` the prediction is a true positive and the GT box
   becomes matched. Otherwise it is a false positive and the GT box stays unmatched (it is *not* consumed).
3. For every kept prediction the IoU with the box it took is recorded (``pred_ious``); it is 0 when no unmatched GT
   box remains (including images without ground truth). ``tp_ious`` holds the IoUs of true positives only.
4. Ground-truth boxes left unmatched are false negatives.

Because each decision depends only on the predictions ranked above it, the matching for any score threshold is a
prefix of the matching of *all* predictions. ``match_ranked`` computes that full ranking once per image (one
vectorised IoU matrix) and ``RankedMatch.at(threshold)`` slices it, which is what makes threshold sweeps and
bootstrap resampling cheap while giving exactly the same numbers as ``match_image``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from dfudet.errors import DataError


def to_numpy(x: Any, dtype: type = np.float64) -> np.ndarray:
    """Turn a numpy array, torch tensor (any device, with grad or not) or nested list into a CPU numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def as_boxes(x: Any, where: str) -> np.ndarray:
    """Validate and convert one image's boxes to an (N, 4) float64 xyxy array; `where` names the item in errors."""
    try:
        arr = to_numpy(x if x is not None else [])
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: boxes are not numeric ({exc})") from exc
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise DataError(f"{where}: boxes must have shape (N, 4) as x1, y1, x2, y2; got shape {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        raise DataError(f"{where}: boxes contain NaN or infinite values")
    bad = np.flatnonzero((arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1]))
    if len(bad):
        raise DataError(f"{where}: box {int(bad[0])} {arr[bad[0]].tolist()} has x2 < x1 or y2 < y1; "
                        "boxes must be x1, y1, x2, y2 in pixels")
    return arr


def as_scores(x: Any, n: int, where: str) -> np.ndarray:
    """Validate and convert one image's scores to an (N,) float64 array matching its N boxes."""
    try:
        arr = to_numpy(x if x is not None else []).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: scores are not numeric ({exc})") from exc
    if arr.shape[0] != n:
        raise DataError(f"{where}: {n} predicted boxes but {arr.shape[0]} scores; give one score per box")
    if not np.isfinite(arr).all():
        raise DataError(f"{where}: scores contain NaN or infinite values")
    return arr


def check_inputs(preds: Sequence[tuple[Any, Any]], gts: Sequence[Any]
                 ) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[np.ndarray]]:
    """Convert a data set of predictions and ground truths, raising DataError that names the bad image index."""
    if len(preds) != len(gts):
        raise DataError(f"predictions cover {len(preds)} images but ground truth covers {len(gts)}; "
                        "give one (boxes, scores) pair and one ground-truth box array per image, in the same order")
    out_p: list[tuple[np.ndarray, np.ndarray]] = []
    out_g: list[np.ndarray] = []
    for i, (pred, gt) in enumerate(zip(preds, gts)):
        try:
            boxes, scores = pred
        except (TypeError, ValueError) as exc:
            raise DataError(f"image {i}: a prediction must be a (boxes, scores) pair") from exc
        b = as_boxes(boxes, f"image {i} predictions")
        out_p.append((b, as_scores(scores, len(b), f"image {i} predictions")))
        out_g.append(as_boxes(gt, f"image {i} ground truth"))
    return out_p, out_g


@dataclass
class MatchResult:
    """Outcome of matching one image at one score threshold (lists are in processing = descending-score order)."""

    tp: int
    fp: int
    fn: int
    pred_ious: list[float] = field(default_factory=list)
    tp_ious: list[float] = field(default_factory=list)
    is_tp: list[bool] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    pred_index: list[int] = field(default_factory=list)   # original index of each kept prediction
    matched_gt: list[int] = field(default_factory=list)   # GT index a TP matched, -1 for an FP


@dataclass
class RankedMatch:
    """All predictions of one image matched in rank order; `at(t)` gives the match at any score threshold."""

    scores: np.ndarray      # (N,) descending
    is_tp: np.ndarray       # (N,) bool
    ious: np.ndarray        # (N,) IoU with the box each prediction took (0 when none was left)
    order: np.ndarray       # (N,) original prediction indices
    matched_gt: np.ndarray  # (N,) GT index for TPs, -1 for FPs
    n_gt: int

    def n_kept(self, score_threshold: float) -> int:
        """Number of predictions with score >= threshold (a prefix, since scores are sorted descending)."""
        return int(np.count_nonzero(self.scores >= score_threshold))

    def at(self, score_threshold: float) -> MatchResult:
        """The matching restricted to predictions with score >= score_threshold."""
        k = self.n_kept(score_threshold)
        is_tp = self.is_tp[:k]
        tp = int(is_tp.sum())
        return MatchResult(
            tp=tp, fp=k - tp, fn=self.n_gt - tp,
            pred_ious=[float(v) for v in self.ious[:k]],
            tp_ious=[float(v) for v in self.ious[:k][is_tp]],
            is_tp=[bool(v) for v in is_tp],
            scores=[float(v) for v in self.scores[:k]],
            pred_index=[int(v) for v in self.order[:k]],
            matched_gt=[int(v) for v in self.matched_gt[:k]],
        )


def match_ranked(boxes: Any, scores: Any, gt_boxes: Any, iou_threshold: float = 0.5) -> RankedMatch:
    """Match every prediction of one image greedily in score order (IoU computed once, vectorised)."""
    b = as_boxes(boxes, "predictions")
    s = as_scores(scores, len(b), "predictions")
    g = as_boxes(gt_boxes, "ground truth")
    order = np.argsort(-s, kind="stable")
    n, m = len(b), len(g)
    is_tp = np.zeros(n, dtype=bool)
    ious = np.zeros(n, dtype=np.float64)
    matched_gt = np.full(n, -1, dtype=np.int64)
    if n and m:
        # zero-area boxes give 0/0: count them as no overlap
        iou = np.nan_to_num(box_iou(torch.from_numpy(b[order]), torch.from_numpy(g)).numpy(), nan=0.0)
        taken = np.zeros(m, dtype=bool)
        for r in range(n):
            if taken.all():
                break  # nothing left to take: the remaining predictions are FPs with IoU 0
            row = np.where(taken, -1.0, iou[r])
            j = int(np.argmax(row))
            ious[r] = row[j]
            if row[j] >= iou_threshold:
                is_tp[r] = True
                matched_gt[r] = j
                taken[j] = True
    return RankedMatch(scores=s[order], is_tp=is_tp, ious=ious, order=order.astype(np.int64),
                       matched_gt=matched_gt, n_gt=m)


def match_image(boxes: Any, scores: Any, gt_boxes: Any, score_threshold: float = 0.5,
                iou_threshold: float = 0.5) -> MatchResult:
    """Match one image's predictions to its ground truth at one score threshold (see the module docstring)."""
    return match_ranked(boxes, scores, gt_boxes, iou_threshold).at(score_threshold)
