"""A backend's predictions over one split of a DetectionDataset, one typed `PhotoPrediction` per photo.

evaluate (the report, the comparison model), the report's galleries and tune all read these objects: boxes and
scores are arrays from the backend to the metrics, never lists turned back into arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from dfudet.data import instance_masks
from dfudet.data.instance_masks import Rle
from dfudet.inference.backend import Backend, Detections
from dfudet.marker.detect import CardDetection, find_card


@dataclass(frozen=True)
class PhotoPrediction:
    """One photo of a split: the backend's detections on its stored image and its ground truth.

    Boxes are compared in the ORIGINAL photo's pixels (`boxes`, `gt_boxes`), so the numbers do not depend on the
    cache's img_size or the model's; outlines (`detections.masks`, `gt_masks`) stay in the stored image's pixels:
    pixel Dice and relative area error do not depend on the scale.
    """

    index: int  # position in the dataset
    path: str
    width: int  # the original photo's size
    height: int
    healthy: bool
    detections: Detections  # as the backend returned them, in the stored (predicted) image's pixels
    gt_boxes: np.ndarray  # (M, 4) float64 xyxy, original pixels
    gt_masks: tuple[Rle, ...] | None  # one RLE per true box in the stored image's pixels; None for box-only data
    card: CardDetection  # the calibration-card search in the stored photo (FUSeg photos have none)

    @property
    def boxes(self) -> np.ndarray:
        """(N, 4) float64 xyxy detections in the original photo's pixels."""
        d = self.detections
        sx, sy = self.width / d.width, self.height / d.height
        return d.boxes.astype(np.float64).reshape(-1, 4) * np.array([sx, sy, sx, sy])

    @property
    def scores(self) -> np.ndarray:
        """(N,) float64 scores, descending."""
        return self.detections.scores.astype(np.float64).reshape(-1)

    @property
    def masks(self) -> tuple[Rle, ...] | None:
        """One outline per detection (stored image's pixels); None for a box-only model."""
        return self.detections.masks

    def as_json(self) -> dict[str, Any]:
        """The photo's entry of detections.json (original pixels)."""
        return {"path": self.path, "width": self.width, "height": self.height, "healthy": self.healthy,
                "gt_boxes": self.gt_boxes.tolist(), "boxes": self.boxes.tolist(), "scores": self.scores.tolist(),
                "card": {"found": self.card.found, "accepted": self.card.accepted, "code": self.card.code}}


def preds_and_gts(photos: Sequence[PhotoPrediction]) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[np.ndarray]]:
    """The (boxes, scores) and true boxes per photo, original pixels: the inputs of every dfudet.metrics function."""
    return [(p.boxes, p.scores) for p in photos], [p.gt_boxes for p in photos]


def predict_split(predictor: Backend, dataset: Any, batch_size: int = 8, progress: bool = True
                  ) -> list[PhotoPrediction]:
    """Predict every image of a DetectionDataset.

    Args:
        predictor: a PyTorch or ONNX Runtime backend.
        dataset: a `dfudet.data.dataset.DetectionDataset` (cache or dataset dir), one split.
        batch_size: images per backend call.
        progress: show a progress bar.

    Returns:
        One `PhotoPrediction` per image, in dataset order.
    """
    photos: list[PhotoPrediction] = []
    bar = tqdm(total=len(dataset), desc=f"evaluate {dataset.split}", unit="img", disable=None if progress else True)
    try:
        for start in range(0, len(dataset), batch_size):
            idx = list(range(start, min(start + batch_size, len(dataset))))
            items = [dataset[i] for i in idx]
            images = [image.permute(1, 2, 0).numpy() for image, _ in items]
            for i, (_, target), image, res in zip(idx, items, images, predictor.predict_arrays(images, batch_size)):
                rec = dataset.record(i)
                gt_masks = target.get("masks")
                photos.append(PhotoPrediction(
                    index=i, path=rec["path"], width=int(rec["width"]), height=int(rec["height"]),
                    healthy=bool(rec["healthy"]), detections=res,
                    gt_boxes=np.asarray(rec["boxes"], np.float64).reshape(-1, 4),
                    gt_masks=(tuple(instance_masks.encode(m) for m in gt_masks.numpy())
                              if gt_masks is not None else None),
                    card=find_card(image)))
            bar.update(len(idx))
    finally:
        bar.close()
    return photos
