"""`dfudet evaluate`: run a checkpoint over one split and write metrics.json, report.md, curves and error galleries.

Boxes are compared in ORIGINAL image coordinates: predictions made on the (possibly cache-resized) stored image
are scaled to the record's original size and matched against the record's original boxes, so the numbers do not
depend on the cache's img_size or the model's. The threshold is the checkpoint's operating threshold (swept
on val during training) unless --operating-threshold is given; the best threshold on the evaluated split itself is
reported separately as the "oracle" (optimistic, never used for the headline figures).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dfudet.commands.report import write_galleries, write_plots, write_reliability, write_report_md
from dfudet.commands.split_predictions import PhotoPrediction, predict_split, preds_and_gts
from dfudet.config import load_config
from dfudet.data.checks import load_image
from dfudet.data.dataset import DetectionDataset
from dfudet.data.importers import import_dataset
from dfudet.data.records import read_dataset, write_dataset
from dfudet.errors import ConfigError, DataError
from dfudet.identity import check_compatible
from dfudet.inference.backend import Backend
from dfudet.inference.loader import load_backend
from dfudet.inference.quality import measure_quality
from dfudet.metrics.bootstrap import bootstrap_ci, paired_composite_gains, per_image_counts, scores_of_sums
from dfudet.metrics.calibration import calibration_report, triage_table, ulcer_free_alarms
from dfudet.metrics.coco import coco_map
from dfudet.metrics.coco_bootstrap import coco_bootstrap_ci
from dfudet.metrics.curves import froc, pr_curve, threshold_series
from dfudet.metrics.groups import ITA_BANDS, MIN_PHOTOS, UNKNOWN, group_scores, ita_band, ita_degrees, tertile_bins
from dfudet.metrics.outlines import outline_bootstrap_ci, outline_images, outline_scores
from dfudet.metrics.scores import Scores, detection_scores, pick_best, sweep_thresholds
from dfudet.metrics.sizes import found_by_size
from dfudet.models.factory import model_identity
from dfudet.utils import atomic_write_bytes

COCO_SPLIT = "all"  # a COCO json given directly is evaluated whole, under this split name
MAX_CURVE_POINTS = 400  # curves in metrics.json are thinned to this many points (the PNGs use every point)
OUTLINE_DEFINITIONS = {
    "mean_dice": "per-image wound-pixel Dice of the kept outlines' union vs the true masks' union, mean over ulcer "
                 "images",
    "mean_iou": "the same with IoU",
    "aggregate_dice": "2*sum|P&G| / (sum|P| + sum|G|) over ALL images: the data-based Dice of the FUSeg challenge",
    "healthy_false_pixel_share": "share of ulcer-free images with any predicted wound pixel",
    "area_error": "|pred area - true area| / true area per matched ulcer (matched as the detection TPs): "
                  "median and 90th percentile; area_bias is the mean signed error (> 0: outlines too large)",
}


def _thin(values: dict[str, Any], keys: tuple[str, ...]) -> dict[str, list[float]]:
    n = len(values[keys[0]])
    idx: np.ndarray | list[int] = (
        np.unique(np.linspace(0, n - 1, min(n, MAX_CURVE_POINTS)).round().astype(int)) if n else [])
    return {k: [float(values[k][i]) for i in idx] for k in keys}


def _import_coco(json_path: Path, images: str | Path | None, tmp: Path) -> Path:
    """Import a COCO json into a temporary dataset dir with every image in one split."""
    if images is None:
        raise ConfigError(f"--data {json_path} is a COCO json: pass --images with the folder its file_names refer to")
    out = tmp / "dataset"
    import_dataset("coco", images=Path(images), annotations=[json_path], healthy=[], out=out)
    records = read_dataset(out)
    for r in records:
        r.split = COCO_SPLIT
    write_dataset(out, records)
    return out


def _check_config(config: str | Path, predictor: Backend) -> None:
    """A --config naming another model than the checkpoint's is an error (img_size may differ: inputs are resized)."""
    check_compatible(predictor.info.identity, model_identity(load_config(config)), predictor.info.path,
                     only=("model_name", "backbone", "num_classes"))


