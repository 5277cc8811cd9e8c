"""evaluate reports, per photo, whether the calibration card was found (FUSeg and demo photos have none)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from _marker_scene import render
from dfudet.commands.evaluate import run_evaluation
from dfudet.commands.split_predictions import PhotoPrediction
from dfudet.inference.backend import Detections
from dfudet.marker.detect import find_card


def test_each_evaluated_photo_says_whether_a_card_was_found(tiny_ckpt: Path, demo_data: dict[str, Path],
                                                          tmp_path: Path) -> None:
    m = run_evaluation(tiny_ckpt, demo_data["cache"], tmp_path, split="test", bootstrap=0, progress=False)
    n = m["counts"]["images"]
    assert m["cards"]["searched"] == n > 0 and m["cards"]["found"] == m["cards"]["accepted"] == 0
    images = json.loads((tmp_path / "detections.json").read_text())["images"]
    assert len(images) == n
    assert all(im["card"] == {"found": False, "accepted": False, "code": "no_card"} for im in images)


def test_a_photo_with_the_card_is_reported_found():
    image = render(tilt=10, card_px=380).image
    h, w = image.shape[:2]
    photo = PhotoPrediction(index=0, path="card.png", width=w, height=h, healthy=True,
                            detections=Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), w, h),
                            gt_boxes=np.zeros((0, 4)), gt_masks=None, card=find_card(image))
    assert photo.as_json()["card"] == {"found": True, "accepted": True, "code": None}
