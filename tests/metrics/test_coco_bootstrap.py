"""COCO AP replayed in numpy for bootstrap intervals: parity with pycocotools, intervals, degenerate cases."""

from __future__ import annotations

import numpy as np
import pytest
from _synth import random_detections

from dfudet.metrics.coco import coco_map
from dfudet.metrics.coco_bootstrap import coco_bootstrap_ci, coco_matches, weighted_ap

E = np.zeros((0, 4))


def coco_ap(preds, gts) -> dict[str, float]:
    """AP50 and AP50:95 of the whole set by the numpy replay the intervals resample (every image weight 1)."""
    img, tp, n_gt = coco_matches(preds, gts)
    ap = weighted_ap(img, tp, n_gt, np.ones((1, len(n_gt))))[0]
    return {"AP50": float(np.nan_to_num(ap[0])), "AP50_95": float(np.nan_to_num(ap.mean()))}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_point_values_equal_pycocotools(seed):
    preds, gts = random_detections(seed, 50)
    ref, mine = coco_map(preds, gts), coco_ap(preds, gts)
    assert mine["AP50"] == pytest.approx(ref["AP50"], abs=1e-6)
    assert mine["AP50_95"] == pytest.approx(ref["AP50_95"], abs=1e-6)
    assert 0.0 < mine["AP50"] < 1.0


def test_parity_with_tied_scores_and_more_than_100_detections_per_image():
    rng = np.random.default_rng(5)
    gts, preds = [], []
    for _ in range(6):
        g = rng.uniform(0, 200, (3, 2))
        g = np.concatenate([g, g + rng.uniform(8, 40, (3, 2))], axis=1)
        c = rng.uniform(0, 150, (130, 2))
        b = np.concatenate([g + rng.normal(0, 3, g.shape), np.hstack([c, c + 20])])
        s = np.round(rng.uniform(0, 1, len(b)), 1)  # many ties
        gts.append(g)
        preds.append((b, s))
    ref, mine = coco_map(preds, gts), coco_ap(preds, gts)
    assert mine["AP50"] == pytest.approx(ref["AP50"], abs=1e-6)
    assert mine["AP50_95"] == pytest.approx(ref["AP50_95"], abs=1e-6)


def test_intervals_are_seeded_and_contain_the_point_value():
    preds, gts = random_detections(1, 60)
    point = coco_ap(preds, gts)
    a = coco_bootstrap_ci(preds, gts, n_boot=300, seed=3)
    assert a == coco_bootstrap_ci(preds, gts, n_boot=300, seed=3)
    assert a != coco_bootstrap_ci(preds, gts, n_boot=300, seed=4)
    for k in ("AP50", "AP50_95"):
        lo, hi = a[k]
        assert lo <= point[k] <= hi and 0.0 < hi - lo < 0.6, (k, a[k], point[k])


def test_perfect_detections_give_one_and_a_missed_image_widens_the_interval():
    gts = [[[0, 0, 10, 10]], [[5, 5, 30, 30], [40, 40, 60, 70]], E] * 4
    preds = [(np.array(g, dtype=float).reshape(-1, 4), np.full(len(g), 0.9)) for g in gts]
    assert coco_bootstrap_ci(preds, gts, n_boot=200) == {"AP50": (1.0, 1.0), "AP50_95": (1.0, 1.0)}
    preds[0] = (E, np.zeros(0))  # one ulcer never found
    lo, hi = coco_bootstrap_ci(preds, gts, n_boot=500)["AP50"]
    assert lo < 1.0 and hi == 1.0


def test_bad_arguments_raise_config_error_naming_the_function():
    from dfudet.errors import ConfigError

    preds, gts = random_detections(0, 5)
    with pytest.raises(ConfigError, match="coco_bootstrap_ci: n_boot must be >= 1"):
        coco_bootstrap_ci(preds, gts, n_boot=0)
    with pytest.raises(ConfigError, match="coco_bootstrap_ci: alpha must be between 0 and 1"):
        coco_bootstrap_ci(preds, gts, alpha=0.0)
