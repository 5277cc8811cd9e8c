"""Bootstrap CIs resampling images: determinism, coverage of the point estimate, degenerate cases."""

from __future__ import annotations

import numpy as np
import pytest
from _synth import random_detections

from dfudet.errors import ConfigError
from dfudet.metrics.bootstrap import CI_METRICS, bootstrap_ci, paired_composite_gains, per_image_counts
from dfudet.metrics.scores import detection_scores

E = np.zeros((0, 4))


def _random_data(seed: int, n: int = 60):
    return random_detections(seed, n)


def test_same_seed_same_interval_other_seed_differs():
    preds, gts = _random_data(0)
    a = bootstrap_ci(preds, gts, 0.5, 0.5, n_boot=300, seed=7)
    b = bootstrap_ci(preds, gts, 0.5, 0.5, n_boot=300, seed=7)
    c = bootstrap_ci(preds, gts, 0.5, 0.5, n_boot=300, seed=8)
    assert a == b
    assert a != c
    assert set(a) == set(CI_METRICS)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_interval_contains_the_point_estimate(seed):
    preds, gts = _random_data(seed)
    point = detection_scores(preds, gts, score_threshold=0.4)
    ci = bootstrap_ci(preds, gts, 0.4, 0.5, n_boot=500, seed=seed)
    for k, (lo, hi) in ci.items():
        assert lo <= getattr(point, k) <= hi, (k, lo, getattr(point, k), hi)
        assert hi - lo > 0.0  # real data has spread
        assert hi - lo < 0.6


def test_perfect_data_gives_a_degenerate_interval_at_one():
    gts = [[[0, 0, 10, 10]], [[5, 5, 30, 30], [40, 40, 60, 70]], E] * 4
    preds = [(np.array(g), np.full(len(g), 0.9)) for g in gts]
    ci = bootstrap_ci(preds, gts, 0.5, 0.5, n_boot=200)
    for k in CI_METRICS:
        assert ci[k] == pytest.approx((1.0, 1.0)), k


def test_resamples_whole_images():
    # One image fully found, one fully missed (same GT count): replicates have recall 0, 0.5 or 1.
    gts = [[[0, 0, 10, 10]], [[0, 0, 10, 10]]]
    preds = [([[0, 0, 10, 10]], [0.9]), (E, [])]
    ci = bootstrap_ci(preds, gts, 0.5, 0.5, n_boot=1000, seed=0)
    assert ci["recall"] == (0.0, 1.0)
    assert ci["precision"] == (0.0, 1.0)  # a resample of only the missed image has no predictions: precision 0


def test_bad_arguments_raise_config_error():
    preds, gts = _random_data(0, n=5)
    with pytest.raises(ConfigError, match="n_boot must be >= 1"):
        bootstrap_ci(preds, gts, 0.5, 0.5, n_boot=0)
    with pytest.raises(ConfigError, match="alpha must be between 0 and 1"):
        bootstrap_ci(preds, gts, 0.5, 0.5, alpha=1.5)


def test_paired_gains_are_the_composite_differences_on_the_same_resampled_images():
    preds, gts = _random_data(3)
    other = [(b[:1], s[:1]) for b, s in preds]  # a second "model": only its top box per image
    a = per_image_counts(preds, gts, 0.3, 0.5)
    b = per_image_counts(other, gts, 0.2, 0.5)
    gains = paired_composite_gains(a, b, n_boot=300, seed=5)
    rng, uniform = np.random.default_rng(5), np.full(len(gts), 1 / len(gts))
    draws = np.vstack([rng.multinomial(len(gts), uniform, size=k) for k in (250, 50)])  # bootstrap_ci's draws
    for g, count in zip(gains, draws):  # reference: rebuild each resampled set and score it the ordinary way
        idx = np.repeat(np.arange(len(gts)), count)
        ref_a = detection_scores([preds[i] for i in idx], [gts[i] for i in idx], score_threshold=0.3)
        ref_b = detection_scores([other[i] for i in idx], [gts[i] for i in idx], score_threshold=0.2)
        assert g == pytest.approx(ref_b.composite - ref_a.composite, abs=1e-12)
    assert gains.std() > 0


def test_paired_gains_of_a_model_with_itself_are_zero_and_of_a_perfect_one_positive():
    preds, gts = _random_data(4)
    a = per_image_counts(preds, gts, 0.4, 0.5)
    assert np.all(paired_composite_gains(a, a.copy(), n_boot=300) == 0)
    perfect = per_image_counts([(g, np.ones(len(g))) for g in gts], gts, 0.5, 0.5)
    assert np.all(paired_composite_gains(a, perfect, n_boot=300) > 0)
    with pytest.raises(ConfigError, match="same images"):
        paired_composite_gains(a, a[:-1])
