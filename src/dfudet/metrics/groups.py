"""Results by group of photos: skin tone (Individual Typology Angle) and photo condition (brightness, sharpness).

Skin tone. ITA° = arctan((L* - 50) / b*) * 180 / pi (Chardon et al. 1991), from CIELAB (OpenCV's float conversion:
L* in 0..100, b* in about -110..110) of the skin AROUND the wound: a ring of one box size around each true ulcer
box, minus every box, in the photo's pixels; photos without ulcers use the whole photo. Only skin-coloured pixels
count (YCrCb 133 <= Cr <= 173 and 77 <= Cb <= 127, Chai & Ngan 1999, and L* >= 10 so black padding and deep shadow
are left out); the photo's ITA is the median over those pixels. Fewer than `MIN_SKIN_PIXELS` such pixels: "unknown"
(never guessed). Bands (Del Bino & Bernerd 2013): very light > 55°, light 41–55°, intermediate 28–41°, tan 10–28°,
brown -30–10°, dark < -30°.

Photo condition: mean brightness (luma) and sharpness as `dfudet.inference.quality` measures them, cut into three
bins at the split's own tertiles (the cut points are reported with the bins).

Per group: photos, ulcers, precision, recall and composite at the operating threshold with 95% bootstrap intervals
over the group's photos; a group under `MIN_PHOTOS` photos is reported with its counts and flagged too small.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from dfudet.metrics.bootstrap import bootstrap_ci
from dfudet.metrics.scores import detection_scores

MIN_SKIN_PIXELS = 200
MIN_PHOTOS = 10
ITA_BANDS = ((55.0, "very light"), (41.0, "light"), (28.0, "intermediate"), (10.0, "tan"), (-30.0, "brown"),
             (-math.inf, "dark"))
UNKNOWN = "unknown"


def skin_mask(image: np.ndarray) -> np.ndarray:
    """Skin-coloured pixels of an RGB uint8 image (YCrCb box of Chai & Ngan, without black or near-black)."""
    ycrcb = cv2.cvtColor(image, cv2.COLOR_RGB2YCrCb)
    cr, cb = ycrcb[..., 1], ycrcb[..., 2]
    return (cr >= 133) & (cr <= 173) & (cb >= 77) & (cb <= 127) & (ycrcb[..., 0] >= 25)


def ring_mask(shape: tuple[int, int], boxes: np.ndarray) -> np.ndarray:
    """The area within one box size around each box, minus every box (the whole image when there are no boxes)."""
    h, w = shape
    if not len(boxes):
        return np.ones((h, w), bool)
    ring = np.zeros((h, w), bool)
    inside = np.zeros((h, w), bool)
    for x1, y1, x2, y2 in np.asarray(boxes, np.float64):
        bw, bh = x2 - x1, y2 - y1
        ring[max(0, int(y1 - bh)):int(math.ceil(y2 + bh)), max(0, int(x1 - bw)):int(math.ceil(x2 + bw))] = True
        inside[max(0, int(y1)):int(math.ceil(y2)), max(0, int(x1)):int(math.ceil(x2))] = True
    return ring & ~inside


def ita_degrees(image: np.ndarray, boxes: np.ndarray) -> float | None:
    """Median ITA° of the skin around the boxes (None: fewer than MIN_SKIN_PIXELS skin pixels there)."""
    lab = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    sel = ring_mask(image.shape[:2], boxes) & skin_mask(image) & (lab[..., 0] >= 10)
    if int(sel.sum()) < MIN_SKIN_PIXELS:
        return None
    ita = np.degrees(np.arctan2(lab[..., 0][sel] - 50.0, lab[..., 2][sel]))
    return float(np.median(ita))


def ita_band(ita: float | None) -> str:
    """The ITA band of an angle ("unknown" for None)."""
    if ita is None:
        return UNKNOWN
    return next(name for low, name in ITA_BANDS if ita > low)


def tertile_bins(values: Sequence[float], name: str) -> tuple[list[str], list[float], list[str]]:
    """Each value's bin among the split's tertiles ("low/mid/high <name>"), the two cut points, and the three bin
    names from low to high."""
    v = np.asarray(values, np.float64)
    cuts = [float(np.quantile(v, 1 / 3)), float(np.quantile(v, 2 / 3))] if len(v) else [math.nan, math.nan]
    names = [f"low {name} (< {cuts[0]:.1f})", f"mid {name} ({cuts[0]:.1f}–{cuts[1]:.1f})",
             f"high {name} (>= {cuts[1]:.1f})"]
    labels = [names[0] if x < cuts[0] else names[1] if x < cuts[1] else names[2] for x in v]
    return labels, cuts, names


def group_scores(groups: Sequence[str], preds: Sequence[tuple[np.ndarray, np.ndarray]], gts: Sequence[np.ndarray],
                 threshold: float, iou_threshold: float, weights: Any, n_boot: int, seed: int = 0,
                 order: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Precision, recall and composite per group of photos, with bootstrap intervals over each group's photos."""
    names = list(order) if order is not None else sorted(set(groups))
    out = []
    for g in names:
        idx = [i for i, x in enumerate(groups) if x == g]
        if not idx:
            continue
        p, t = [preds[i] for i in idx], [gts[i] for i in idx]
        s = detection_scores(p, t, threshold, iou_threshold, weights)
        row: dict[str, Any] = {"group": g, "photos": len(idx), "ulcer_photos": int(sum(len(x) > 0 for x in t)),
                               "ulcers": int(sum(len(x) for x in t)), "precision": s.precision, "recall": s.recall,
                               "composite": s.composite, "too_small": len(idx) < MIN_PHOTOS, "ci95": None}
        if n_boot > 0 and len(idx) >= 2:
            ci = bootstrap_ci(p, t, threshold, iou_threshold, weights, n_boot=n_boot, seed=seed)
            row["ci95"] = {k: [float(ci[k][0]), float(ci[k][1])] for k in ("precision", "recall", "composite")
                           if k in ci}
        out.append(row)
    return out
