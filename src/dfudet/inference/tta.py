"""Test-time augmentation: horizontal flip, boxes un-flipped, fused with weighted boxes fusion (or NMS).

Why a flip and nothing else: it is exact (no interpolation, no box change when un-flipped) and foot photos have no
preferred left/right. Fusion uses `ensemble_boxes.weighted_boxes_fusion` (ZFTurbo, MIT) with coordinates
normalised to 0..1 by the image width/height, as it requires. With `conf_type="avg"`, a box found in only one of
the two views keeps half its score, so TTA also acts as an agreement filter; thresholds tuned without TTA may
therefore need re-tuning with it (evaluate reports the oracle threshold on the split to show this).
When ensemble_boxes is not installed, the two views are pooled and reduced with torchvision `nms` instead.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torchvision.ops import nms

WBF_IOU = 0.55  # ensemble_boxes' default; boxes of the two views overlapping more than this are fused


def flip_image(image: np.ndarray) -> np.ndarray:
    """Horizontally flipped copy of an HWC image."""
    return np.ascontiguousarray(image[:, ::-1])


def unflip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Map xyxy boxes found in the flipped image back to the original image (x -> width - x)."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    x1 = width - b[:, 2]
    x2 = width - b[:, 0]
    b[:, 0], b[:, 2] = x1, x2
    return b


def fuse_views(views: list[tuple[np.ndarray, np.ndarray]], width: int, height: int, floor: float = 0.0,
               iou_thr: float = WBF_IOU, max_detections: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Fuse per-view (boxes, scores) in original pixel coords into one set, sorted by descending score."""
    views = [(np.asarray(b, np.float32).reshape(-1, 4), np.asarray(s, np.float32).reshape(-1)) for b, s in views]
    if not any(len(s) for _, s in views):
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    try:
        from ensemble_boxes import weighted_boxes_fusion
    except ImportError:  # optional dependency: plain NMS over the pooled views
        pooled_boxes = torch.from_numpy(np.concatenate([b for b, _ in views]))
        pooled_scores = torch.from_numpy(np.concatenate([s for _, s in views]))
        keep = nms(pooled_boxes, pooled_scores, iou_thr)[:max_detections]
        return pooled_boxes[keep].numpy(), pooled_scores[keep].numpy()
    norm = np.array([width, height, width, height], dtype=np.float32)
    boxes_list = [np.clip(b / norm, 0.0, 1.0) for b, _ in views]
    scores_list = [s for _, s in views]
    labels_list = [np.zeros(len(s)) for s in scores_list]
    with warnings.catch_warnings():  # WBF warns about zero-area boxes it drops itself
        warnings.simplefilter("ignore")
        boxes, scores, _ = weighted_boxes_fusion(boxes_list, scores_list, labels_list, iou_thr=iou_thr,
                                                 skip_box_thr=floor)
    boxes = (np.asarray(boxes, np.float32).reshape(-1, 4) * norm).astype(np.float32)
    scores = np.asarray(scores, np.float32).reshape(-1)
    order = np.argsort(-scores, kind="stable")[:max_detections]
    return boxes[order], scores[order]
