"""outline_fields: mm² from the user's scale, from the calibration card, or none (with the reason)."""

from __future__ import annotations

import numpy as np
import pytest

from _marker_scene import render, true_wound_mm2
from dfudet.data import instance_masks
from dfudet.inference.area import NO_SCALE_NOTE, outline_fields
from dfudet.inference.backend import Detections
from dfudet.marker.detect import find_card


def _kept(mask: np.ndarray) -> Detections:
    ys, xs = np.nonzero(mask)
    box = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
    return Detections(box, np.array([0.9], np.float32), mask.shape[1], mask.shape[0],
                      masks=(instance_masks.encode(mask),))


@pytest.fixture(scope="module")
def view():
    return render(tilt=30, card_px=380)


def test_the_card_gives_mm2_mapped_onto_its_plane(view):
    f = outline_fields(_kept(view.wound), None, view.image)
    assert f["area_source"] == "card" and "area_note" not in f and f["mm_per_px"] is None
    det = f["detections"][0]
    assert det["area_px"] == int(view.wound.sum())
    assert det["area_mm2"] == pytest.approx(true_wound_mm2(), rel=0.03)
    assert det["mm_per_px"] == pytest.approx(np.sqrt(det["area_mm2"] / det["area_px"]), rel=1e-4)
    assert f["card"]["accepted"] is True and f["card"]["tilt_deg"] == pytest.approx(30, abs=10)
    # an earlier search of the same photo gives the same fields
    assert outline_fields(_kept(view.wound), None, card=find_card(view.image)) == f


def test_a_user_scale_wins_over_the_card(view):
    f = outline_fields(_kept(view.wound), 0.2, view.image)
    assert f["area_source"] == "user" and f["mm_per_px"] == 0.2 and f["card"] is None
    assert f["detections"][0]["area_mm2"] == pytest.approx(view.wound.sum() * 0.04, rel=1e-5)


def test_without_scale_or_card_areas_stay_in_pixels_and_say_why(view):
    no_card = view.image.copy()
    no_card[:, : no_card.shape[1] // 2 + 40] = 128  # the card's half of the photo
    f = outline_fields(_kept(view.wound), None, no_card)
    assert f["area_source"] is None and f["area_note"] == NO_SCALE_NOTE
    assert f["detections"][0]["area_mm2"] is None and f["card"]["code"] in ("no_card", "partly_hidden")
    assert outline_fields(_kept(view.wound), None)["area_note"] == NO_SCALE_NOTE  # no photo given: no search


def test_a_refused_card_gives_its_reason(view):
    f = outline_fields(_kept(view.wound), None, view.image, bar_mm=46)
    assert f["area_source"] is None and f["detections"][0]["area_mm2"] is None
    assert f["area_note"].startswith("areas are in pixels only: the card was printed at the wrong size")
    assert f["card"]["code"] == "wrong_print_size"


def test_box_only_models_are_unchanged(view):
    kept = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 10, 10)
    assert outline_fields(kept, None, view.image) == {"outlines": False}
