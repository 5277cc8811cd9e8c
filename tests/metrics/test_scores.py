"""Data-set scores: P/R/F1 with zero-division rules, mean IoU, composite, healthy-image figures, sweep, best."""

from __future__ import annotations

import numpy as np
import pytest
from _synth import random_detections

from dfudet.config import CompositeWeights
from dfudet.errors import ConfigError, DataError
from dfudet.metrics.matching import match_image
from dfudet.metrics.scores import (
    DEFAULT_THRESHOLDS,
    best_threshold,
    composite_score,
    detection_scores,
    sweep_thresholds,
)

E = np.zeros((0, 4))


def _hand_case():
    """Ulcer image: TP (IoU 1), FP (IoU 0.25 with a GT it leaves free), 1 FN; healthy image: 1 FP at 0.7."""
    preds = [
        ([[0, 0, 10, 10], [0, 0, 10, 5]], [0.9, 0.8]),
        ([[40, 40, 50, 50]], [0.7]),
    ]
    gts = [[[0, 0, 10, 10], [0, 2, 10, 12]], E]
    return preds, gts


def test_hand_computed_scores_mean_iou_and_composite():
    preds, gts = _hand_case()
    m = detection_scores(preds, gts, score_threshold=0.5)
    assert (m.tp, m.fp, m.fn) == (1, 2, 1)
    assert m.precision == pytest.approx(1 / 3)
    assert m.recall == pytest.approx(1 / 2)
    assert m.f1 == pytest.approx(0.4)
    assert m.mean_iou == pytest.approx((1.0 + 0.25 + 0.0) / 3)  # every kept prediction
    assert m.mean_iou_tp == pytest.approx(1.0)  # TPs only
    assert m.composite == pytest.approx(0.40 * 0.4 + 0.25 * 1.25 / 3 + 0.20 * 0.5 + 0.15 / 3)
    assert m.image_sensitivity == 1.0
    assert m.image_specificity == 0.0
    assert m.fp_per_healthy_image == 1.0
    assert (m.n_images, m.n_ulcer_images, m.n_healthy_images, m.n_gt, m.n_pred) == (2, 1, 1, 2, 3)
    assert (m.score_threshold, m.iou_threshold) == (0.5, 0.5)


def test_custom_weights_mapping_and_config_object():
    preds, gts = _hand_case()
    m = detection_scores(preds, gts, weights={"f1": 1.0, "iou": 0.0, "recall": 0.0, "precision": 0.0})
    assert m.composite == pytest.approx(0.4)
    w = CompositeWeights(f1=0.1, iou=0.2, recall=0.3, precision=0.4)
    m = detection_scores(preds, gts, weights=w)
    assert m.composite == pytest.approx(0.1 * 0.4 + 0.2 * 1.25 / 3 + 0.3 * 0.5 + 0.4 / 3)
    # A mapping may leave keys out: they keep their default.
    m = detection_scores(preds, gts, weights={"iou": 0.0})
    assert m.composite == pytest.approx(0.40 * 0.4 + 0.20 * 0.5 + 0.15 / 3)


def test_composite_score_by_hand():
    assert composite_score(0.5, 0.6, 0.7, 0.8) == pytest.approx(0.2 + 0.15 + 0.14 + 0.12)
    assert composite_score(1, 1, 1, 1) == pytest.approx(1.0)
    assert composite_score(0.5, 0.6, 0.7, 0.8, {"f1": 2, "iou": 0, "recall": 0, "precision": 1}) == pytest.approx(1.8)
    # the one formula also runs element-wise (threshold sweeps, bootstrap replicates)
    both = composite_score(np.array([0.5, 1.0]), np.array([0.6, 1.0]), np.array([0.7, 1.0]), np.array([0.8, 1.0]))
    assert both == pytest.approx([0.61, 1.0])


def test_bad_weights_raise_config_error():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['map'\]"):
        composite_score(1, 1, 1, 1, {"map": 1.0})
    with pytest.raises(ConfigError, match="must be finite and >= 0"):
        composite_score(1, 1, 1, 1, {"f1": -1.0})


