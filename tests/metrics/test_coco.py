"""COCO AP via pycocotools: known-value cases and parity with torchmetrics' MeanAveragePrecision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _synth import random_detections

from dfudet.metrics.coco import coco_map

E = np.zeros((0, 4))


def test_perfect_predictions_score_one(capsys):
    gts = [[[0, 0, 10, 10], [20, 20, 40, 35]], [[5, 5, 25, 30]], E]
    preds = [(np.array(g), np.linspace(0.9, 0.5, len(g))) for g in gts]
    out = coco_map(preds, gts)
    assert out == pytest.approx({"AP50": 1.0, "AP50_95": 1.0, "AR100": 1.0})
    assert capsys.readouterr().out == ""  # pycocotools' printing is silenced


def test_tp_ranked_above_fp_gives_ap_one():
    preds = [([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.8])]
    assert coco_map(preds, [[[0, 0, 10, 10]]])["AP50"] == pytest.approx(1.0)


def test_fp_ranked_above_tp_gives_ap_half():
    preds = [([[0, 0, 10, 10], [50, 50, 60, 60]], [0.8, 0.9])]
    out = coco_map(preds, [[[0, 0, 10, 10]]])
    assert out["AP50"] == pytest.approx(0.5) and out["AP50_95"] == pytest.approx(0.5)
    assert out["AR100"] == pytest.approx(1.0)


def test_detection_on_healthy_image_counts_as_false_positive():
    preds = [([[0, 0, 10, 10]], [0.5]), ([[0, 0, 10, 10]], [0.9])]
    assert coco_map(preds, [[[0, 0, 10, 10]], E])["AP50"] == pytest.approx(0.5)


def test_no_predictions_or_no_ground_truth_give_zero_not_minus_one():
    assert coco_map([(E, []), (E, [])], [[[0, 0, 10, 10]], E]) == {"AP50": 0.0, "AP50_95": 0.0, "AR100": 0.0}
    assert coco_map([([[0, 0, 5, 5]], [0.4])], [E]) == {"AP50": 0.0, "AP50_95": 0.0, "AR100": 0.0}


def _random_case(seed: int, n_img: int = 12):
    return random_detections(seed, n_img, max_gt=3, max_pred=9, extent=200.0, side=(10.0, 80.0),
                             pred_side=(4.0, 80.0), healthy_every=4, dtype=np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_parity_with_torchmetrics(seed):
    from torchmetrics.detection import MeanAveragePrecision

    preds, gts = _random_case(seed)
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
    metric.update(
        [{"boxes": torch.from_numpy(b), "scores": torch.from_numpy(s), "labels": torch.zeros(len(s), dtype=torch.long)}
         for b, s in preds],
        [{"boxes": torch.from_numpy(g), "labels": torch.zeros(len(g), dtype=torch.long)} for g in gts],
    )
    ref = metric.compute()
    ours = coco_map(preds, gts)
    assert 0.0 < ours["AP50"] <= 1.0
    assert ours["AP50"] == pytest.approx(float(ref["map_50"]), abs=1e-6)
    assert ours["AP50_95"] == pytest.approx(float(ref["map"]), abs=1e-6)
    assert ours["AR100"] == pytest.approx(float(ref["mar_100"]), abs=1e-6)
