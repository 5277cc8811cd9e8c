"""Per-image greedy matching: every edge case the brief lists, with hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dfudet.errors import DataError
from dfudet.metrics.matching import match_image, match_ranked

GT = [[0, 0, 10, 10]]


def test_no_predictions_all_gt_are_false_negatives():
    r = match_image(np.zeros((0, 4)), np.zeros(0), [[0, 0, 10, 10], [20, 20, 30, 30]])
    assert (r.tp, r.fp, r.fn) == (0, 0, 2)
    assert r.pred_ious == [] and r.tp_ious == [] and r.is_tp == []


def test_no_ground_truth_every_kept_prediction_is_fp_with_iou_zero():
    r = match_image([[0, 0, 10, 10], [5, 5, 9, 9]], [0.9, 0.6], np.zeros((0, 4)))
    assert (r.tp, r.fp, r.fn) == (0, 2, 0)
    assert r.pred_ious == [0.0, 0.0]
    assert r.is_tp == [False, False]
    assert r.scores == [0.9, 0.6]


def test_empty_inputs_given_as_lists_or_none():
    r = match_image([], [], None)
    assert (r.tp, r.fp, r.fn) == (0, 0, 0)


def test_equal_scores_keep_original_order():
    # Both predictions overlap the only GT; the one listed first goes first even though the second fits better.
    r = match_image([[0, 0, 10, 8], [0, 0, 10, 10]], [0.9, 0.9], GT)
    assert r.pred_index == [0, 1]
    assert r.is_tp == [True, False]
    assert r.pred_ious == pytest.approx([0.8, 0.0])
    assert (r.tp, r.fp, r.fn) == (1, 1, 0)


def test_descending_score_order_decides_who_matches():
    r = match_image([[0, 0, 10, 8], [0, 0, 10, 10]], [0.6, 0.9], GT)
    assert r.pred_index == [1, 0]
    assert r.is_tp == [True, False]
    assert r.tp_ious == [1.0]


def test_prediction_over_two_gts_takes_highest_iou():
    gts = [[0, 0, 10, 10], [5, 0, 15, 10]]
    # IoU with gt0 = 100/120, with gt1 = 70/150; then an exact copy of gt1 with a lower score.
    r = match_image([[0, 0, 12, 10], [5, 0, 15, 10]], [0.9, 0.8], gts)
    assert r.matched_gt == [0, 1]
    assert r.pred_ious == pytest.approx([100 / 120, 1.0])
    assert (r.tp, r.fp, r.fn) == (2, 0, 0)


def test_two_predictions_on_one_gt_second_is_fp_with_best_remaining_iou():
    # gt1 overlaps the second prediction with IoU 30/120 = 0.25, the only unmatched box left for it.
    gts = [[0, 0, 10, 10], [0, 2, 10, 12]]
    r = match_image([[0, 0, 10, 10], [0, 0, 10, 5]], [0.9, 0.8], gts)
    assert r.is_tp == [True, False]
    assert r.pred_ious == pytest.approx([1.0, 0.25])
    assert r.tp_ious == [1.0]
    assert r.matched_gt == [0, -1]
    assert (r.tp, r.fp, r.fn) == (1, 1, 1)


def test_two_predictions_on_one_gt_second_gets_zero_when_nothing_left():
    r = match_image([[0, 0, 10, 10], [0, 0, 10, 9]], [0.9, 0.8], GT)
    assert r.pred_ious == [1.0, 0.0]
    assert (r.tp, r.fp, r.fn) == (1, 1, 0)


def test_prediction_below_score_threshold_is_ignored():
    r = match_image([[0, 0, 10, 10], [50, 50, 60, 60]], [0.49, 0.5], GT, score_threshold=0.5)
    assert r.scores == [0.5] and r.pred_index == [1]
    assert (r.tp, r.fp, r.fn) == (0, 1, 1)


def test_iou_exactly_at_threshold_is_tp():
    r = match_image([[0, 0, 10, 5]], [0.9], GT, iou_threshold=0.5)  # IoU = 50/100 exactly
    assert r.pred_ious == [0.5]
    assert (r.tp, r.fp, r.fn) == (1, 0, 0)
    r = match_image([[0, 0, 10, 5]], [0.9], GT, iou_threshold=0.51)
    assert (r.tp, r.fp, r.fn) == (0, 1, 1)


def test_best_box_below_iou_threshold_is_fp_and_box_is_not_consumed():
    # First prediction: IoU 0.4 with the GT -> FP, GT stays free; second (lower score) then matches it.
    r = match_image([[0, 0, 10, 4], [0, 0, 10, 10]], [0.9, 0.8], GT)
    assert r.is_tp == [False, True]
    assert r.pred_ious == pytest.approx([0.4, 1.0])
    assert r.matched_gt == [-1, 0]
    assert (r.tp, r.fp, r.fn) == (1, 1, 0)


def test_torch_tensors_give_the_same_result_as_numpy():
    boxes = [[0, 0, 10, 4], [0, 0, 10, 10], [30, 30, 40, 40]]
    scores = [0.9, 0.8, 0.7]
    a = match_image(np.array(boxes), np.array(scores), np.array(GT))
    b = match_image(torch.tensor(boxes, dtype=torch.float32, requires_grad=True), torch.tensor(scores),
                    torch.tensor(GT))
    assert (a.tp, a.fp, a.fn, a.is_tp) == (b.tp, b.fp, b.fn, b.is_tp)
    assert a.pred_ious == pytest.approx(b.pred_ious)


def test_matching_at_a_threshold_is_a_prefix_of_the_full_ranking():
    rng = np.random.default_rng(3)
    for _ in range(20):
        g = rng.uniform(0, 50, (4, 2))
        gts = np.hstack([g, g + rng.uniform(5, 30, (4, 2))])
        c = rng.uniform(0, 50, (12, 2))
        boxes = np.hstack([c, c + rng.uniform(5, 30, (12, 2))])
        boxes[:4] = gts + rng.normal(0, 3, gts.shape)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        scores = rng.choice([0.2, 0.4, 0.6, 0.8], 12)  # many ties
        ranked = match_ranked(boxes, scores, gts)
        for t in (0.1, 0.3, 0.5, 0.7, 0.9):
            keep = scores >= t
            direct = match_image(boxes[keep], scores[keep], gts, score_threshold=0.0)
            via = ranked.at(t)
            assert (via.tp, via.fp, via.fn, via.is_tp) == (direct.tp, direct.fp, direct.fn, direct.is_tp)
            assert via.pred_ious == pytest.approx(direct.pred_ious)


def test_bad_shapes_raise_data_error_naming_the_problem():
    with pytest.raises(DataError, match=r"shape \(N, 4\).*\(2, 5\)"):
        match_image(np.zeros((2, 5)), [0.1, 0.2], GT)
    with pytest.raises(DataError, match="2 predicted boxes but 1 scores"):
        match_image(np.zeros((2, 4)), [0.1], GT)
    with pytest.raises(DataError, match="NaN"):
        match_image([[0, 0, np.nan, 1]], [0.5], GT)
    with pytest.raises(DataError, match=r"ground truth: box 1 \[5.0, 5.0, 2.0, 9.0\] has x2 < x1"):
        match_image([[0, 0, 1, 1]], [0.5], [[0, 0, 1, 1], [5, 5, 2, 9]])


def test_zero_area_boxes_count_as_no_overlap():
    r = match_image([[3, 3, 3, 3]], [0.9], [[3, 3, 3, 3]])
    assert r.pred_ious == [0.0]
    assert (r.tp, r.fp, r.fn) == (0, 1, 1)
