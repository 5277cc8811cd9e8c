"""Outline scores: exact Dice / IoU / area error on hand-built and demo-lesion masks, empty cases, bootstrap CIs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dfudet.data import instance_masks
from dfudet.data.demo import render_sample
from dfudet.errors import ConfigError, DataError
from dfudet.metrics.matching import match_image
from dfudet.metrics.outlines import (
    OUTLINE_CI_METRICS,
    image_outline,
    outline_bootstrap_ci,
    outline_images,
    outline_scores,
)

H = W = 64


def _rect(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def _pred(masks: list[np.ndarray], scores: list[float]) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(boxes, scores, RLEs) of predicted masks, each box the mask's tight box."""
    stack = np.stack(masks).astype(np.uint8) if masks else np.zeros((0, H, W), np.uint8)
    return (instance_masks.tight_boxes(stack), np.asarray(scores, np.float64),
            [instance_masks.encode(m) for m in masks])


def _gt(masks: list[np.ndarray]) -> tuple[np.ndarray, list[dict]]:
    b, _, r = _pred(masks, [1.0] * len(masks))
    return b, r


def test_dice_and_iou_of_two_overlapping_squares() -> None:
    # truth 10x10, prediction the same square shifted by 5 rows: overlap 50 px of 100 + 100
    one = image_outline(*_pred([_rect(5, 15, 0, 10)], [0.9]), *_gt([_rect(0, 10, 0, 10)]), 0.5)
    assert (one.intersection, one.predicted, one.truth) == (50, 100, 100)
    assert one.dice == pytest.approx(0.5) and one.iou == pytest.approx(50 / 150)
    s = outline_scores([one], 0.5)
    assert s.mean_dice == pytest.approx(0.5) and s.mean_iou == pytest.approx(1 / 3)
    assert s.aggregate_dice == pytest.approx(0.5)


def test_union_of_kept_masks_only() -> None:
    # two halves of the truth above the threshold make a perfect union; a low-score blob elsewhere is ignored
    pred = _pred([_rect(0, 10, 0, 5), _rect(0, 10, 5, 10), _rect(30, 40, 30, 40)], [0.9, 0.8, 0.2])
    one = image_outline(*pred, *_gt([_rect(0, 10, 0, 10)]), score_threshold=0.5)
    assert (one.intersection, one.predicted, one.truth) == (100, 100, 100) and one.dice == 1.0
    low = image_outline(*pred, *_gt([_rect(0, 10, 0, 10)]), score_threshold=0.1)
    assert low.predicted == 200 and low.dice == pytest.approx(200 / 300)


def test_area_error_of_a_mask_ten_percent_larger() -> None:
    truth = _rect(0, 10, 0, 10)          # 100 px
    larger = _rect(0, 11, 0, 10)         # 110 px, box IoU 10/11 with the truth's
    smaller = _rect(20, 28, 20, 30)      # 80 px for a 100-px ulcer
    gt = _gt([truth, _rect(20, 30, 20, 30)])
    one = image_outline(*_pred([larger, smaller], [0.9, 0.7]), *gt, 0.5, iou_threshold=0.5)
    assert one.n_matched == 2
    assert sorted(one.area_errors) == pytest.approx([-0.2, 0.1])
    s = outline_scores([one], 0.5)
    assert s.area_n == 2 and s.area_error_median == pytest.approx(0.15)
    assert s.area_error_p90 == pytest.approx(np.percentile([0.1, 0.2], 90))
    assert s.area_bias == pytest.approx(-0.05)


def test_matching_is_the_detection_matching() -> None:
    # an unmatched prediction (IoU below the threshold) gives no area error; the TPs are the detection TPs
    pred = _pred([_rect(0, 10, 0, 10), _rect(0, 10, 6, 16)], [0.6, 0.9])
    gt = _gt([_rect(0, 10, 0, 10)])
    one = image_outline(*pred, *gt, 0.5, iou_threshold=0.5)
    det = match_image(pred[0], pred[1], gt[0], 0.5, 0.5)
    assert one.n_matched == det.tp == 1 and one.area_errors == (0.0,)


@pytest.mark.parametrize("dilate", [1, 2])
def test_area_error_on_demo_lesions_of_known_size(dilate: int) -> None:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate + 1, 2 * dilate + 1))
    preds, gts, expected = [], [], []
    for index in range(6):
        sample = render_sample(5, index, 256, healthy=False)
        grown = [cv2.dilate(m.astype(np.uint8), kernel).astype(bool) for m in sample.masks]
        expected += [(int(g.sum()) - int(m.sum())) / int(m.sum()) for m, g in zip(sample.masks, grown)]
        stack = np.stack(grown).astype(np.uint8)
        preds.append((instance_masks.tight_boxes(stack), np.linspace(0.9, 0.8, len(grown)),
                      [instance_masks.encode(g) for g in grown]))
        gts.append((sample.boxes, [instance_masks.encode(m) for m in sample.masks]))
    images = outline_images(preds, gts, 0.5, iou_threshold=0.3)
    got = [e for im in images for e in im.area_errors]
    assert len(got) == len(expected) >= 6  # every lesion matched
    assert sorted(got) == pytest.approx(sorted(expected))
    assert all(e > 0 for e in got)
    s = outline_scores(images, 0.5, 0.3)
    assert s.area_error_median == pytest.approx(np.median(expected))
    assert s.area_bias == pytest.approx(np.mean(expected))
    # the truth sits inside the grown prediction: Dice = 2|G| / (|P| + |G|) per image
    for im in images:
        assert im.intersection == im.truth and im.dice == pytest.approx(2 * im.truth / (im.predicted + im.truth))


