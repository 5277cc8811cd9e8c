"""Evaluation outputs besides metrics.json: curve PNGs, the short report.md and the error galleries.

Galleries (worst N each, JPEGs named `NN_<image stem>.jpg`, rank 01 = worst):
- missed_ulcers: images with ground truth where boxes were missed at the threshold, most missed boxes first
  (then the largest missed share); near misses (score >= threshold / 2) are drawn in orange.
- false_alarms_healthy: images without ground truth that got a detection at the threshold, highest score first.
- poor_localization: images where a kept prediction overlaps a ground-truth box but with IoU < 0.7 (a hit with a
  loose box, or a near miss below the IoU threshold), lowest such IoU first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from dfudet.commands.split_predictions import PhotoPrediction
from dfudet.inference.draw import draw_detections, save_jpeg
from dfudet.metrics.curves import plot_froc, plot_pr, plot_reliability, plot_threshold_sweep
from dfudet.metrics.matching import match_image
from dfudet.metrics.scores import Scores
from dfudet.utils import atomic_write_bytes

GALLERIES = ("missed_ulcers", "false_alarms_healthy", "poor_localization")
POOR_IOU = 0.7
GALLERY_MIN_SIZE = 384  # small images are enlarged in galleries so boxes and scores stay readable
# (sort key, worst first; entry: the row position and why it was picked)
_Pick = tuple[tuple[float, ...], dict[str, Any]]


def write_plots(out: Path, pr: dict[str, Any], froc_points: dict[str, Any],
                sweep: Sequence[Scores]) -> list[Path]:
    """pr_curve.png, froc.png and threshold_sweep.png (composite and its parts vs the score threshold)."""
    return [plot_pr(pr, out / "pr_curve.png"), plot_froc(froc_points, out / "froc.png"),
            plot_threshold_sweep(sweep, out / "threshold_sweep.png")]


def write_reliability(out: Path, calibration: dict[str, Any]) -> Path:
    """reliability.png: the reliability diagram of the evaluated split (raw scores and calibrated confidence)."""
    return plot_reliability(calibration, out / "reliability.png")


def trust_lines(m: dict[str, Any]) -> list[str]:
    """The report's calibration, triage and ulcer-free sections."""
    lines: list[str] = []
    c = m.get("calibration")
    if c:
        lines += ["", "## Calibrated confidence", ""]
        if c.get("method"):
            lines += [f"Expected calibration error ({c['bins']} bins) over the {c['boxes']} boxes the model returned "
                      f"({c['true_boxes']} true ulcers at IoU 0.5): raw score **{c['ece_raw']:.3f}**, calibrated "
                      f"confidence ({c['method']}, fitted on val) **{c['ece_calibrated']:.3f}**; over the "
                      f"{c['kept_boxes']} boxes at the threshold: {c['ece_raw_kept']:.3f} raw, "
                      f"{c['ece_calibrated_kept']:.3f} calibrated. [Reliability diagram](reliability.png)"]
        else:
            lines += [f"The model carries no calibration (`dfudet tune` fits one on val): raw-score ECE "
                      f"({c['bins']} bins, {c['boxes']} boxes) {c['ece_raw']:.3f}. [Reliability diagram]"
                      "(reliability.png)"]
    t = m.get("triage")
    if t:
        lu, lf = t["labels_ulcer_photos"], t["labels_ulcer_free_photos"]
        lines += ["", "## Triage: ulcer / review / no ulcer", "",
                  f"Operating threshold {t['operating_threshold']:.3f}; review threshold {t['review_threshold']:.3f} "
                  f"({t['review_threshold_source']}).", "",
                  "| photos | n | ulcer | review | no ulcer |", "|---|---|---|---|---|",
                  f"| with an ulcer | {t['ulcer_photos']} | {lu['ulcer']} | {lu['review']} | {lu['no ulcer']} |",
                  f"| ulcer-free | {t['ulcer_free_photos']} | {lf['ulcer']} | {lf['review']} | {lf['no ulcer']} |",
                  "", f"Triage sensitivity (ulcer photos labelled ulcer or review): **{_fmt(t['sensitivity'])}** "
                  f"(ulcer label alone: {_fmt(t['sensitivity_operating_only'])}); photos sent to review: "
                  f"{_fmt(t['review_share'])}; false alarms on ulcer-free photos (ulcer or review): "
                  f"{_fmt(t['false_alarm_share'])} (ulcer label alone: {_fmt(t['false_alarm_share_operating_only'])})."]
    free = m.get("ulcer_free") or []
    if free:
        lines += ["", "## False alarms on ulcer-free photos, by folder", "",
                  "| folder | photos | with a box at the threshold | share (95% CI, Wilson) | boxes per photo |",
                  "|---|---|---|---|---|"]
        lines += [f"| `{g['group']}` | {g['photos']} | {g['photos_with_a_box']} | {g['share_with_a_box']:.3f} "
                  f"({g['ci95'][0]:.3f}–{g['ci95'][1]:.3f}) | {g['boxes_per_photo']:.2f} |" for g in free]
    return lines


