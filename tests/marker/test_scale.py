"""mm² of outlines mapped onto the card's plane."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dfudet.marker.scale import mask_area_mm2, mask_mm_per_px, mm_per_px_at, polygon_area_mm2

# a card-plane (mm) -> photo (px) homography with strong perspective
H = np.array([[4.0, 0.8, 300.0], [-0.5, 3.6, 200.0], [0.002, 0.0015, 1.0]])


def _to_px(pts_mm: np.ndarray) -> np.ndarray:
    return cv2.perspectiveTransform(np.asarray(pts_mm, np.float64).reshape(-1, 1, 2), H).reshape(-1, 2)


def test_a_known_polygon_maps_back_to_its_area_in_mm2():
    square = np.array([[100, 20], [140, 20], [140, 45], [100, 45]], float)  # 40 x 25 mm = 1000 mm²
    assert polygon_area_mm2(_to_px(square), H) == pytest.approx(1000.0, rel=1e-9)
    assert polygon_area_mm2(_to_px(square).ravel().tolist(), H) == pytest.approx(1000.0, rel=1e-9)  # COCO form
    assert polygon_area_mm2(np.zeros((2, 2)), H) == 0.0


def test_a_mask_under_a_similarity_is_pixels_times_the_scale_squared():
    s = 0.25  # mm per px: photo = card plane / s
    sim = np.array([[1 / s, 0, 10], [0, 1 / s, 5], [0, 0, 1]])
    mask = np.zeros((100, 120), bool)
    mask[20:60, 30:90] = True
    assert mask_area_mm2(mask, sim) == pytest.approx(mask.sum() * s * s, rel=1e-9)
    assert mask_mm_per_px(mask, sim) == pytest.approx(s)
    assert mm_per_px_at(sim, (3.0, 4.0)) == pytest.approx(s)
    assert mask_area_mm2(np.zeros((5, 5), bool), sim) == 0.0 and mask_mm_per_px(np.zeros((5, 5)), sim) is None


def test_a_rasterised_mask_under_perspective_gives_the_polygons_mm2():
    # the pixels whose centres map inside an ellipse of 20 x 12 mm semi-axes on the plane
    ys, xs = np.mgrid[0:800, 0:1200]
    q = np.linalg.inv(H) @ np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    u, v = q[0] / q[2], q[1] / q[2]
    mask = ((((u - 120) / 20) ** 2 + ((v - 40) / 12) ** 2) <= 1).reshape(800, 1200)
    assert 2000 < mask.sum() < 10000
    assert mask_area_mm2(mask, H) == pytest.approx(np.pi * 20 * 12, rel=0.01)
    # the local scale differs across the photo: perspective, so no single mm per px fits
    assert mm_per_px_at(H, tuple(_to_px([[0, 0]])[0])) != pytest.approx(mm_per_px_at(H, tuple(_to_px([[150, 60]])[0])),
                                                                        rel=0.05)
