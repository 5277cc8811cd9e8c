"""predict_split: one typed PhotoPrediction per photo, boxes in the original photo's pixels, outlines and the
detections in the stored image's, ground truth from the record (no lists to turn back into arrays)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dfudet.commands.split_predictions import PhotoPrediction, predict_split, preds_and_gts
from dfudet.data.dataset import DetectionDataset
from dfudet.inference.backend import Backend, Detections


class CornerBackend(Backend):
    """A real Backend whose "model" puts two boxes in the top-left quarter of every image (scores 0.9, 0.2)."""

    name = "corner"
    img_size = 64
    operating_threshold = 0.5
    threshold_source = "given"
    tta = False

    def __init__(self) -> None:
        self.calls: list[int] = []

    @property
    def min_score(self) -> float:
        return 0.05

    @property
    def max_detections(self) -> int:
        return 2

    def _predict(self, images: list[np.ndarray], batch_size: int) -> list[Detections]:
        self.calls.append(len(images))
        out = []
        for im in images:
            h, w = im.shape[:2]
            boxes = np.array([[0, 0, w / 4, h / 4], [w / 8, h / 8, w / 2, h / 2]], np.float32)
            out.append(Detections(boxes, np.array([0.9, 0.2], np.float32), w, h))
        return out


def test_predict_split_returns_one_typed_photo_per_image_in_original_pixels(demo_data: dict[str, Path]):
    dataset = DetectionDataset(demo_data["cache"], "train")  # 96-px photos cached at 64 px: scale 1.5
    backend = CornerBackend()
    photos = predict_split(backend, dataset, batch_size=3, progress=False)
    assert len(photos) == len(dataset) > 3 and all(isinstance(p, PhotoPrediction) for p in photos)
    assert backend.calls[0] == 3 and sum(backend.calls) == len(dataset)
    for i, p in enumerate(photos):
        rec = dataset.record(i)
        assert p.index == i and p.path == rec["path"] and (p.width, p.height) == (rec["width"], rec["height"])
        stored = dataset[i][0]
        assert (p.detections.height, p.detections.width) == tuple(stored.shape[1:])
        assert max(p.detections.width, p.detections.height) == 64 and max(p.width, p.height) == 96
        w, h = p.width, p.height
        np.testing.assert_allclose(p.boxes, [[0, 0, w / 4, h / 4], [w / 8, h / 8, w / 2, h / 2]], rtol=1e-6)
        assert p.boxes.dtype == np.float64 and p.scores.dtype == np.float64
        np.testing.assert_allclose(p.scores, [0.9, 0.2], rtol=1e-6)
        np.testing.assert_array_equal(p.gt_boxes, np.asarray(rec["boxes"], np.float64).reshape(-1, 4))
        assert p.healthy == rec["healthy"] and p.healthy == (len(p.gt_boxes) == 0)
        assert p.masks is None and not p.card.found and p.card.code == "no_card"
    assert any(p.healthy for p in photos) and not all(p.healthy for p in photos)
    preds, gts = preds_and_gts(photos)
    for p, (b, s), g in zip(photos, preds, gts):
        np.testing.assert_array_equal(b, p.boxes)
        np.testing.assert_array_equal(s, p.scores)
        assert g is p.gt_boxes
    row = json.loads(json.dumps(photos[0].as_json()))  # detections.json: plain JSON, original pixels
    assert row["boxes"] == photos[0].boxes.tolist() and row["gt_boxes"] == photos[0].gt_boxes.tolist()
    assert row["card"] == {"found": False, "accepted": False, "code": "no_card"}
    assert set(row) == {"path", "width", "height", "healthy", "gt_boxes", "boxes", "scores", "card"}


def test_gt_masks_are_kept_as_rles_of_the_stored_image(demo_data: dict[str, Path]):
    from dfudet.data import instance_masks

    dataset = DetectionDataset(demo_data["cache"], "val")  # the demo's wounds carry their masks
    photos = predict_split(CornerBackend(), dataset, progress=False)
    ulcer = [p for p in photos if not p.healthy]
    assert ulcer
    for p in ulcer:
        assert p.gt_masks is not None and len(p.gt_masks) == len(p.gt_boxes)
        masks = dataset[p.index][1]["masks"].numpy()
        assert masks.shape[1:] == (p.detections.height, p.detections.width)
        assert [instance_masks.area(r) for r in p.gt_masks] == [int(m.sum()) for m in masks]
