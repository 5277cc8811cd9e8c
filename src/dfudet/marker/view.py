"""A simulated camera view of the card's plane: the homography a pinhole camera gives, for renders of the card in a
scene with a known answer (the marker bench, the tests, a user checking their own set-up)."""

from __future__ import annotations

import numpy as np


def pinhole_homography(target_mm: tuple[float, float], tilt_deg: float, azimuth_deg: float, roll_deg: float,
                       distance_mm: float, focal_px: float, size: tuple[int, int]) -> np.ndarray:
    """Homography plane mm (z = 0) -> image px of a pinhole camera looking at `target_mm` from `distance_mm`.

    Args:
        target_mm: the point of the plane on the optical axis (it lands at the image centre).
        tilt_deg: angle between the line of sight and the plane's normal (0: face-on).
        azimuth_deg: direction of that tilt around the normal.
        roll_deg: rotation of the camera around its line of sight.
        distance_mm: camera to target.
        focal_px: focal length in pixels.
        size: (width, height) of the image in pixels.

    Returns:
        The 3x3 homography, normalised so its [2, 2] entry is 1.
    """
    t, a = np.radians(tilt_deg), np.radians(azimuth_deg)
    o = np.array([target_mm[0], target_mm[1], 0.0])
    pos = o + distance_mm * np.array([np.sin(t) * np.cos(a), np.sin(t) * np.sin(a), -np.cos(t)])
    z = (o - pos) / np.linalg.norm(o - pos)
    x = np.array([1.0, 0.0, 0.0]) - z[0] * z
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    r = np.radians(roll_deg)
    x, y = np.cos(r) * x + np.sin(r) * y, -np.sin(r) * x + np.cos(r) * y
    rot = np.stack([x, y, z])
    w, h = size
    k = np.array([[focal_px, 0, (w - 1) / 2], [0, focal_px, (h - 1) / 2], [0, 0, 1.0]])
    m = k @ np.c_[rot[:, 0], rot[:, 1], -rot @ pos]
    return m / m[2, 2]
