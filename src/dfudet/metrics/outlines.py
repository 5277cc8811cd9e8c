"""Wound-outline scores: pixel Dice and IoU of the wound area, and the area error of each found ulcer.

Definitions (one image; masks are COCO RLEs of that image, ``dfudet.data.instance_masks``):

- ``P`` is the union of the predicted masks with ``score >= score_threshold``, ``G`` the union of the image's
  ground-truth masks. ``Dice = 2|P∩G| / (|P| + |G|)``, ``IoU = |P∩G| / |P∪G|``.
- An **ulcer image** has ground-truth wound pixels (``|G| > 0``); ``mean_dice`` and ``mean_iou`` average over those
  images only. An **ulcer-free image** has none; ``healthy_false_pixel_share`` is the share of them with any
  predicted wound pixel (``|P| > 0``).
- ``aggregate_dice = 2 Σ|P∩G| / (Σ|P| + Σ|G|)`` over every image of the data set (ulcer-free ones add their false
  pixels to ``Σ|P|``): the "data-based" Dice the FUSeg challenge reports. It is 1 when the data set has neither
  predicted nor true wound pixels.
- **Area error.** Predictions are matched to ground-truth ulcers one-to-one by their boxes exactly as the detection
  scores match them (``dfudet.metrics.matching``, same score and IoU thresholds), so the matched pairs are the
  detection TPs. For each pair, ``(area(pred mask) - area(true mask)) / area(true mask)`` in pixels is its signed
  relative error (pairs whose true mask is empty are left out); ``area_error_median`` and ``area_error_p90`` are
  the median and 90th percentile of its absolute value (``numpy.percentile``, linear), ``area_bias`` the mean of the
  signed value (> 0: outlines too large).
- A figure with nothing to average over (no ulcer image, no ulcer-free image, no matched pair) is ``None``.

Bootstrap intervals (``outline_bootstrap_ci``) resample whole images as ``dfudet.metrics.bootstrap`` does, with the
same generator calls, so a seed draws the same image samples as the detection CIs; a replicate repeats an image's
pixels and area errors as often as the image was drawn. Replicates without any image of the needed kind are left
out of that figure's interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from dfudet.errors import DataError
from dfudet.metrics.bootstrap import check_bootstrap_args, resample_counts
from dfudet.metrics.matching import as_boxes, as_scores, match_ranked

OUTLINE_CI_METRICS: tuple[str, ...] = ("mean_dice", "mean_iou", "aggregate_dice", "area_error_median",
                                       "area_error_p90")
Rle = dict[str, Any]  # a COCO RLE {"size": [h, w], "counts": ...}, as dfudet.data.instance_masks writes them


@dataclass(frozen=True)
class ImageOutline:
    """One image reduced to its wound pixels at the threshold and the signed area errors of its matched ulcers."""

    intersection: int  # |P ∩ G|
    predicted: int     # |P|
    truth: int         # |G|
    area_errors: tuple[float, ...]  # signed relative area error of each matched ulcer
    n_matched: int     # matched pairs (detection TPs), including any left out of area_errors

    @property
    def dice(self) -> float:
        """2|P∩G| / (|P| + |G|); 1 when both are empty."""
        total = self.predicted + self.truth
        return 2.0 * self.intersection / total if total else 1.0

    @property
    def iou(self) -> float:
        """|P∩G| / |P∪G|; 1 when both are empty."""
        union = self.predicted + self.truth - self.intersection
        return self.intersection / union if union else 1.0


@dataclass(frozen=True)
class OutlineScores:
    """Data-set outline scores at one score threshold (definitions in the module docstring)."""

    mean_dice: float | None       # over ulcer images
    mean_iou: float | None        # over ulcer images
    aggregate_dice: float         # pooled over every image (FUSeg's data-based Dice)
    healthy_false_pixel_share: float | None  # ulcer-free images with any predicted wound pixel
    area_n: int                   # matched pairs with an area error
    area_error_median: float | None
    area_error_p90: float | None
    area_bias: float | None       # mean signed relative error
    n_matched: int                # matched pairs (= detection TPs at the same thresholds)
    n_images: int
    n_ulcer_images: int
    n_healthy_images: int
    score_threshold: float
    iou_threshold: float

    def as_dict(self) -> dict[str, float | int | None]:
        """Plain dict (JSON reports)."""
        return asdict(self)


def _coco(rle: Rle) -> dict[str, Any]:
    """An RLE in the form pycocotools' C functions take (compressed bytes counts)."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed COCO RLE
        return dict(mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w))
    return {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def _size(rles: Sequence[Rle], where: str) -> tuple[int, int] | None:
    """The (h, w) all masks of one image share, None without masks; DataError naming `where` when they differ."""
    sizes = {(int(r["size"][0]), int(r["size"][1])) for r in rles}
    if len(sizes) > 1:
        raise DataError(f"{where}: masks of one image have different sizes {sorted(sizes)}")
    return sizes.pop() if sizes else None


def _union(rles: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Union of pycocotools RLEs, None when there are none."""
    return mask_utils.merge(list(rles), intersect=False) if rles else None


def _check_masks(masks: Any, n: int, where: str) -> list[Rle]:
    """One RLE per box, or a DataError naming the image."""
    out = list(masks) if masks is not None else []
    if len(out) != n:
        raise DataError(f"{where}: {n} boxes but {len(out)} masks; give one mask per box, in the same order")
    bad = [i for i, r in enumerate(out) if not isinstance(r, dict) or "size" not in r or "counts" not in r]
    if bad:
        raise DataError(f"{where}: mask {bad[0]} is not a COCO RLE {{'size': [h, w], 'counts': ...}}")
    return out


def image_outline(boxes: Any, scores: Any, masks: Sequence[Rle] | None, gt_boxes: Any, gt_masks: Sequence[Rle] | None,
                  score_threshold: float, iou_threshold: float = 0.5, where: str = "image") -> ImageOutline:
    """Reduce one image: the wound-pixel overlap of the kept predictions and the area errors of matched ulcers.

    Boxes (any one coordinate frame, shared by predictions and truth) decide the matching; masks (one per box, all
    of one image size) give the pixels. `where` names the image in errors."""
    b = as_boxes(boxes, f"{where} predictions")
    s = as_scores(scores, len(b), f"{where} predictions")
    g = as_boxes(gt_boxes, f"{where} ground truth")
    pm = _check_masks(masks, len(b), f"{where} predictions")
    gm = _check_masks(gt_masks, len(g), f"{where} ground truth")
    sizes = {x for x in (_size(pm, f"{where} predictions"), _size(gm, f"{where} ground truth")) if x is not None}
    if len(sizes) > 1:
        raise DataError(f"{where}: predicted masks are {sizes} apart from the ground truth's; give both in the "
                        "pixels of the same image")
    kept = [_coco(pm[i]) for i in np.flatnonzero(s >= score_threshold)]
    truth = [_coco(r) for r in gm]
    p_union, g_union = _union(kept), _union(truth)
    predicted = int(mask_utils.area(p_union)) if p_union is not None else 0
    true_px = int(mask_utils.area(g_union)) if g_union is not None else 0
    inter = (int(mask_utils.area(mask_utils.merge([p_union, g_union], intersect=True)))
             if p_union is not None and g_union is not None else 0)
    match = match_ranked(b, s, g, iou_threshold).at(score_threshold)
    errors = []
    n_matched = 0
    for p_i, g_i, hit in zip(match.pred_index, match.matched_gt, match.is_tp):
        if not hit:
            continue
        n_matched += 1
        true_area = float(mask_utils.area(_coco(gm[g_i])))
        if true_area > 0:
            errors.append((float(mask_utils.area(_coco(pm[p_i]))) - true_area) / true_area)
    return ImageOutline(intersection=inter, predicted=predicted, truth=true_px, area_errors=tuple(errors),
                        n_matched=n_matched)


def outline_images(preds: Sequence[tuple[Any, Any, Sequence[Rle] | None]],
                   gts: Sequence[tuple[Any, Sequence[Rle] | None]], score_threshold: float,
                   iou_threshold: float = 0.5) -> list[ImageOutline]:
    """`image_outline` of every image: preds = [(boxes, scores, masks)], gts = [(boxes, masks)], in one order."""
    if len(preds) != len(gts):
        raise DataError(f"predictions cover {len(preds)} images but ground truth covers {len(gts)}; give one entry "
                        "per image, in the same order")
    if not preds:
        raise DataError("no images to score: the prediction and ground-truth lists are empty")
    out = []
    for i, (pred, gt) in enumerate(zip(preds, gts)):
        try:
            boxes, scores, masks = pred
            gt_boxes, gt_masks = gt
        except (TypeError, ValueError) as exc:
            raise DataError(f"image {i}: a prediction must be (boxes, scores, masks) and a ground truth "
                            "(boxes, masks)") from exc
        out.append(image_outline(boxes, scores, masks, gt_boxes, gt_masks, score_threshold, iou_threshold,
                                 f"image {i}"))
    return out


def _abs_quantiles(errors: np.ndarray) -> tuple[float | None, float | None]:
    """Median and 90th percentile of |errors|, None for none."""
    if not len(errors):
        return None, None
    med, p90 = np.percentile(np.abs(errors), [50, 90])
    return float(med), float(p90)


def outline_scores(images: Sequence[ImageOutline], score_threshold: float, iou_threshold: float = 0.5
                   ) -> OutlineScores:
    """The data-set figures of `outline_images` output (the thresholds are recorded with them)."""
    if not images:
        raise DataError("no images to score: the outline list is empty")
    ulcer = [im for im in images if im.truth > 0]
    healthy = [im for im in images if im.truth == 0]
    inter = sum(im.intersection for im in images)
    total = sum(im.predicted + im.truth for im in images)
    errors = np.array([e for im in images for e in im.area_errors], dtype=np.float64)
    med, p90 = _abs_quantiles(errors)
    return OutlineScores(
        mean_dice=float(np.mean([im.dice for im in ulcer])) if ulcer else None,
        mean_iou=float(np.mean([im.iou for im in ulcer])) if ulcer else None,
        aggregate_dice=2.0 * inter / total if total else 1.0,
        healthy_false_pixel_share=float(np.mean([im.predicted > 0 for im in healthy])) if healthy else None,
        area_n=len(errors), area_error_median=med, area_error_p90=p90,
        area_bias=float(errors.mean()) if len(errors) else None,
        n_matched=sum(im.n_matched for im in images),
        n_images=len(images), n_ulcer_images=len(ulcer), n_healthy_images=len(healthy),
        score_threshold=float(score_threshold), iou_threshold=float(iou_threshold),
    )


def _replicate_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) draw counts per image: the draws of metrics.bootstrap (the detection intervals) for this seed."""
    return np.concatenate(list(resample_counts(n, n_boot, seed)))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is 0 (a replicate without the images the figure needs)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _error_quantiles(images: Sequence[ImageOutline], counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per replicate, median and p90 of |area error| with each image's errors repeated as often as it was drawn."""
    abs_err = [np.abs(np.asarray(im.area_errors, dtype=np.float64)) for im in images]
    owner = np.concatenate([np.full(len(e), i) for i, e in enumerate(abs_err)]) if abs_err else np.zeros(0, int)
    flat = np.concatenate(abs_err) if abs_err else np.zeros(0)
    med = np.full(len(counts), np.nan)
    p90 = np.full(len(counts), np.nan)
    for r, c in enumerate(counts):
        sample = np.repeat(flat, c[owner].astype(np.int64))
        if len(sample):
            med[r], p90[r] = np.percentile(sample, [50, 90])
    return med, p90


def outline_bootstrap_ci(images: Sequence[ImageOutline], n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
                         ) -> dict[str, tuple[float, float] | None]:
    """Percentile CIs of OUTLINE_CI_METRICS over image resamples (None for a figure no replicate defines)."""
    check_bootstrap_args(n_boot, alpha, "outline_bootstrap_ci")
    if not images:
        raise DataError("no images to resample: the outline list is empty")
    counts = _replicate_counts(len(images), int(n_boot), seed)
    per = np.array([(im.intersection, im.predicted + im.truth, im.truth > 0, (im.truth > 0) * im.dice,
                     (im.truth > 0) * im.iou) for im in images], dtype=np.float64)
    inter, total, ulcer, dice_sum, iou_sum = (counts @ per).T
    med, p90 = _error_quantiles(images, counts)
    values = {
        "mean_dice": _ratio(dice_sum, ulcer), "mean_iou": _ratio(iou_sum, ulcer),
        "aggregate_dice": np.where(total > 0, _ratio(2.0 * inter, total), 1.0),
        "area_error_median": med, "area_error_p90": p90,
    }
    q = [alpha / 2, 1 - alpha / 2]
    out: dict[str, tuple[float, float] | None] = {}
    for k in OUTLINE_CI_METRICS:
        v = values[k][np.isfinite(values[k])]
        out[k] = (float(np.quantile(v, q[0])), float(np.quantile(v, q[1]))) if len(v) else None
    return out