def _gallery_image(dataset: Any, i: int) -> np.ndarray:
    """The original photo when it is still on disk (sharper than a resized cache copy), else the stored image."""
    rec = dataset.record(i)
    if dataset.kind == "cache" and Path(rec["path"]).is_file():
        try:
            image = load_image(rec["path"])
            if image.shape[:2] == (rec["height"], rec["width"]):
                return image
        except DataError:
            pass
    return dataset[i][0].permute(1, 2, 0).numpy()


def outline_metrics(rows: Sequence[PhotoPrediction], threshold: float, iou_threshold: float, n_boot: int,
                    seed: int = 0
                    ) -> dict[str, Any] | None:
    """The "outlines" section of metrics.json (dfudet.metrics.outlines at the operating threshold, with bootstrap
    CIs when n_boot > 0): None when neither the model nor the data has outlines (box-only: as before), and
    {"skipped": reason} when only one of them has."""
    model_outlines = all(r.masks is not None for r in rows)
    ulcer = [r for r in rows if len(r.gt_boxes)]
    unmasked = sum(r.gt_masks is None for r in ulcer)
    if not model_outlines:
        if any(r.gt_masks is not None for r in rows):
            return {"skipped": "the model draws boxes only (no outlines), so the data's wound masks were not used"}
        return None
    if not ulcer:
        return {"skipped": "the split has no ulcer images: no wound masks to compare the model's outlines with"}
    if unmasked:
        return {"skipped": f"{unmasked} of {len(ulcer)} ulcer images have no wound mask (box-only data): import "
                           "masks (--format masks, or COCO segmentations) to score the model's outlines"}
    images = outline_images([(r.boxes, r.scores, r.masks) for r in rows],
                            [(r.gt_boxes, r.gt_masks or []) for r in rows], threshold, iou_threshold)
    ci = ({k: (list(v) if v is not None else None) for k, v in outline_bootstrap_ci(images, n_boot, seed).items()}
          if n_boot > 0 else None)
    return {**outline_scores(images, threshold, iou_threshold).as_dict(),
            "pixels": "masks compared in the pixels of the stored image each prediction was made on",
            "definitions": OUTLINE_DEFINITIONS,
            "bootstrap": ({"n": int(n_boot), "alpha": 0.05, "seed": seed, "unit": "image", "ci95": ci}
                          if ci is not None else None)}


def trust_metrics(rows: Sequence[PhotoPrediction], preds: list[tuple[np.ndarray, np.ndarray]], gts: list[np.ndarray],
                  predictor: Backend, iou_threshold: float) -> dict[str, Any]:
    """The "calibration", "triage" and "ulcer_free" sections of metrics.json: ECE before and after the model's stored
    calibration, the ulcer / review / no ulcer labels at its thresholds, and false alarms on ulcer-free photos by
    folder (each folder is one source, e.g. FUSeg's negatives and a healthy-feet folder)."""
    thr = predictor.operating_threshold
    review = predictor.review_threshold
    best = [float(s.max()) if len(s) else 0.0 for _, s in preds]
    has_ulcer = [len(g) > 0 for g in gts]
    triage = triage_table(best, has_ulcer, thr, thr if review is None else review)
    triage["review_threshold_source"] = ("checkpoint (chosen on val by `dfudet tune`)" if review is not None else
                                         "none stored: the review band is empty")
    free = [i for i, u in enumerate(has_ulcer) if not u]
    alarms = ulcer_free_alarms([best[i] for i in free], [int((preds[i][1] >= thr).sum()) for i in free],
                               [str(Path(rows[i].path).parent) for i in free]) if free else []
    return {"calibration": calibration_report(preds, gts, predictor.calibration, thr, iou_threshold),
            "triage": triage, "ulcer_free": alarms}


