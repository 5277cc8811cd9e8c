"""Evaluation outputs besides metrics.json: curve PNGs, the short report.md and the error galleries.

Galleries (worst N each, JPEGs named `NN_<image stem>.jpg`, rank 01 = worst):
- missed_ulcers: images with ground truth where boxes were missed at the threshold, most missed boxes first
  (then the largest missed share); near misses (score >= threshold / 2) are drawn in orange.
- false_alarms_healthy: images without ground truth that got a detection at the threshold, highest score first.
- poor_localization: images where a kept prediction overlaps a ground-truth box but with IoU < 0.7 (a hit with a
  loose box, or a near miss below the IoU threshold), lowest such IoU first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

from dfudet.inference.draw import draw_detections, save_jpeg
from dfudet.metrics.matching import match_image
from dfudet.utils import atomic_write_bytes

GALLERIES = ("missed_ulcers", "false_alarms_healthy", "poor_localization")
POOR_IOU = 0.7
GALLERY_MIN_SIZE = 384  # small images are enlarged in galleries so boxes and scores stay readable


def write_plots(out: Path, pr: dict[str, Any], froc_points: dict[str, Any], sweep: Sequence[dict[str, Any]]) -> list[Path]:
    """pr_curve.png, froc.png and threshold_sweep.png (composite and its parts vs the score threshold)."""
    from dfudet.metrics.curves import plot_froc, plot_pr, plot_threshold_sweep

    return [plot_pr(pr, out / "pr_curve.png"), plot_froc(froc_points, out / "froc.png"),
            plot_threshold_sweep(sweep, out / "threshold_sweep.png")]


def select_gallery(rows: Sequence[dict[str, Any]], threshold: float, iou_threshold: float, n: int = 12
                   ) -> dict[str, list[dict[str, Any]]]:
    """The worst `n` images of each gallery category (row positions and why each was picked)."""
    missed, alarms, loose = [], [], []
    for pos, r in enumerate(rows):
        boxes = np.asarray(r["boxes"], np.float64).reshape(-1, 4)
        scores = np.asarray(r["scores"], np.float64).reshape(-1)
        gt = np.asarray(r["gt_boxes"], np.float64).reshape(-1, 4)
        kept = scores >= threshold
        if len(gt) == 0:
            if kept.any():
                top = float(scores[kept].max())
                alarms.append(((-top, -int(kept.sum()), pos),
                               {"row": pos, "reason": f"{int(kept.sum())} false alarm(s), top score {top:.2f}"}))
            continue
        res = match_image(boxes, scores, gt, threshold, iou_threshold)
        if res.fn:
            missed.append(((-res.fn, -res.fn / len(gt), pos),
                           {"row": pos, "reason": f"missed {res.fn} of {len(gt)} ulcer box(es)"}))
        if kept.any():
            iou = box_iou(torch.from_numpy(gt), torch.from_numpy(boxes[kept])).numpy().max(axis=1)
            touched = iou[(iou > 0) & (iou < POOR_IOU)]
            if len(touched):
                worst = float(touched.min())
                loose.append(((worst, pos), {"row": pos, "reason": f"best box overlaps a ulcer with IoU {worst:.2f}"}))
    return {name: [entry for _, entry in sorted(items, key=lambda x: x[0])[:n]]
            for name, items in zip(GALLERIES, (missed, alarms, loose))}


def write_galleries(root: Path, rows: Sequence[dict[str, Any]], load: Callable[[int], np.ndarray], threshold: float,
                    iou_threshold: float, n: int = 12) -> dict[str, list[dict[str, Any]]]:
    """Draw the selected images (GT green, predictions red, near misses orange) into root/<category>/."""
    chosen = select_gallery(rows, threshold, iou_threshold, n)
    out: dict[str, list[dict[str, Any]]] = {}
    for name in GALLERIES:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("[0-9][0-9]_*.jpg"):  # a previous run's gallery would mix with this one
            old.unlink()
        out[name] = []
        for rank, entry in enumerate(chosen[name], start=1):
            r = rows[entry["row"]]
            image = load(r["index"])
            sx, sy = image.shape[1] / r["width"], image.shape[0] / r["height"]
            f = np.array([sx, sy, sx, sy])
            drawn = draw_detections(
                image, np.asarray(r["boxes"], np.float64).reshape(-1, 4) * f, r["scores"], threshold,
                gt_boxes=np.asarray(r["gt_boxes"], np.float64).reshape(-1, 4) * f,
                low_threshold=threshold / 2 if name == "missed_ulcers" else None, min_size=GALLERY_MIN_SIZE)
            fname = f"{rank:02d}_{Path(r['path']).stem}.jpg"
            save_jpeg(drawn, folder / fname)
            out[name].append({"file": f"gallery/{name}/{fname}", "image": r["path"], "reason": entry["reason"]})
    return out


def _fmt(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def write_report_md(path: Path, m: dict[str, Any]) -> None:
    """A short human summary of metrics.json: one table, the threshold and its source, the oracle, the figures."""
    at, ci = m["at_threshold"], (m.get("bootstrap") or {}).get("ci95", {})
    rows = [("precision", at["precision"]), ("recall", at["recall"]), ("f1", at["f1"]), ("mean_iou", at["mean_iou"]),
            ("composite", at["composite"]), ("mean_iou_tp", at["mean_iou_tp"]),
            ("image_sensitivity", at["image_sensitivity"]), ("image_specificity", at["image_specificity"]),
            ("fp_per_healthy_image", at["fp_per_healthy_image"]), ("AP50", m["coco"]["AP50"]),
            ("AP50_95", m["coco"]["AP50_95"]), ("AR100", m["coco"]["AR100"]), ("FROC score", m["froc"]["froc_score"])]
    lines = [
        f"# Evaluation of `{m['checkpoint']['path']}` (epoch {m['checkpoint']['epoch']})",
        "",
        f"Data `{m['data']['path']}`, split **{m['data']['split']}**: {m['counts']['images']} images "
        f"({m['counts']['ulcer_images']} with ulcers, {m['counts']['healthy_images']} without), "
        f"{m['counts']['gt_boxes']} ulcer boxes. Boxes compared in original image coordinates.",
        "",
        f"Score threshold **{m['score_threshold']:.3f}** ({m['score_threshold_source']}), IoU threshold "
        f"{m['iou_threshold']:.2f}{', test-time augmentation (flip + WBF)' if m['tta'] else ''}.",
        "",
        "| metric | value | 95% CI |",
        "|---|---|---|",
    ]
    for name, v in rows:
        c = ci.get(name)
        lines.append(f"| {name} | {_fmt(float(v))} | {f'{c[0]:.3f} - {c[1]:.3f}' if c else ''} |")
    cnt = m["counts"]
    lines += [
        "",
        f"TP {cnt['tp']}, FP {cnt['fp']}, FN {cnt['fn']}; {cnt['detections_kept']} of {cnt['detections_all']} "
        "detections kept at the threshold.",
    ]
    if m.get("bootstrap"):
        lines.append(f"CIs: percentile bootstrap over images, {m['bootstrap']['n']} replicates.")
    o = m["oracle"]
    lines += [
        "",
        f"Oracle (best threshold on this split, optimistic, not used above): threshold {o['threshold']:.2f}, "
        f"composite {o['scores']['composite']:.3f}, F1 {o['scores']['f1']:.3f}.",
        "",
        "Figures: [PR curve](pr_curve.png) · [FROC](froc.png) · [composite vs threshold](threshold_sweep.png)",
        "",
        "Galleries: " + " · ".join(f"[{k}](gallery/{k}/) ({len(v)})" for k, v in m["gallery"].items()),
        "",
    ]
    atomic_write_bytes(path, "\n".join(lines).encode("utf-8"))
