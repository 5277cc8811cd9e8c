"""Float16 storage against float32: the same photos through a checkpoint and its `export --format pth --half` copy.

    python bench/half_parity.py --full runs/dfu_shipped/train/tuned_model.pth \
        --half src/dfudet/zoo/dfu-maskrcnn-lite0.pth --images ../shared/data/fuseg/images/test \
        --out bench/results/half_parity.json

For every photo, the detections at or above the operating threshold are paired in score order; the figures are the
largest box-coordinate difference (px), the largest score difference, the photos whose kept-box count differs, and
the outlines' IoU (outline models). The target of the shipped model: within 1 px and 1e-3 in score.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

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
    box_diff, score_diff, count_diff, mask_iou, boxes = 0.0, 0.0, [], [], 0
    for p in photos:
        image = load_image(p)
        f = full.keep(full.predict_arrays([image])[0], thr)
        h = half.keep(half.predict_arrays([image])[0], thr)
        if len(f.scores) != len(h.scores):
            count_diff.append(p.name)
        n = min(len(f.scores), len(h.scores))
        boxes += n
        if n:
            box_diff = max(box_diff, float(np.abs(f.boxes[:n] - h.boxes[:n]).max()))
            score_diff = max(score_diff, float(np.abs(f.scores[:n] - h.scores[:n]).max()))
            if f.masks is not None and h.masks is not None:
                for rf, rh in zip(f.masks[:n], h.masks[:n]):
                    mf, mh = instance_masks.decode(rf).astype(bool), instance_masks.decode(rh).astype(bool)
                    union = int((mf | mh).sum())
                    mask_iou.append(1.0 if union == 0 else int((mf & mh).sum()) / union)
    result = {"photos": len(photos), "kept_boxes_compared": boxes, "threshold": thr,
              "max_box_difference_px": box_diff, "max_score_difference": score_diff,
              "photos_with_another_box_count": count_diff,
              "min_outline_iou": min(mask_iou) if mask_iou else None,
              "mean_outline_iou": float(np.mean(mask_iou)) if mask_iou else None,
              "full": a.full, "half": a.half}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