def test_raising_the_threshold_silences_the_healthy_image():
    preds, gts = _hand_case()
    m = detection_scores(preds, gts, score_threshold=0.75)
    assert (m.tp, m.fp, m.fn) == (1, 1, 1)
    assert m.image_specificity == 1.0 and m.fp_per_healthy_image == 0.0


def test_healthy_images_only_every_detection_is_fp():
    preds = [([[0, 0, 5, 5], [1, 1, 6, 6]], [0.9, 0.8]), ([[0, 0, 5, 5]], [0.95]), (E, [])]
    m = detection_scores(preds, [E, E, E])
    assert (m.tp, m.fp, m.fn) == (0, 3, 0)
    assert (m.precision, m.recall, m.f1, m.mean_iou) == (0.0, 0.0, 0.0, 0.0)
    assert m.image_specificity == pytest.approx(1 / 3)
    assert m.fp_per_healthy_image == pytest.approx(1.0)
    assert m.image_sensitivity == 0.0 and m.n_ulcer_images == 0


def test_nothing_predicted_and_nothing_to_find_is_perfect():
    m = detection_scores([(E, []), ([[0, 0, 5, 5]], [0.1])], [E, E], score_threshold=0.5)
    assert (m.precision, m.recall, m.f1) == (1.0, 1.0, 1.0)
    assert m.mean_iou == 0.0 and m.mean_iou_tp == 0.0
    assert m.composite == pytest.approx(0.40 + 0.20 + 0.15)
    assert m.image_specificity == 1.0


def test_ground_truth_without_predictions_scores_zero():
    m = detection_scores([(E, [])], [[[0, 0, 5, 5]]])
    assert (m.precision, m.recall, m.f1, m.composite) == (0.0, 0.0, 0.0, 0.0)
    assert (m.tp, m.fp, m.fn) == (0, 0, 1)
    assert m.image_sensitivity == 0.0


def _random_data(seed: int, n: int = 30):
    return random_detections(seed, n, max_gt=3, max_pred=7, side=(5.0, 40.0), noise=4.0, score_decimals=2)


