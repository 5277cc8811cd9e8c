"""Finding the card: the homography it gives, and every refusal with its own reason."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from _marker_scene import CH, CW, W, camera, card_to_plane_px, paste, render, skin
from dfudet.marker import card
from dfudet.marker.detect import Thresholds, find_card


def _max_px_error(found: np.ndarray, truth: np.ndarray, far: bool = False) -> float:
    """The largest distance (px) between the two homographies' images of the card's corners (or, with `far`, of a
    point 60 mm beyond the card, where a wound would be)."""
    pts = np.array([[CW + 60, CH / 2]] if far else [[0, 0], [CW, 0], [CW, CH], [0, CH]], np.float64)
    pts = pts.reshape(-1, 1, 2)
    return float(np.linalg.norm(cv2.perspectiveTransform(pts, found) - cv2.perspectiveTransform(pts, truth),
                                axis=2).max())


@pytest.mark.parametrize(("tilt", "card_px"), [(0, 400), (30, 350), (45, 500)])
def test_a_warped_card_gives_its_homography(tilt: float, card_px: float):
    v = render(tilt=tilt, card_px=card_px)
    d = find_card(v.image)
    assert d.accepted and d.code is None and d.reason is None, d.reason
    assert d.markers_found == 9 and d.reprojection_px < 0.6
    # the card's corners within 1.5 px; a point 60 mm beyond the card (where a wound would be) within 1 mm
    assert _max_px_error(d.homography, v.card_h) < 1.5
    assert _max_px_error(d.homography, v.card_h, far=True) < d.card_px / CW
    # `tilt` is the camera's at the scene's centre; the card lies off-axis, where the line of sight is up to ~10
    # degrees steeper (the estimate is the foreshortening at the card itself)
    assert d.tilt_deg == pytest.approx(tilt, abs=10.0)
    assert d.card_px == pytest.approx(np.linalg.norm(np.diff(cv2.perspectiveTransform(
        np.array([[[0, 0]], [[CW, 0]]], np.float64), v.card_h).reshape(2, 2), axis=0)), rel=0.1)
    s = d.summary()
    assert s["accepted"] is True and len(s["homography"]) == 3 and s["markers_expected"] == 9


def test_no_card():
    d = find_card(skin(1))
    assert not d.found and not d.accepted and d.code == "no_card" and "no calibration card" in d.reason


def test_two_cards():
    v = render(card_px=300)
    second = np.eye(3)
    second[:2, 2] = [0.0, CH + 8]  # another card just below the first
    cam = v.card_h
    pattern = card.render_card(dpi=300)
    img = paste(v.image, pattern, cam @ second @ card_to_plane_px(pattern.shape[1] / CW))
    d = find_card(img)
    assert d.code == "two_cards" and "two cards" in d.reason and not d.accepted


def _board_image(dictionary: int, ids: list[int]) -> np.ndarray:
    b = cv2.aruco.CharucoBoard(card.SQUARES, 1.0, 0.75, cv2.aruco.getPredefinedDictionary(dictionary),
                               np.array(ids, np.int32))
    img = np.full((700, 1000), 200, np.uint8)
    img[150:450, 150:750] = b.generateImage((600, 300), marginSize=0, borderBits=1)
    return np.dstack([img] * 3)


@pytest.mark.parametrize(("dictionary", "ids", "words"), [
    (cv2.aruco.DICT_6X6_250, list(range(9)), "another dictionary (DICT_6X6_1000"),
    (cv2.aruco.DICT_APRILTAG_36h11, list(range(9)), "another dictionary (DICT_APRILTAG_36h11"),
    (cv2.aruco.DICT_4X4_50, list(range(9)), "mostly with other ids"),  # a default ChArUco board of the same dictionary
])
def test_markers_of_another_dictionary_or_ids_are_not_our_card(dictionary: int, ids: list[int], words: str):
    d = find_card(_board_image(dictionary, ids))
    assert d.code == "not_our_card" and words in d.reason and not d.found


def test_a_mirrored_card():
    v = render(tilt=10, card_px=350)
    d = find_card(np.ascontiguousarray(v.image[:, ::-1]))
    assert d.code == "mirrored" and "mirror" in d.reason and not d.accepted


def test_too_small():
    v = render(card_px=150)
    d = find_card(v.image)
    if d.found:  # the default threshold (200 px) refuses it when its markers are read at all
        assert d.code == "too_small" and "too small" in d.reason
    big = render(card_px=300)
    d = find_card(big.image, Thresholds(min_card_px=350))
    assert d.code == "too_small" and f"({d.card_px:.0f} px along its long side, at least 350 needed)" in d.reason
    assert d.homography is not None and d.card_px < 350  # refused, but what was measured is still reported


def test_too_tilted():
    v = render(tilt=68, card_px=560)
    d = find_card(v.image)
    assert d.found and d.tilt_deg > 62
    assert d.code == "too_tilted" and "degrees from face-on" in d.reason  # default limit: 60 degrees
    assert find_card(render(tilt=35, card_px=400).image, Thresholds(max_tilt_deg=20)).code == "too_tilted"


def test_partly_hidden():
    v = render(card_px=400)
    hide = cv2.perspectiveTransform(np.array([[[CW / 2, -3]], [[CW + 3, -3]], [[CW + 3, CH + 3]], [[CW / 2, CH + 3]]],
                                             np.float64), v.card_h).reshape(-1, 2)
    img = v.image.copy()
    cv2.fillPoly(img, [np.round(hide).astype(np.int32)], (190, 140, 120))  # a dressing over half the card
    d = find_card(img)
    assert d.found and d.code == "partly_hidden" and "partly hidden" in d.reason and d.markers_found < 6
    assert "at least 9 needed" in d.reason


def test_bad_fit_when_the_points_do_not_fit_the_limit():
    d = find_card(render(card_px=400).image, Thresholds(max_reprojection_px=0.01))
    assert d.code == "bad_fit" and "reprojection error" in d.reason


def test_printed_at_the_wrong_size_when_the_measured_bar_is_off():
    img = render(card_px=400).image
    assert find_card(img, bar_mm=50.5).accepted  # within 1 mm: a ruler's reading
    d = find_card(img, bar_mm=47.0)
    assert d.code == "wrong_print_size" and "47 mm" in d.reason and "100%" in d.reason and not d.accepted


def test_any_image_layout_is_read():
    v = render(card_px=400)
    grey = cv2.cvtColor(v.image, cv2.COLOR_RGB2GRAY)
    assert find_card(grey).accepted
    assert find_card(v.image.astype(np.float32) / 255.0).accepted
    assert find_card(np.dstack([v.image, np.full(v.image.shape[:2], 255, np.uint8)])).accepted
    assert W == v.image.shape[1]
    assert camera((0, 0), 0, 400).shape == (3, 3)


def test_real_foot_photos_without_a_card_are_no_card(fuseg_dir):
    from PIL import Image

    photos = sorted((fuseg_dir / "images" / "val").glob("*.jpg"))[:20]
    assert photos
    codes = {p.name: find_card(np.asarray(Image.open(p).convert("RGB"))).code for p in photos}
    assert set(codes.values()) == {"no_card"}, codes  # no false card, no "other dictionary" in skin texture
