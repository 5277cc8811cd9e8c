"""Rendered views of a plane holding the calibration card and a wound, with their true homographies."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dfudet.marker import card as card_mod
from dfudet.marker.view import pinhole_homography

W, H = 1280, 960
CW, CH = card_mod.CARD_MM
WOUND_CENTRE = (CW + 35.0, CH / 2)  # mm on the plane (card origin = plane origin): beside the card
WOUND_AXES = (18.0, 11.0)  # mm: an ellipse of pi * 18 * 11 = 622 mm²


@dataclass
class View:
    image: np.ndarray  # HxWx3 uint8 RGB
    card_h: np.ndarray  # true homography card mm -> image px
    wound: np.ndarray  # HxW bool: the wound ellipse as seen


def camera(centre: tuple[float, float], tilt: float, card_px: float, azimuth: float = 30.0, roll: float = 15.0
           ) -> np.ndarray:
    """Homography plane mm -> image px of a pinhole camera (focal length = image width) looking at `centre` from a
    distance giving about `card_px` pixels for the card's long side, its line of sight `tilt` degrees off normal."""
    return pinhole_homography(centre, tilt, azimuth, roll, W * CW / card_px, float(W), (W, H))


def skin(seed: int = 0) -> np.ndarray:
    """A smooth skin-coloured background with texture (no markers in it)."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (H, W)).astype(np.float32), (0, 0), 6) * 60
    base = np.array([200, 150, 130], np.float32)
    return np.clip(base + noise[..., None], 0, 255).astype(np.uint8)


def paste(image: np.ndarray, pattern: np.ndarray, pattern_to_image: np.ndarray) -> np.ndarray:
    """`pattern` (grey, its own pixel-centre coordinates) warped onto `image` by the 3x3 map."""
    warped = cv2.warpPerspective(pattern.astype(np.float32), pattern_to_image, (W, H), flags=cv2.INTER_LINEAR)
    alpha = cv2.warpPerspective(np.ones(pattern.shape, np.float32), pattern_to_image, (W, H),
                                flags=cv2.INTER_LINEAR)[..., None]
    return np.clip(image * (1 - alpha) + warped[..., None] * alpha, 0, 255).astype(np.uint8)


def card_to_plane_px(px_per_mm: float) -> np.ndarray:
    """card image pixels (pixel centres) -> card mm, for a render at `px_per_mm`."""
    return np.array([[1 / px_per_mm, 0, 0.5 / px_per_mm], [0, 1 / px_per_mm, 0.5 / px_per_mm], [0, 0, 1.0]])


def render(tilt: float = 0.0, card_px: float = 400.0, azimuth: float = 30.0, roll: float = 15.0,
           place: np.ndarray | None = None, seed: int = 0, centre: tuple[float, float] | None = None) -> View:
    """The card (at `place` on the plane: card mm -> plane mm, default identity) and the wound, seen by a camera."""
    place = np.eye(3) if place is None else place
    cam = camera(centre or ((CW + WOUND_CENTRE[0]) / 2, CH / 2), tilt, card_px, azimuth, roll)
    # the card rendered at about the resolution the camera sees it (area-averaged from 600 dpi): warping a much finer
    # render with bilinear interpolation would alias its edges, which a camera's optics do not
    r = float(np.clip(card_px / CW, 3.0, 12.0))
    pattern = card_mod.render_card(dpi=int(round(r * 25.4)))
    r = pattern.shape[1] / CW
    img = paste(skin(seed), pattern, cam @ place @ card_to_plane_px(r))
    wound = wound_mask(cam)
    img[wound] = (img[wound] * np.array([0.8, 0.35, 0.3])).astype(np.uint8)
    return View(img, cam @ place, wound)


def wound_mask(cam: np.ndarray) -> np.ndarray:
    """The wound ellipse as the camera sees it (pixel centres mapped back to the plane: exact up to sampling)."""
    ys, xs = np.mgrid[0:H, 0:W]
    pts = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)]) .astype(np.float64)
    q = np.linalg.inv(cam) @ pts
    u, v = q[0] / q[2], q[1] / q[2]
    a, b = WOUND_AXES
    inside = ((u - WOUND_CENTRE[0]) / a) ** 2 + ((v - WOUND_CENTRE[1]) / b) ** 2 <= 1
    return inside.reshape(H, W)


def true_wound_mm2() -> float:
    return float(np.pi * WOUND_AXES[0] * WOUND_AXES[1])
