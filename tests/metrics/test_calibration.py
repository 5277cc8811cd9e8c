"""Calibrated confidence, ECE and the triage band."""

from __future__ import annotations

import numpy as np
import pytest

from dfudet.errors import CheckpointError, ConfigError, DataError
from dfudet.metrics.calibration import (
    Calibration,
    box_outcomes,
    choose_review_threshold,
    expected_calibration_error,
    fit_calibration,
    reliability,
    triage_label,
    triage_table,
)


def _overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores whose true probability is score**3: a raw score of 0.8 is right about half the time."""
    rng = np.random.default_rng(seed)
    s = rng.uniform(0.05, 1.0, n)
    return s, rng.uniform(size=n) < s ** 3


@pytest.mark.parametrize("method", ["platt", "isotonic", "auto"])
def test_fitted_on_one_half_is_calibrated_on_the_other(method: str) -> None:
    s_fit, y_fit = _overconfident(4000, 0)
    s_new, y_new = _overconfident(4000, 1)
    raw = expected_calibration_error(s_new, y_new)
    cal, losses = fit_calibration(s_fit, y_fit, method=method)
    after = expected_calibration_error(cal.apply(s_new), y_new)
    assert raw > 0.15  # the raw score is far off ...
    assert after < 0.03  # ... and the fitted map is not
    assert cal.n_boxes == 4000 and cal.n_true == int(y_fit.sum())
    if method == "auto":
        assert set(losses) == {"platt", "isotonic"} and cal.method == min(losses, key=lambda m: losses[m])
    p = cal.apply(np.linspace(0, 1, 50))
    assert np.all(np.diff(p) >= -1e-12) and p.min() >= 0 and p.max() <= 1  # monotone probabilities


def test_ece_uses_equal_mass_bins() -> None:
    conf = np.r_[np.full(90, 0.05), np.full(10, 0.95)]
    truth = np.r_[np.zeros(90, bool), np.ones(10, bool)]
    rows = reliability(conf, truth, bins=10)
    assert [r["count"] for r in rows] == [10] * 10  # 10 boxes per bin, whatever the scores
    assert expected_calibration_error(conf, truth, bins=10) == pytest.approx(0.05)
    assert expected_calibration_error(np.full(20, 0.5), np.r_[np.ones(10), np.zeros(10)].astype(bool),
                                      bins=1) == pytest.approx(0.0)


def test_too_few_or_one_sided_boxes_are_refused() -> None:
    with pytest.raises(DataError, match=r"on 29 val boxes \(at least 30 needed\)"):
        fit_calibration(np.linspace(0, 1, 29), np.arange(29) % 2 == 0)
    with pytest.raises(DataError, match="all 40 val boxes are false"):
        fit_calibration(np.linspace(0, 1, 40), np.zeros(40, bool))
    with pytest.raises(ConfigError, match="auto, platt or isotonic"):
        fit_calibration(np.linspace(0, 1, 40), np.arange(40) % 2 == 0, method="beta")


def test_stored_calibration_round_trips_and_bad_ones_are_refused() -> None:
    s, y = _overconfident(500, 2)
    for method in ("platt", "isotonic"):
        cal = fit_calibration(s, y, method=method)[0]
        back = Calibration.from_dict(cal.as_dict(), "m.pth")
        np.testing.assert_allclose(back.apply(s), cal.apply(s))
    with pytest.raises(CheckpointError, match="m.pth: the stored calibration is invalid"):
        Calibration.from_dict({"method": "isotonic", "knots_x": [0.1, 0.5], "knots_y": [0.9, 0.2]}, "m.pth")
    with pytest.raises(CheckpointError, match="m.pth: the stored calibration is invalid"):
        Calibration.from_dict({"method": "platt", "a": float("nan")}, "m.pth")
    with pytest.raises(CheckpointError, match="malformed"):
        Calibration.from_dict({"a": 1}, "m.pth")


def test_box_outcomes_match_each_ulcer_once() -> None:
    gt = np.array([[0, 0, 10, 10]], float)
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]], float)
    scores, truth, photo = box_outcomes([(boxes, np.array([0.6, 0.9, 0.3]))], [gt])
    assert scores.tolist() == [0.9, 0.6, 0.3]
    assert truth.tolist() == [True, False, False]  # the higher-scored box takes the ulcer; the duplicate is false
    assert photo.tolist() == [0, 0, 0]


def test_review_threshold_reaches_the_target_sensitivity() -> None:
    best = np.array([0.9, 0.8, 0.4, 0.2, 0.1, 0.7, 0.05])
    ulcer = np.array([True, True, True, True, True, False, False])
    # 5 ulcer photos: 0.8 of them = 4 need a box -> the 4th highest ulcer best score, 0.2
    assert choose_review_threshold(best, ulcer, 0.8, operating=0.5) == pytest.approx(0.2)
    assert choose_review_threshold(best, ulcer, 1.0, operating=0.5) == pytest.approx(0.1)
    assert choose_review_threshold(best, ulcer, 0.2, operating=0.5) == pytest.approx(0.5)  # never above operating
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match=r"review target sensitivity must be in \(0, 1\]"):
            choose_review_threshold(best, ulcer, bad, operating=0.5)


def test_triage_labels_and_table() -> None:
    assert triage_label(0.7, 0.5, 0.2) == "ulcer"
    assert triage_label(0.3, 0.5, 0.2) == "review"
    assert triage_label(0.1, 0.5, 0.2) == "no ulcer"
    assert triage_label(0.1, 0.5, 0.2, quality_ok=False) == "review"  # a bad photo is never silently cleared
    best = np.array([0.9, 0.3, 0.1, 0.6, 0.25, 0.0])
    ulcer = np.array([True, True, True, False, False, False])
    t = triage_table(best, ulcer, operating=0.5, review=0.2, quality_ok=[True, True, True, True, True, False])
    assert t["labels"] == {"ulcer": 2, "review": 3, "no ulcer": 1}
    assert t["sensitivity"] == pytest.approx(2 / 3) and t["sensitivity_operating_only"] == pytest.approx(1 / 3)
    assert t["false_alarm_share"] == pytest.approx(1.0)
    assert t["false_alarm_share_operating_only"] == pytest.approx(1 / 3)
    assert t["review_share"] == pytest.approx(0.5)
