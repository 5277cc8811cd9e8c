"""Ulcers found by size: bins of the true box side, found at the threshold and at any score, located, box side bias."""

from __future__ import annotations

import numpy as np
import pytest
from tests.metrics._synth import random_detections

from dfudet.errors import ConfigError
from dfudet.metrics.scores import detection_scores
from dfudet.metrics.sizes import found_by_size


def _box(x: float, y: float, side: float) -> list[float]:
    return [x, y, x + side, y + side]


def test_each_ulcer_lands_in_its_bin_and_counts_once() -> None:
    gt = np.array([_box(0, 0, 10), _box(100, 100, 20), _box(200, 200, 100), _box(400, 0, 16)])
    boxes = np.array([
        _box(100, 100, 20),   # the 20 px ulcer, confident
        _box(0, 0, 10),       # the 10 px ulcer, below the threshold
        _box(200, 200, 100),  # the 100 px ulcer
        _box(395, -5, 26),    # around the 16 px ulcer but 1.6x its side: IoU 0.38, no match at any score
    ])
    scores = np.array([0.9, 0.2, 0.8, 0.95])
    rows = found_by_size([(boxes, scores)], [gt], score_threshold=0.5)
    got = [(r["min_side"], r["max_side"], r["ulcers"], r["found"], r["found_at_any_score"]) for r in rows]
    assert got == [(0.0, 16.0, 1, 0, 1), (16.0, 32.0, 2, 1, 1), (32.0, 64.0, 0, 0, 0), (64.0, None, 1, 1, 1)]
    assert [r["recall"] for r in rows] == [0.0, 0.5, None, 1.0]


def test_one_box_finds_one_ulcer() -> None:
    gt = np.array([_box(0, 0, 12), _box(0, 0, 12)])
    rows = found_by_size([(np.array([_box(0, 0, 12)]), np.array([0.9]))], [gt], score_threshold=0.5)
    assert (rows[0]["ulcers"], rows[0]["found"], rows[0]["found_at_any_score"]) == (2, 1, 1)


def test_totals_agree_with_the_detection_scores() -> None:
    preds, gts = random_detections(seed=3, n=60, max_gt=3, side=(4.0, 90.0))
    for t in (0.0, 0.3, 0.7):
        rows = found_by_size(preds, gts, t)
        at = detection_scores(preds, gts, t)
        assert sum(r["ulcers"] for r in rows) == sum(len(g) for g in gts)
        assert sum(r["found"] for r in rows) == at.tp
        assert all(r["found"] <= r["found_at_any_score"] <= r["ulcers"] for r in rows)
    assert sum(r["found_at_any_score"] for r in found_by_size(preds, gts, 0.99)) == detection_scores(
        preds, gts, 0.0).tp


def test_custom_edges_and_bad_edges() -> None:
    rows = found_by_size([(np.zeros((0, 4)), np.zeros(0))], [np.array([_box(0, 0, 8)])], 0.5, edges=[8])
    assert [(r["min_side"], r["max_side"], r["ulcers"]) for r in rows] == [(0.0, 8.0, 0), (8.0, None, 1)]
    for bad in ([], [16, 16], [32, 16], [0], [float("inf")]):
        with pytest.raises(ConfigError, match="size bin edges"):
            found_by_size([], [], 0.5, edges=bad)


def test_side_ratio_uses_the_best_scoring_box_centred_inside_each_ulcer() -> None:
    gt = np.array([_box(0, 0, 10), _box(100, 100, 10), _box(300, 300, 100)])
    boxes = np.array([
        _box(-5, -5, 20),       # centred on ulcer 0, twice its side, the higher score of the two centred on it
        _box(-2.5, -2.5, 15),   # centred on ulcer 0, 1.5x, lower score: not the one measured
        _box(30, 30, 10),       # the highest score overall, centred on no ulcer
        _box(101, 101, 8),      # centred on ulcer 1: 0.8x
        _box(250, 250, 40),     # overlaps ulcer 2 but its centre (270, 270) lies outside it
    ])
    scores = np.array([0.6, 0.3, 0.99, 0.05, 0.9])
    rows = found_by_size([(boxes, scores)], [gt], score_threshold=0.5)
    assert [r["located"] for r in rows] == [2, 0, 0, 0]
    assert rows[0]["side_ratio"] == pytest.approx(np.median([2.0, 0.8]))
    assert rows[3]["ulcers"] == 1 and rows[3]["side_ratio"] is None


def test_side_ratio_is_the_median_over_ulcers_and_images() -> None:
    preds = [(np.array([_box(0, 0, 30)]), np.array([0.5])), (np.array([_box(0, 0, 40)]), np.array([0.5])),
             (np.array([_box(0, 0, 50)]), np.array([0.5])), (np.zeros((0, 4)), np.zeros(0))]
    gts = [np.array([_box(0, 0, 40)])] * 4   # ratios 0.75, 1.0, 1.25; the last image has no box at all
    rows = found_by_size(preds, gts, 0.5)
    assert rows[2]["ulcers"] == 4 and rows[2]["located"] == 3
    assert rows[2]["side_ratio"] == pytest.approx(1.0)