def group_metrics(dataset: Any, preds: list[tuple[np.ndarray, np.ndarray]], gts: list[np.ndarray], threshold: float,
                  iou_threshold: float, weights: Any, n_boot: int) -> dict[str, Any]:
    """The "groups" section of metrics.json: results by skin tone (ITA° of the skin around the wounds) and by
    brightness and sharpness tertiles (dfudet.metrics.groups), from the stored images (boxes scaled to them)."""
    ita: list[float | None] = []
    luma: list[float] = []
    sharp: list[float] = []
    for i in range(len(dataset)):
        image = dataset[i][0].permute(1, 2, 0).numpy()
        rec = dataset.record(i)
        sx, sy = image.shape[1] / rec["width"], image.shape[0] / rec["height"]
        boxes = np.asarray(rec["boxes"], np.float64).reshape(-1, 4) * np.array([sx, sy, sx, sy])
        ita.append(ita_degrees(image, boxes))
        m = measure_quality(image)
        luma.append(m.mean_luma)
        sharp.append(m.sharpness)
    bands = [ita_band(v) for v in ita]
    order = [name for _, name in ITA_BANDS] + [UNKNOWN]
    bright, bright_cuts, bright_order = tertile_bins(luma, "brightness")
    blur, blur_cuts, blur_order = tertile_bins(sharp, "sharpness")
    return {
        "skin_tone": {"measure": "ITA° (median over skin pixels around the true boxes; whole photo without boxes)",
                      "photos_ita": [None if v is None else round(v, 1) for v in ita],
                      "rows": group_scores(bands, preds, gts, threshold, iou_threshold, weights, n_boot,
                                           order=order)},
        "brightness": {"cuts": bright_cuts, "rows": group_scores(bright, preds, gts, threshold, iou_threshold,
                                                                  weights, n_boot, order=bright_order)},
        "sharpness": {"cuts": blur_cuts, "rows": group_scores(blur, preds, gts, threshold, iou_threshold, weights,
                                                               n_boot, order=blur_order)},
        "min_photos": MIN_PHOTOS,
    }


@dataclass(frozen=True)
class Curves:
    """Full-resolution curves behind the report's PNGs (metrics.json keeps thinned copies)."""

    pr: dict[str, Any]
    froc: dict[str, Any]
    sweep: list[Scores]


def compute_metrics(preds: list[tuple[np.ndarray, np.ndarray]], gts: list[np.ndarray], threshold: float,
                    iou_threshold: float, weights: Any, n_boot: int, seed: int = 0
                    ) -> tuple[dict[str, Any], Curves]:
    """Every figure of the report from per-image predictions and ground truth (original coordinates), and the
    curves to plot."""
    at = detection_scores(preds, gts, threshold, iou_threshold, weights)
    sweep = sweep_thresholds(preds, gts, None, iou_threshold, weights)
    oracle_t, oracle_row = pick_best(sweep)
    pr = pr_curve(preds, gts, iou_threshold)
    fr = froc(preds, gts, iou_threshold)
    out: dict[str, Any] = {
        "at_threshold": at.as_dict(),
        "coco": coco_map(preds, gts),
        "by_size": found_by_size(preds, gts, threshold, iou_threshold),
        "healthy_images": {"n": at.n_healthy_images, "image_specificity": at.image_specificity,
                           "fp_per_healthy_image": at.fp_per_healthy_image},
        "ulcer_images": {"n": at.n_ulcer_images, "image_sensitivity": at.image_sensitivity},
        "pr_curve": {"ap": pr["ap"], "iou_threshold": pr["iou_threshold"], "n_points": len(pr["thresholds"]),
                     **_thin(pr, ("thresholds", "precision", "recall"))},
        "froc": {"froc_score": fr["froc_score"], "fp_rates": fr["fp_rates"],
                 "sensitivity_at_rates": fr["sensitivity_at_rates"], "n_points": len(fr["fp_per_image"]),
                 **_thin(fr, ("fp_per_image", "sensitivity"))},
        "oracle": {"threshold": oracle_t, "scores": oracle_row.as_dict(),
                   "note": "best threshold by composite on THIS split: optimistic, for reference only; the headline "
                           "figures use the threshold above"},
        "threshold_sweep": threshold_series(sweep),
        "bootstrap": None,
    }
    if n_boot > 0:
        ci = bootstrap_ci(preds, gts, threshold, iou_threshold, weights, n_boot=n_boot, seed=seed)
        ci.update(coco_bootstrap_ci(preds, gts, n_boot=n_boot, seed=seed))
        out["bootstrap"] = {"n": int(n_boot), "alpha": 0.05, "seed": seed, "unit": "image",
                            "ci95": {k: [lo, hi] for k, (lo, hi) in ci.items()}}
    return out, Curves(pr, fr, sweep)


