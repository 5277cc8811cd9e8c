"""COCO-style AP@0.5, AP@[0.5:0.95] and AR@100 through pycocotools, built in memory.

One category ("ulcer"); every image is registered, healthy ones included (so their detections count as false
positives); ground truth has ``iscrowd = 0`` and ``area = w * h``; boxes are converted from xyxy to xywh. Scores are
the standard COCOeval "all areas" numbers: ``AP50_95 = stats[0]``, ``AP50 = stats[1]``, ``AR100 = stats[8]``.
pycocotools reports -1 where a figure is undefined (no ground truth at all); that and the no-prediction case are
returned as 0. pycocotools' printing is silenced.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from dfudet.metrics.matching import check_inputs

_ZERO = {"AP50": 0.0, "AP50_95": 0.0, "AR100": 0.0}


def _xywh(b: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in b)
    return [x1, y1, x2 - x1, y2 - y1]


def coco_map(preds: Sequence[tuple[Any, Any]], gts: Sequence[Any]) -> dict[str, float]:
    """Standard COCO detection scores for one-class ulcer detection, so results compare with the literature."""
    p, g = check_inputs(preds, gts)
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    dets: list[dict[str, Any]] = []
    for i, ((boxes, scores), gt) in enumerate(zip(p, g), start=1):
        images.append({"id": i})
        for b in gt:
            xywh = _xywh(b)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "bbox": xywh,
                         "area": xywh[2] * xywh[3], "iscrowd": 0})
        for b, s in zip(boxes, scores):
            dets.append({"image_id": i, "category_id": 1, "bbox": _xywh(b), "score": float(s)})
    if not dets or not anns:
        return dict(_ZERO)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "ulcer"}]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = ev.stats
    return {k: max(float(stats[j]), 0.0) for k, j in (("AP50", 1), ("AP50_95", 0), ("AR100", 8))}
