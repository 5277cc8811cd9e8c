"""Areas in mm² measured with the card: each outline is mapped onto the card's plane through the homography.

There is no single "mm per pixel" of a photo taken at an angle: a pixel near the camera covers less skin than one
far away. So an outline is mapped, pixel by pixel (a mask) or vertex by vertex (a polygon), from the photo onto the
card's plane through the inverse of the card's homography, and its area is measured there. This is exact for a wound
in the card's plane; the card must lie on the same skin surface, beside the wound.

For a mask, each pixel's area on the card's plane is the Jacobian determinant of the photo -> card map at its centre:
for a homography G (photo -> card, 3x3) it is |det G| / w³ with w = g31·x + g32·y + g33. The sum over the mask's
pixels is the mask's area in mm²; with a constant scale s it is the pixel count times s², as `area_mm2` of a user
scale is.
"""

from __future__ import annotations

import numpy as np


def photo_to_card(homography: np.ndarray) -> np.ndarray:
    """The inverse homography: photo pixels -> card millimetres."""
    g = np.linalg.inv(np.asarray(homography, np.float64))
    return g / g[2, 2]


def _map(g: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.c_[pts, np.ones(len(pts))] @ g.T
    return p[:, :2] / p[:, 2:3]


def polygon_area_mm2(polygon_px: np.ndarray, homography: np.ndarray) -> float:
    """Area in mm² of a polygon (N x 2 photo pixels, or a flat COCO list) mapped onto the card's plane (shoelace)."""
    pts = np.asarray(polygon_px, np.float64).reshape(-1, 2)
    if len(pts) < 3:
        return 0.0
    q = _map(photo_to_card(homography), pts)
    x, y = q[:, 0], q[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def mask_area_mm2(mask: np.ndarray, homography: np.ndarray) -> float:
    """Area in mm² of a binary mask (HxW, photo pixels) on the card's plane: the sum of each pixel's mapped area."""
    ys, xs = np.nonzero(np.asarray(mask))
    if len(xs) == 0:
        return 0.0
    g = photo_to_card(homography)
    w = g[2, 0] * xs + g[2, 1] * ys + g[2, 2]
    return float(abs(np.linalg.det(g)) * np.sum(1.0 / np.abs(w) ** 3))


def mm_per_px_at(homography: np.ndarray, point_px: tuple[float, float]) -> float:
    """The local scale at a photo point (the square root of one pixel's area on the card's plane), for display."""
    g = photo_to_card(homography)
    w = g[2, 0] * point_px[0] + g[2, 1] * point_px[1] + g[2, 2]
    return float(np.sqrt(abs(np.linalg.det(g)) / abs(w) ** 3))


def mask_mm_per_px(mask: np.ndarray, homography: np.ndarray) -> float | None:
    """The mean local scale over a mask: sqrt(mm² / pixels), the "mm per pixel at the wound"; None when empty."""
    n = int(np.count_nonzero(mask))
    return None if n == 0 else float(np.sqrt(mask_area_mm2(mask, homography) / n))
