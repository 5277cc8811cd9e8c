"""Results by skin tone (ITA) and photo condition."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dfudet.metrics.groups import (
    UNKNOWN,
    group_scores,
    ita_band,
    ita_degrees,
    ring_mask,
    skin_mask,
    tertile_bins,
)


def _flat(rgb: tuple[int, int, int], size: int = 120) -> np.ndarray:
    return np.full((size, size, 3), rgb, np.uint8)


def _ita_of(rgb: tuple[int, int, int]) -> float:
    lab = cv2.cvtColor(np.array([[rgb]], np.float32) / 255.0, cv2.COLOR_RGB2LAB)[0, 0]
    return float(np.degrees(np.arctan2(lab[0] - 50.0, lab[2])))


@pytest.mark.parametrize(("rgb", "band"), [((233, 200, 180), "very light"), ((200, 150, 120), "intermediate"),
                                           ((141, 85, 36), "brown"), ((80, 45, 30), "dark")])
def test_ita_of_skin_colours_falls_in_its_band(rgb: tuple[int, int, int], band: str) -> None:
    image = _flat(rgb)
    assert skin_mask(image).all()
    ita = ita_degrees(image, np.zeros((0, 4)))
    assert ita == pytest.approx(_ita_of(rgb), abs=1e-3)
    assert ita_band(ita) == band


def test_only_skin_around_the_wound_counts() -> None:
    image = _flat((60, 90, 200))  # blue background: not skin
    image[20:100, 20:100] = (233, 200, 180)  # light skin around ...
    image[50:70, 50:70] = (80, 45, 30)  # ... a dark wound bed, which must not count
    boxes = np.array([[50, 50, 70, 70]], float)
    assert ita_band(ita_degrees(image, boxes)) == "very light"
    ring = ring_mask(image.shape[:2], boxes)
    assert not ring[50:70, 50:70].any() and ring[30:50, 30:90].all() and not ring[0:25, 0:25].any()


def test_no_skin_is_unknown_not_a_crash() -> None:
    assert ita_degrees(_flat((60, 90, 200)), np.zeros((0, 4))) is None
    assert ita_degrees(np.zeros((50, 50, 3), np.uint8), np.zeros((0, 4))) is None  # black padding only
    assert ita_band(None) == UNKNOWN


def test_tertiles_and_group_scores() -> None:
    labels, cuts, names = tertile_bins([6, 1, 2, 3, 4, 5], "x")
    assert cuts[0] < 3 < cuts[1] and labels[1].startswith("low x") and labels[0].startswith("high x")
    assert [n.split()[0] for n in names] == ["low", "mid", "high"] and set(labels) == set(names)
    gt = np.array([[0, 0, 10, 10]], float)
    hit = (gt.copy(), np.array([0.9]))
    miss = (np.zeros((0, 4)), np.zeros(0))
    rows = group_scores(["a", "a", "b"], [hit, miss, hit], [gt, gt, gt], 0.5, 0.5, None, n_boot=50,
                        order=["b", "a", "c"])
    assert [r["group"] for r in rows] == ["b", "a"]  # the given order; empty groups left out
    a = rows[1]
    assert a["photos"] == 2 and a["ulcers"] == 2 and a["recall"] == 0.5 and a["precision"] == 1.0
    assert a["too_small"] and a["ci95"]["recall"][0] <= 0.5 <= a["ci95"]["recall"][1]