def _compare(checkpoint: str | Path, dataset: Any, device: str, tta: bool, batch_size: int, progress: bool,
             iou_threshold: float, weights: Any, this_per_image: np.ndarray, n_boot: int,
             seed: int = 0) -> dict[str, Any]:
    """The headline figures of another checkpoint (e.g. the untrained model) on the same photos, at its own
    threshold; with `n_boot` > 0 also the paired bootstrap of the composite difference (this model minus that one,
    both scored on the same resampled photos: `this_per_image` is this model's `per_image_counts`)."""
    other = load_backend(checkpoint=checkpoint, device=device, tta=tta)
    preds, gts = preds_and_gts(predict_split(other, dataset, batch_size, progress))
    at = detection_scores(preds, gts, other.operating_threshold, iou_threshold, weights).as_dict()
    paired = None
    if n_boot > 0:
        other_per_image = per_image_counts(preds, gts, other.operating_threshold, iou_threshold)
        gains = paired_composite_gains(other_per_image, this_per_image, weights, n_boot, seed)
        lo, hi = np.quantile(gains, [0.025, 0.975])
        point = scores_of_sums(this_per_image.sum(0), weights)["composite"] - scores_of_sums(
            other_per_image.sum(0), weights)["composite"]
        paired = {"point": float(point[0]), "n": int(n_boot), "alpha": 0.05, "seed": seed, "unit": "image",
                  "ci95": [float(lo), float(hi)], "share_this_higher": float(np.mean(gains > 0)),
                  "share_this_lower": float(np.mean(gains < 0)),
                  "weights": "this model's composite weights, for both"}
    return {"checkpoint": {"path": str(checkpoint), "epoch": other.info.epoch, "origin": other.info.origin,
                           "model_name": other.info.identity.model_name,
                           "backbone": other.info.identity.backbone},
            "operating_threshold": other.operating_threshold, "threshold_source": other.threshold_source,
            "at_threshold": at, "coco": coco_map(preds, gts),
            "froc": {"froc_score": froc(preds, gts, iou_threshold)["froc_score"]},
            "paired_composite_difference": paired}