def test_empty_cases() -> None:
    nothing = _pred([], [])
    missed = image_outline(*nothing, *_gt([_rect(0, 10, 0, 10)]), 0.5)
    assert (missed.dice, missed.iou, missed.n_matched, missed.area_errors) == (0.0, 0.0, 0, ())
    quiet = image_outline(*nothing, *_gt([]), 0.5)
    assert (quiet.predicted, quiet.truth, quiet.dice) == (0, 0, 1.0)
    only_quiet = outline_scores([quiet], 0.5)
    assert only_quiet.mean_dice is None and only_quiet.mean_iou is None and only_quiet.area_error_median is None
    assert only_quiet.aggregate_dice == 1.0 and only_quiet.healthy_false_pixel_share == 0.0
    only_missed = outline_scores([missed], 0.5)
    assert only_missed.mean_dice == 0.0 and only_missed.aggregate_dice == 0.0
    assert only_missed.healthy_false_pixel_share is None and only_missed.area_n == 0 and only_missed.area_bias is None
    # gt masks may be None for an image without ulcers
    assert image_outline(*nothing, np.zeros((0, 4)), None, 0.5).truth == 0


def test_false_pixels_on_ulcer_free_images() -> None:
    ulcer = image_outline(*_pred([_rect(5, 15, 0, 10)], [0.9]), *_gt([_rect(0, 10, 0, 10)]), 0.5)
    alarm = image_outline(*_pred([_rect(40, 44, 40, 45)], [0.9]), *_gt([]), 0.5)   # 20 false pixels
    quiet = image_outline(*_pred([_rect(40, 44, 40, 45)], [0.1]), *_gt([]), 0.5)   # below the threshold
    s = outline_scores([ulcer, alarm, quiet], 0.5)
    assert (s.n_images, s.n_ulcer_images, s.n_healthy_images) == (3, 1, 2)
    assert s.healthy_false_pixel_share == pytest.approx(0.5)
    assert s.mean_dice == pytest.approx(0.5)  # ulcer images only
    assert s.aggregate_dice == pytest.approx(2 * 50 / (200 + 20))  # false pixels count in the pooled Dice
    assert set(s.as_dict()) >= {"mean_dice", "aggregate_dice", "area_error_p90", "area_bias", "n_matched"}


def _random_images(seed: int, n: int = 40) -> list:
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        if i % 4 == 0:
            gt: list[np.ndarray] = []
        else:
            y, x, side = int(rng.integers(0, 40)), int(rng.integers(0, 40)), int(rng.integers(8, 20))
            gt = [_rect(y, y + side, x, x + side)]
        preds = [_rect(min(max(y + int(rng.integers(-3, 4)), 0), 60), y + side + int(rng.integers(-4, 5)),
                       x, x + side + int(rng.integers(-4, 5)))] if gt else []
        if rng.random() < 0.3:
            preds.append(_rect(50, 50 + int(rng.integers(2, 10)), 50, 58))
        images.append(image_outline(*_pred(preds, list(rng.uniform(0.55, 1.0, len(preds)))), *_gt(gt), 0.5, 0.3))
    return images


@pytest.mark.parametrize("seed", [0, 1])
def test_bootstrap_interval_contains_the_point_estimate(seed: int) -> None:
    images = _random_images(seed)
    point = outline_scores(images, 0.5, 0.3)
    assert point.area_n > 10
    ci = outline_bootstrap_ci(images, n_boot=400, seed=seed)
    assert set(ci) == set(OUTLINE_CI_METRICS)
    for k, c in ci.items():
        assert c is not None
        lo, hi = c
        assert lo <= getattr(point, k) <= hi, (k, lo, getattr(point, k), hi)
        assert hi - lo > 0, k  # real data has spread
        assert k.startswith("area") or hi - lo < 0.6, k
    assert outline_bootstrap_ci(images, n_boot=400, seed=seed) == ci
    assert outline_bootstrap_ci(images, n_boot=400, seed=seed + 7) != ci


def test_bootstrap_degenerate_and_undefined_figures() -> None:
    perfect = [image_outline(*_pred([_rect(0, 10, 0, 10)], [0.9]), *_gt([_rect(0, 10, 0, 10)]), 0.5)] * 5
    ci = outline_bootstrap_ci(perfect, n_boot=100)
    assert ci["mean_dice"] == (1.0, 1.0) and ci["aggregate_dice"] == (1.0, 1.0)
    assert ci["area_error_median"] == (0.0, 0.0)
    quiet = [image_outline(*_pred([], []), *_gt([]), 0.5)] * 3
    ci = outline_bootstrap_ci(quiet, n_boot=50)
    assert ci["mean_dice"] is None and ci["area_error_p90"] is None and ci["aggregate_dice"] == (1.0, 1.0)


def test_bad_inputs_name_the_problem() -> None:
    box, score, rle = _pred([_rect(0, 10, 0, 10)], [0.9])
    with pytest.raises(DataError, match="image 0 predictions: 1 boxes but 0 masks"):
        outline_images([(box, score, [])], [_gt([])], 0.5)
    small = instance_masks.encode(np.zeros((32, 32), bool))
    with pytest.raises(DataError, match="pixels of the same image"):
        image_outline(box, score, rle, np.array([[0, 0, 5, 5]]), [small], 0.5)
    with pytest.raises(DataError, match="2 images but ground truth covers 1"):
        outline_images([(box, score, rle)] * 2, [_gt([])], 0.5)
    with pytest.raises(ConfigError, match="n_boot must be >= 1"):
        outline_bootstrap_ci([image_outline(box, score, rle, *_gt([]), 0.5)], n_boot=0)
