"""Figures per subset of the shifted test (pasted / lowres / color) from one evaluate run's detections.json, without
predicting again: AP50 (COCO), recall and precision at the model's operating threshold, and the median best IoU of
each found wound (a wound is found when a kept box matches it at IoU >= 0.5); the pasted subset also split by the
pasted wounds' scale (`dfudet.data.shifted.PASTE_SCALES`: 0.5x, 1x, 1.5x their FUSeg size).

    python scripts/shifted_subsets.py runs/dfu_shipped/shifted/report-test
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dfudet.data.shifted import PASTE_SCALES
from dfudet.metrics.coco import coco_map
from dfudet.metrics.matching import match_image
from dfudet.metrics.scores import detection_scores

# each subset by the file-name stem `dfudet data shifted` gives its photos: pasted_<photo>_x<scale>, lowres_<photo>,
# color_<photo>; the pasted photos also by the wounds' scale relative to their FUSeg size (its PASTE_SCALES)
SUBSETS: dict[str, Callable[[str], bool]] = {
    "pasted": lambda stem: stem.startswith("pasted_"),
    **{f"pasted x{k:g}": (lambda stem, k=k: stem.startswith("pasted_") and stem.endswith(f"_x{k:g}"))
       for k in PASTE_SCALES},
    "lowres": lambda stem: stem.startswith("lowres_"),
    "color": lambda stem: stem.startswith("color_"),
    "all": lambda stem: True,
}


def main() -> None:
    report = Path(sys.argv[1])
    metrics = json.loads((report / "metrics.json").read_text())
    thr = metrics["operating_threshold"]
    images = json.loads((report / "detections.json").read_text())["images"]
    out = {}
    for subset, keep in SUBSETS.items():
        rows = [r for r in images if keep(Path(r["path"]).stem)]
        preds = [(np.asarray(r["boxes"], float).reshape(-1, 4), np.asarray(r["scores"], float)) for r in rows]
        gts = [np.asarray(r["gt_boxes"], float).reshape(-1, 4) for r in rows]
        s = detection_scores(preds, gts, thr, 0.5)
        ious = [iou for (b, sc), g in zip(preds, gts) for iou in match_image(b, sc, g, thr, 0.5).tp_ious]
        out[subset] = {"photos": len(rows), "wounds": int(sum(len(g) for g in gts)),
                       "AP50": coco_map(preds, gts)["AP50"], "recall": s.recall, "precision": s.precision,
                       "composite": s.composite, "median_iou_found": float(np.median(ious)) if ious else None}
    (report / "subsets.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