def group_lines(g: dict[str, Any] | None) -> list[str]:
    """The report's tables by skin tone, brightness and sharpness."""
    if not g:
        return []
    lines = ["", "## Results by skin tone and photo condition", "",
             f"At the operating threshold; 95% CIs by bootstrap over each group's photos. Groups under "
             f"{g['min_photos']} photos are marked *too small to say anything*. Skin tone: "
             f"{g['skin_tone']['measure']}, standard ITA bands."]
    for key, title in (("skin_tone", "skin tone (ITA band)"), ("brightness", "brightness"),
                       ("sharpness", "sharpness")):
        lines += ["", f"| {title} | photos | ulcers | precision | recall | composite |", "|---|---|---|---|---|---|"]
        for r in g[key]["rows"]:
            ci = r.get("ci95") or {}

            def cell(k: str, r: dict[str, Any] = r, ci: dict[str, Any] = ci) -> str:
                v = _fmt(r[k])
                return f"{v} ({ci[k][0]:.2f}–{ci[k][1]:.2f})" if k in ci else v

            small = " *too small to say anything*" if r["too_small"] else ""
            lines.append(f"| {r['group']}{small} | {r['photos']} | {r['ulcers']} | {cell('precision')} | "
                         f"{cell('recall')} | {cell('composite')} |")
    return lines


def select_gallery(rows: Sequence[PhotoPrediction], threshold: float, iou_threshold: float, n: int = 12
                   ) -> dict[str, list[dict[str, Any]]]:
    """The worst `n` images of each gallery category (row positions and why each was picked)."""
    missed: list[_Pick] = []
    alarms: list[_Pick] = []
    loose: list[_Pick] = []
    for pos, r in enumerate(rows):
        boxes, scores, gt = r.boxes, r.scores, r.gt_boxes
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


