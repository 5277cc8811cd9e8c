"""PR curve, FROC, threshold series and their PNG plots."""

from __future__ import annotations

import numpy as np
import pytest
from _synth import random_detections

from dfudet.metrics.curves import (
    STANDARD_FP_RATES,
    all_point_ap,
    froc,
    plot_froc,
    plot_pr,
    plot_threshold_sweep,
    pr_curve,
    threshold_series,
)
from dfudet.metrics.scores import sweep_thresholds

E = np.zeros((0, 4))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _small_case():
    """Image A: 2 GTs; TP 0.9, far FP 0.8, TP 0.7. Image B: healthy, no predictions."""
    preds = [([[0, 0, 10, 10], [80, 80, 90, 90], [20, 20, 30, 30]], [0.9, 0.8, 0.7]), (E, [])]
    return preds, [[[0, 0, 10, 10], [20, 20, 30, 30]], E]


def _random_data(seed: int, n: int = 40):
    return random_detections(seed, n)


def test_pr_curve_points_and_all_point_ap_by_hand():
    c = pr_curve(*_small_case())
    assert c["thresholds"] == [0.9, 0.8, 0.7]
    assert c["recall"] == pytest.approx([0.5, 0.5, 1.0])
    assert c["precision"] == pytest.approx([1.0, 0.5, 2 / 3])
    assert c["ap"] == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)


def test_all_point_ap_uses_the_precision_envelope():
    assert all_point_ap([0.25, 0.5, 0.5, 1.0], [1.0, 0.5, 0.4, 0.8]) == pytest.approx(0.25 * 1.0 + 0.75 * 0.8)
    assert all_point_ap([1.0], [1.0]) == pytest.approx(1.0)
    assert all_point_ap([0.5], [1.0]) == pytest.approx(0.5)


def test_pr_curve_is_monotone_in_recall_and_threshold():
    c = pr_curve(*_random_data(0))
    assert np.all(np.diff(c["thresholds"]) < 0)
    assert np.all(np.diff(c["recall"]) >= 0)
    assert 0.0 < c["ap"] <= 1.0


def test_pr_curve_without_predictions_or_ground_truth():
    c = pr_curve([(E, [])], [[[0, 0, 5, 5]]])
    assert c["thresholds"] == [] and c["ap"] == 0.0
    c = pr_curve([([[0, 0, 5, 5]], [0.5])], [E])
    assert c["recall"] == [0.0] and c["ap"] == 0.0


def test_froc_points_and_interpolation_by_hand():
    f = froc(*_small_case())
    assert f["fp_per_image"] == pytest.approx([0.0, 0.0, 0.5, 0.5])
    assert f["sensitivity"] == pytest.approx([0.0, 0.5, 0.5, 1.0])
    assert f["fp_rates"] == list(STANDARD_FP_RATES)
    # (0, 0.5) -> (0.5, 1.0) linearly, then flat at 1.0
    assert f["sensitivity_at_rates"] == pytest.approx([0.625, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert f["froc_score"] == pytest.approx((0.625 + 0.75 + 5.0) / 7)


def test_froc_is_monotone():
    f = froc(*_random_data(1))
    assert np.all(np.diff(f["fp_per_image"]) >= 0)
    assert np.all(np.diff(f["sensitivity"]) >= 0)
    assert np.all(np.diff(f["sensitivity_at_rates"]) >= 0)
    assert 0.0 < f["froc_score"] <= 1.0


def test_threshold_series_matches_the_sweep():
    preds, gts = _random_data(2)
    sweep = sweep_thresholds(preds, gts, [0.1, 0.5, 0.9])
    s = threshold_series(sweep)
    assert s["thresholds"] == [0.1, 0.5, 0.9]
    assert s["composite"] == [row.composite for row in sweep]
    assert s["recall"] == sorted(s["recall"], reverse=True)  # fewer kept predictions, never more recall


def test_plots_write_non_empty_pngs(tmp_path):
    preds, gts = _random_data(3)
    paths = [
        plot_pr(pr_curve(preds, gts), tmp_path / "pr.png"),
        plot_froc(froc(preds, gts), tmp_path / "sub" / "froc.png"),
        plot_threshold_sweep(sweep_thresholds(preds, gts), tmp_path / "sweep.png"),
    ]
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000
    assert sorted(x.name for x in tmp_path.rglob("*") if x.is_file()) == ["froc.png", "pr.png", "sweep.png"]