def _reference(preds, gts, t, iou_t=0.5):
    """Straight-line re-implementation from per-image match_image, to check the pooled sweep."""
    rs = [match_image(b, s, g, t, iou_t) for (b, s), g in zip(preds, gts)]
    tp, fp, fn = (sum(getattr(r, a) for r in rs) for a in ("tp", "fp", "fn"))
    ious = [v for r in rs for v in r.pred_ious]
    tp_ious = [v for r in rs for v in r.tp_ious]
    healthy = [r for r, g in zip(rs, gts) if len(g) == 0]
    ulcer = [r for r, g in zip(rs, gts) if len(g) > 0]
    return {
        "tp": tp, "fp": fp, "fn": fn, "n_pred": tp + fp,
        "mean_iou": float(np.mean(ious)) if ious else 0.0,
        "mean_iou_tp": float(np.mean(tp_ious)) if tp_ious else 0.0,
        "image_specificity": sum(r.tp + r.fp == 0 for r in healthy) / len(healthy),
        "fp_per_healthy_image": sum(r.fp for r in healthy) / len(healthy),
        "image_sensitivity": sum(r.tp > 0 for r in ulcer) / len(ulcer),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sweep_agrees_with_per_image_matching_and_detection_scores(seed):
    preds, gts = _random_data(seed)
    ts = [0.0, 0.13, 0.5, 0.5000001, 0.77, 1.0]
    sweep = sweep_thresholds(preds, gts, ts)
    assert [s.score_threshold for s in sweep] == ts
    for t, s in zip(ts, sweep):
        assert s == detection_scores(preds, gts, score_threshold=t)  # bit-identical
        ref = _reference(preds, gts, t)
        for k, v in ref.items():
            assert getattr(s, k) == pytest.approx(v, abs=1e-12), (t, k)


def test_default_sweep_has_99_thresholds_and_monotone_counts():
    preds, gts = _random_data(5)
    sweep = sweep_thresholds(preds, gts)
    assert len(sweep) == len(DEFAULT_THRESHOLDS) == 99
    n_pred = [s.n_pred for s in sweep]
    assert n_pred == sorted(n_pred, reverse=True)
    spec = [s.image_specificity for s in sweep]
    assert spec == sorted(spec)


def _best_case():
    # ulcer image: TP at 0.9 and a far FP at 0.6; healthy image: FP at 0.3
    preds = [([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.6]), ([[0, 0, 10, 10]], [0.3])]
    return preds, [[[0, 0, 10, 10]], E]


def test_best_threshold_picks_the_composite_maximum():
    preds, gts = _best_case()
    ts = [0.2, 0.5, 0.7, 0.95]
    sweep = sweep_thresholds(preds, gts, ts)
    assert [s.composite for s in sweep] == pytest.approx([
        0.4 * 0.5 + 0.25 / 3 + 0.2 + 0.15 / 3,      # tp1 fp2
        0.4 * 2 / 3 + 0.25 * 0.5 + 0.2 + 0.15 / 2,  # tp1 fp1
        1.0,                                        # tp1 fp0
        0.0,                                        # nothing kept, one GT missed
    ])
    thr, row = best_threshold(preds, gts, ts)
    assert thr == 0.7 and row.composite == pytest.approx(1.0) and row.score_threshold == 0.7


def test_best_threshold_ties_go_to_the_higher_threshold():
    preds, gts = _best_case()
    thr, row = best_threshold(preds, gts, [0.65, 0.7, 0.85, 0.62])
    assert thr == 0.85 and row.composite == pytest.approx(1.0)
    thr, _ = best_threshold(preds, gts)  # default grid: 0.61..0.90 all score 1.0
    assert thr == pytest.approx(0.9)


def test_input_errors_name_the_image():
    with pytest.raises(DataError, match="predictions cover 1 images but ground truth covers 2"):
        detection_scores([(E, [])], [E, E])
    with pytest.raises(DataError, match="image 1 predictions: 1 predicted boxes but 2 scores"):
        detection_scores([(E, []), ([[0, 0, 1, 1]], [0.5, 0.6])], [E, E])
    with pytest.raises(DataError, match="image 0 ground truth: boxes must have shape"):
        detection_scores([(E, [])], [[[0, 0, 1]]])
    with pytest.raises(DataError, match="no images to score"):
        detection_scores([], [])


def _few_confident_boxes_case():
    """10 ulcers: one found exactly at score 0.95; the other nine found (IoU 0.6) at 0.3 among 3 false alarms each."""
    gt = [[10, 10, 50, 50]]
    preds = [([[10, 10, 50, 50]], [0.95])]
    fps = [[100, 100, 140, 140], [150, 150, 190, 190], [200, 10, 240, 50]]
    preds += [([[10, 10, 50, 34]] + fps, [0.3] * 4) for _ in range(9)]
    return preds, [gt] * 10


def test_recall_floor_keeps_the_operating_point_from_a_few_confident_boxes():
    from dfudet.config import TrainConfig

    preds, gts = _few_confident_boxes_case()
    ts = [0.3, 0.95]
    # without a floor the composite prefers the one confident box: P 1.0, R 0.1
    thr, row = best_threshold(preds, gts, ts, min_recall=0.0)
    assert thr == 0.95 and row.precision == 1.0 and row.recall == pytest.approx(0.1)
    # the training default keeps a floor, so the point that finds the ulcers is chosen
    floor = TrainConfig().operating_min_recall
    assert floor > 0.1
    thr, row = best_threshold(preds, gts, ts, min_recall=floor)
    assert thr == 0.3 and row.recall == pytest.approx(1.0)


def test_recall_floor_out_of_reach_takes_the_highest_recall_point():
    preds, gts = _few_confident_boxes_case()
    preds = [preds[0]] + [(E, []) for _ in range(9)]  # only the confident box exists: recall 0.1 at best
    thr, row = best_threshold(preds, gts, [0.3, 0.95, 0.99], min_recall=0.5)
    assert row.recall == pytest.approx(0.1) and thr == 0.95  # ties on recall: higher composite, then threshold
    with pytest.raises(ConfigError, match="min_recall must be in"):
        best_threshold(preds, gts, min_recall=1.5)