def write_galleries(root: Path, rows: Sequence[PhotoPrediction], load: Callable[[int], np.ndarray], threshold: float,
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
            image = load(r.index)
            sx, sy = image.shape[1] / r.width, image.shape[0] / r.height
            f = np.array([sx, sy, sx, sy])
            drawn = draw_detections(
                image, r.boxes * f, r.scores, threshold, gt_boxes=r.gt_boxes * f,
                low_threshold=threshold / 2 if name == "missed_ulcers" else None, min_size=GALLERY_MIN_SIZE,
                legend=True)
            fname = f"{rank:02d}_{Path(r.path).stem}.jpg"
            save_jpeg(drawn, folder / fname)
            out[name].append({"file": f"gallery/{name}/{fname}", "image": r.path, "reason": entry["reason"]})
    return out


def _fmt(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)


# One line per figure the report prints (tests check every printed metric is here): for readers who never saw the code.
GLOSSARY: dict[str, str] = {
    "precision": "share of the model's boxes (at the threshold) that hit a true ulcer (IoU >= the IoU threshold)",
    "recall": "share of the true ulcers that some box found",
    "f1": "harmonic mean of precision and recall: high only when both are",
    "mean_iou": "mean overlap (IoU, 0-1) of every kept box with the ulcer it matched; a false alarm counts 0",
    "composite": "{f1}*F1 + {iou}*mean IoU + {recall}*recall + {precision}*precision: one number rewarding "
                 "ulcers found (F1, recall), outlined well (IoU) and few false alarms (precision); training keeps "
                 "the epoch with the highest val composite",
    "mean_iou_tp": "mean IoU over correct boxes only: how tight the boxes are when they are right",
    "image_sensitivity": "share of photos with ulcers where at least one ulcer was found",
    "image_specificity": "share of ulcer-free photos with no box at all",
    "fp_per_healthy_image": "false alarms per ulcer-free photo",
    "AP50": "COCO average precision at IoU 0.5: area under the precision-recall curve over every threshold "
            "(threshold-free; the figure papers report)",
    "AP50_95": "COCO average precision averaged over IoU 0.50-0.95: also rewards tight boxes",
    "AR100": "COCO average recall with up to 100 boxes per photo, averaged over IoU 0.50-0.95",
    "FROC score": "mean share of ulcers found at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false alarms per photo",
    "TP / FP / FN": "true ulcers found / boxes on no ulcer (false alarms) / true ulcers missed",
    "95% CI": "range holding the true value with 95% confidence: percentile bootstrap over photos",
}


# The outline table's figures (printed, with these lines in "How to read this", only when outlines were scored).
OUTLINE_GLOSSARY: dict[str, str] = {
    "mean Dice": "per photo with ulcers, overlap of the model's wound pixels with the true ones (2|P&G| / "
                 "(|P|+|G|), 0-1), averaged over those photos",
    "mean pixel IoU": "the same overlap as |P&G| / |P or G| (stricter than Dice), averaged over photos with ulcers",
    "aggregate Dice": "Dice of all photos' wound pixels pooled (2*sum|P&G| / (sum|P|+sum|G|)), false pixels on "
                      "ulcer-free photos included: the data-based Dice of the FUSeg challenge",
    "ulcer-free photos with false wound pixels": "share of photos without ulcers where the model outlined a wound",
    "area error, median": "for each ulcer found (matched as the TPs), |outlined area - true area| / true area: "
                          "the middle value",
    "area error, 90th percentile": "the same error that 9 in 10 found ulcers stay under",
    "area bias": "mean signed area error: above 0 the outlines are too large on average, below 0 too small",
}
OUTLINE_BENCHMARK_NOTE = (
    "For scale: the FUSeg 2021 challenge's best entry reached a data-based (aggregate) Dice of 0.888 on its own "
    "200-image test set, and DFUC2022's best a mean Dice of 0.729 on its 2,000 test photos: different test sets "
    "(and segmentation models), not directly comparable.")


def _ci_cell(c: Any) -> str:
    return f"{c[0]:.3f} - {c[1]:.3f}" if c else ""


def outline_lines(o: dict[str, Any] | None) -> list[str]:
    """The report's "Wound outlines" section: a short table, or why outlines were not scored (nothing when neither
    the model nor the data has outlines)."""
    if o is None:
        return []
    if "skipped" in o:
        return ["", "## Wound outlines", "", f"Not scored: {o['skipped']}."]
    ci = (o.get("bootstrap") or {}).get("ci95") or {}
    rows = [("mean Dice", o["mean_dice"], "mean_dice"), ("mean pixel IoU", o["mean_iou"], "mean_iou"),
            ("aggregate Dice", o["aggregate_dice"], "aggregate_dice"),
            ("ulcer-free photos with false wound pixels", o["healthy_false_pixel_share"], None),
            ("area error, median", o["area_error_median"], "area_error_median"),
            ("area error, 90th percentile", o["area_error_p90"], "area_error_p90"),
            ("area bias", o["area_bias"], None)]
    lines = ["", "## Wound outlines", "",
             f"{o['n_ulcer_images']} photos with ulcers, {o['n_healthy_images']} without; area errors of "
             f"{o['area_n']} found ulcers (of {o['n_matched']} matched). Pixels of the stored images.", "",
             "| figure | value | 95% CI |", "|---|---|---|"]
    lines += [f"| {name} | {_fmt(float(v)) if v is not None else 'n/a'} | {_ci_cell(ci.get(key)) if key else ''} |"
              for name, v, key in rows]
    return lines + ["", OUTLINE_BENCHMARK_NOTE]


def size_lines(rows: list[dict[str, Any]] | None) -> list[str]:
    """'Ulcers found by size' table (reports written before it existed have no `by_size`: nothing)."""
    if not rows:
        return []
    lines = ["", "## Ulcers found by size", "",
             "Side √(w·h) of the true box in the photo's pixels. Found: matched at the operating threshold; at any "
             "score: matched by any box the model returned (what a lower threshold could recover). Located: a box "
             "centred inside the true box at any score; box ÷ true side: the median, over located ulcers, of the "
             "side of the best-scoring such box over the true side (above 1: boxes too large).", "",
             "| true box side | ulcers | found | recall | found at any score | located | box ÷ true side |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["min_side"], r["max_side"]
        label = f"{lo:g} – {hi:g} px" if hi is not None else f"{lo:g} px and more"
        recall = f"{r['recall']:.0%}" if r["recall"] is not None else "n/a"
        located = r.get("located", "n/a")  # reports written before these columns existed
        ratio = f"{r['side_ratio']:.2f}" if r.get("side_ratio") is not None else "n/a"
        lines.append(f"| {label} | {r['ulcers']} | {r['found']} | {recall} | {r['found_at_any_score']} | "
                     f"{located} | {ratio} |")
    return lines


def _table_rows(m: dict[str, Any]) -> list[tuple[str, float]]:
    at = m["at_threshold"]
    return [("precision", at["precision"]), ("recall", at["recall"]), ("f1", at["f1"]), ("mean_iou", at["mean_iou"]),
            ("composite", at["composite"]), ("mean_iou_tp", at["mean_iou_tp"]),
            ("image_sensitivity", at["image_sensitivity"]), ("image_specificity", at["image_specificity"]),
            ("fp_per_healthy_image", at["fp_per_healthy_image"]), ("AP50", m["coco"]["AP50"]),
            ("AP50_95", m["coco"]["AP50_95"]), ("AR100", m["coco"]["AR100"]), ("FROC score", m["froc"]["froc_score"])]


def plain_summary(m: dict[str, Any]) -> str:
    """One paragraph in words: what was found, what was missed, how many false alarms, on how many photos."""
    c, at = m["counts"], m["at_threshold"]
    healthy_fp = round(at["fp_per_healthy_image"] * c["healthy_images"])
    parts = [f"Found **{c['tp']} of {c['gt_boxes']} ulcers** ({at['recall']:.0%}) and missed {c['fn']}",
             f"**{c['fp']} false alarm(s)** on {c['images']} photos"
             + (f" ({healthy_fp} of them on the {c['healthy_images']} ulcer-free photos)"
                if c["healthy_images"] else ""),
             f"{at['precision']:.0%} of the boxes shown were on an ulcer"]
    if c["ulcer_images"]:
        parts.append(f"at least one ulcer was found in {at['image_sensitivity']:.0%} of the {c['ulcer_images']} "
                     "photos with ulcers")
    return "; ".join(parts) + f" (operating threshold {m['operating_threshold']:.2f})."


def model_label(checkpoint: dict[str, Any]) -> str:
    """"epoch N", "untrained" or "saved outside training" for a report's checkpoint entry (older reports: epoch)."""
    origin, epoch = checkpoint.get("origin"), checkpoint.get("epoch")
    if origin == "untrained" or (origin is None and epoch == -1):
        return "untrained"
    if origin == "external":
        return "weights saved outside `dfudet train`"
    return f"epoch {epoch}"


def _size_note(m: dict[str, Any]) -> str:
    """' Input N px (trained at M px).' when the model ran at another input side than it was trained at."""
    c = m["checkpoint"]
    size, trained = c.get("img_size"), c.get("train_img_size")
    return f" Input {size} px (trained at {trained} px)." if trained and size and size != trained else ""


def write_report_md(path: Path, m: dict[str, Any]) -> None:
    """report.md: a summary in words, one table (with a compared model when given), the threshold's source, a
    glossary of every figure, the oracle, the figures and the galleries."""
    ci = (m.get("bootstrap") or {}).get("ci95", {})
    cmp_m = m.get("compare")
    rows = _table_rows(m)
    cmp_rows = dict(_table_rows(cmp_m)) if cmp_m else {}
    epoch_s = model_label(m["checkpoint"])
    lines = [
        f"# Evaluation of `{m['checkpoint']['path']}` ({epoch_s})",
        "",
        plain_summary(m),
        "",
        f"Data `{m['data']['path']}`, split **{m['data']['split']}**: {m['counts']['images']} images "
        f"({m['counts']['ulcer_images']} with ulcers, {m['counts']['healthy_images']} without), "
        f"{m['counts']['gt_boxes']} ulcer boxes. Boxes compared in original image coordinates.",
        "",
        f"Operating threshold **{m['operating_threshold']:.3f}** ({m['threshold_source']}), IoU threshold "
        f"{m['iou_threshold']:.2f}{', test-time augmentation (flip + WBF)' if m['tta'] else ''}.{_size_note(m)}",
        "",
    ]
    if cmp_m:
        lines += [f"Compared with `{cmp_m['checkpoint']['path']}` ({model_label(cmp_m['checkpoint'])}), "
                  f"same photos, at its own threshold {cmp_m['operating_threshold']:.3f} "
                  f"({cmp_m['threshold_source']}).", ""]
        lines += ["| metric | this model | 95% CI | compared model |", "|---|---|---|---|"]
    else:
        lines += ["| metric | value | 95% CI |", "|---|---|---|"]
    for name, v in rows:
        c = ci.get(name)
        row = f"| {name} | {_fmt(float(v))} | {f'{c[0]:.3f} - {c[1]:.3f}' if c else ''} |"
        if cmp_m:
            row += f" {_fmt(float(cmp_rows[name]))} |"
        lines.append(row)
    cnt = m["counts"]
    lines += [
        "",
        f"TP {cnt['tp']}, FP {cnt['fp']}, FN {cnt['fn']}; {cnt['detections_kept']} of {cnt['detections_all']} "
        "detections kept at the threshold.",
    ]
    if m.get("bootstrap"):
        lines.append(f"CIs: percentile bootstrap over images, {m['bootstrap']['n']} replicates.")
    paired = cmp_m.get("paired_composite_difference") if cmp_m else None
    if paired:
        lo, hi = paired["ci95"]
        lines += ["", f"Composite, this model minus the compared one: **{paired['point']:+.3f}** (95% CI {lo:+.3f} to "
                  f"{hi:+.3f}; higher in {100 * paired['share_this_higher']:.1f}% and lower in "
                  f"{100 * paired['share_this_lower']:.1f}% of {paired['n']} paired resamples: the same resampled "
                  "photos scored for both, each at its own threshold, with this model's composite weights)."]
    lines += size_lines(m.get("by_size"))
    lines += trust_lines(m)
    lines += group_lines(m.get("groups"))
    outlines = m.get("outlines")
    lines += outline_lines(outlines)
    w = m.get("composite_weights") or {"f1": 0.4, "iou": 0.25, "recall": 0.2, "precision": 0.15}
    lines += ["", "## How to read this", ""]
    lines += [f"- **{k}**: {v.format(**w) if k == 'composite' else v}" for k, v in GLOSSARY.items()]
    if outlines and "skipped" not in outlines:
        lines += [f"- **{k}**: {v}" for k, v in OUTLINE_GLOSSARY.items()]
    o = m["oracle"]
    lines += [
        "",
        f"Oracle (best threshold on this split, optimistic, not used above): threshold {o['threshold']:.2f}, "
        f"composite {o['scores']['composite']:.3f}, F1 {o['scores']['f1']:.3f}.",
        "",
        "Figures: [PR curve](pr_curve.png) · [FROC](froc.png) · [composite vs threshold](threshold_sweep.png)",
        "",
        "Galleries (green: truth; red: the model's boxes with their score; orange: near misses below the "
        "threshold): " + " · ".join(f"[{k}](gallery/{k}/) ({len(v)})" for k, v in m["gallery"].items()),
        "",
    ]
    atomic_write_bytes(path, "\n".join(lines).encode("utf-8"))