def run_evaluation(checkpoint: str | Path | None, data: str | Path, out: str | Path, split: str = "test",
                   images: str | Path | None = None, operating_threshold: float | None = None,
                   iou_threshold: float = 0.5, batch_size: int = 8, bootstrap: int = 1000, tta: bool = False,
                   config: str | Path | None = None, device: str = "cpu", gallery_size: int = 12,
                   progress: bool = True, compare: str | Path | None = None,
                   onnx: str | Path | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint (or an exported ONNX model) on one split of a cache, dataset dir or COCO json and write
    the report files to `out`."""
    start = time.perf_counter()
    if not 0.0 < float(iou_threshold) <= 1.0:
        raise ConfigError(f"--iou-threshold must be in (0, 1], got {iou_threshold}")
    if bootstrap < 0:
        raise ConfigError(f"--bootstrap must be >= 0 (0 = no confidence intervals), got {bootstrap}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    data = Path(data)
    if not data.exists():
        raise DataError(f"{data}: data path does not exist (expected an LMDB cache dir from `dfudet data prepare`, "
                        "a dataset dir from `dfudet data import`, or a COCO json with --images)")
    predictor = load_backend(checkpoint=checkpoint, onnx=onnx, device=device,
                             operating_threshold=operating_threshold, tta=tta)
    if config is not None:
        _check_config(config, predictor)
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="dfudet-eval-") as tmp:
        source, used_split = data, split
        if data.is_file():
            if data.suffix.lower() != ".json":
                raise DataError(f"{data}: not a COCO json, LMDB cache dir or dataset dir")
            source, used_split = _import_coco(data, images, Path(tmp)), COCO_SPLIT
        dataset = DetectionDataset(source, used_split)
        rows = predict_split(predictor, dataset, batch_size, progress)
        images_for_gallery = lambda i: _gallery_image(dataset, i)  # noqa: E731
        preds, gts = preds_and_gts(rows)

        weights = predictor.info.composite_weights  # the weights the model was selected with
        thr = predictor.operating_threshold
        m, curves = compute_metrics(preds, gts, thr, iou_threshold, weights, bootstrap)
        outlines = outline_metrics(rows, thr, iou_threshold, bootstrap)
        trust = trust_metrics(rows, preds, gts, predictor, iou_threshold)
        groups = group_metrics(dataset, preds, gts, thr, iou_threshold, weights, bootstrap)
        out.mkdir(parents=True, exist_ok=True)
        files = write_plots(out, curves.pr, curves.froc, curves.sweep)
        files.append(write_reliability(out, trust["calibration"]))
        gallery = write_galleries(out / "gallery", rows, images_for_gallery, thr, iou_threshold, gallery_size)
        compared = (_compare(compare, dataset, device, tta, batch_size, progress, iou_threshold, weights,
                             per_image_counts(preds, gts, thr, iou_threshold), bootstrap)
                    if compare is not None else None)
    info = predictor.info
    at = m["at_threshold"]
    metrics: dict[str, Any] = {
        "checkpoint": {**info.summary(), "path": str(checkpoint if checkpoint is not None else onnx)},
        "data": {"path": str(data), "split": used_split, "kind": dataset.kind,
                 "images": str(images) if images else None},
        "operating_threshold": thr,
        "threshold_source": predictor.threshold_source,
        "iou_threshold": float(iou_threshold),
        "tta": bool(tta),
        "min_score": predictor.min_score,
        "composite_weights": weights.model_dump(),
        "counts": {"images": at["n_images"], "ulcer_images": at["n_ulcer_images"],
                   "healthy_images": at["n_healthy_images"], "gt_boxes": at["n_gt"],
                   "detections_all": int(sum(len(s) for _, s in preds)), "detections_kept": at["n_pred"],
                   "tp": at["tp"], "fp": at["fp"], "fn": at["fn"]},
        **m,
        **({"outlines": outlines} if outlines is not None else {}),  # absent for box-only model and data
        **trust,
        "groups": groups,
        "gallery": gallery,
        "compare": compared,
        "cards": {"searched": len(rows), "found": sum(r.card.found for r in rows),
                  "accepted": sum(r.card.accepted for r in rows),
                  "note": "calibration card (dfudet marker) searched in each evaluated (stored) photo; per photo in "
                          "detections.json"},
    }
    det = [r.as_json() for r in rows]
    atomic_write_bytes(out / "detections.json", json.dumps(
        {"note": "every detection >= the model's min_score, original pixel coordinates (xyxy)",
         "images": det}).encode("utf-8"))
    files += [out / "detections.json", out / "metrics.json", out / "report.md"]
    metrics["files"] = sorted(str(f.relative_to(out)) for f in files)
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    atomic_write_bytes(out / "metrics.json", json.dumps(metrics, indent=1).encode("utf-8"))
    write_report_md(out / "report.md", metrics)
    return metrics
