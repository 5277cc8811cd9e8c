"""Reduced-precision storage against float32: the same photos through a checkpoint and a slim copy of it whose
weights were stored with less precision (float16: `export --format pth --half`; int8 rows for chosen
layers: `export_slim(int8=...)`, as the shipped model: `scripts/ship_model.py --int8-box-head --int8-mask-head`).

    python bench/half_parity.py --full runs/dfu_shipped/train/tuned_model.pth \
        --half src/dfudet/zoo/dfu-maskrcnn-lite0.pth --images ../shared/data/fuseg/images/test \
        --out bench/results/int8_parity.json

For every photo, each float32 detection at or above the operating threshold is paired with the reduced-precision
detection (any score) that overlaps it most; the figures are the largest box-coordinate difference (px) and score
difference over those pairs, the outlines' IoU and wound-area difference (relative to float32; outline models), and
the photos whose kept-box count differs (a box whose score sits within the score difference of the threshold can cross
it). The target of the shipped model: within 1 px and 1e-3 in score.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from dfudet.data import instance_masks
from dfudet.data.checks import load_image
from dfudet.inference.predictor import Predictor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", required=True)
    ap.add_argument("--half", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    full, half = Predictor.from_checkpoint(a.full), Predictor.from_checkpoint(a.half)
    thr = full.operating_threshold
    photos = sorted(p for p in Path(a.images).iterdir() if p.suffix.lower() in {".jpg", ".png"})
    box_diff, score_diff, count_diff, mask_iou, area_diff, boxes = 0.0, 0.0, [], [], [], 0
    for p in photos:
        image = load_image(p)
        f_all, h_all = full.predict_arrays([image])[0], half.predict_arrays([image])[0]
        f, h = full.keep(f_all, thr), half.keep(h_all, thr)
        if len(f.scores) != len(h.scores):
            count_diff.append({"photo": p.name, "float32": [round(float(v), 5) for v in f.scores],
                               "float16": [round(float(v), 5) for v in h.scores]})
        n = len(f.scores)
        boxes += n
        if n and len(h_all.scores):
            iou = box_iou(torch.from_numpy(f.boxes), torch.from_numpy(h_all.boxes)).numpy()
            j = iou.argmax(axis=1)
            box_diff = max(box_diff, float(np.abs(f.boxes - h_all.boxes[j]).max()))
            score_diff = max(score_diff, float(np.abs(f.scores - h_all.scores[j]).max()))
            if f.masks is not None and h_all.masks is not None:
                for rf, rh in zip(f.masks, [h_all.masks[k] for k in j]):
                    mf, mh = instance_masks.decode(rf).astype(bool), instance_masks.decode(rh).astype(bool)
                    union = int((mf | mh).sum())
                    mask_iou.append(1.0 if union == 0 else int((mf & mh).sum()) / union)
                    if mf.any():  # the wound area each reports, as a share of float32's
                        area_diff.append(abs(int(mh.sum()) - int(mf.sum())) / int(mf.sum()))
    result = {"photos": len(photos), "kept_boxes_compared": boxes, "threshold": thr,
              "max_box_difference_px": box_diff, "max_score_difference": score_diff,
              "photos_with_another_box_count": count_diff,
              "min_outline_iou": min(mask_iou) if mask_iou else None,
              "mean_outline_iou": float(np.mean(mask_iou)) if mask_iou else None,
              "median_area_difference": float(np.median(area_diff)) if area_diff else None,
              "max_area_difference": max(area_diff) if area_diff else None,
              "full": a.full, "half": a.half}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
