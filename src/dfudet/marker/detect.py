"""Find the calibration card in a photo: the homography card (mm) -> photo (px), its quality, or why it is refused.

Detection is OpenCV's (`cv2.aruco.ArucoDetector` with sub-pixel corner refinement, then
`cv2.aruco.CharucoDetector.detectBoard` for the chessboard corners between the markers). Every point found (the 10
ChArUco corners and the 4 corners of each of the 9 markers, at most 46) goes into one RANSAC homography
(`cv2.findHomography`), refined by weighted least squares on its inliers (`_fit`).

Quality, and the refusals (each a per-photo `code` and a sentence in `reason`; thresholds in `Thresholds`, chosen on
the render bench, bench/marker_bench.py, docs/marker.md):
- `no_card`: none of the card's markers;
- `two_cards`: one of the card's marker ids seen twice (two cards: which one is beside the wound?);
- `not_our_card`: markers, but of another ArUco/AprilTag dictionary or other ids of DICT_4X4_50 (another board);
- `mirrored`: the card is found only in the mirror image of the photo (a selfie camera, or printed on the back of a
  transparency): its markers do not read the right way round;
- `partly_hidden`: fewer than `min_markers` of the 9 markers (a hidden card gives a short, less certain baseline);
- `too_small`: the card's long side spans fewer than `min_card_px` pixels;
- `too_tilted`: the card is seen at more than `max_tilt_deg` from face-on;
- `bad_fit`: the points do not fit one plane view (reprojection RMS over `max_reprojection_px`: a bent or curled
  card, or a false detection);
- `wrong_print_size`: the user measured the printed 50 mm scale bar and it is off by more than `bar_tolerance_mm`.
  We refuse rather than rescale: a ruler reads the bar to about 0.5 mm (1%, i.e. 2% in area), and printers that
  rescale ("fit to page") often scale width and height differently, which one bar cannot reveal. Reprint at 100%.

Tilt is measured from the homography without knowing the camera: the Jacobian of card -> photo at the card's centre
is a local affine map whose singular values s1 >= s2 give the foreshortening, tilt = arccos(s2 / s1). This is the
angle between the line of sight and the card's normal (exact for an affine camera, within a degree or two for a card
that fills a small part of a phone's field of view; the bench reports it against the true tilt). It needs no focal
length, and a card seen face-on anywhere in the frame reads 0 (a plane parallel to the sensor maps by a similarity).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from dfudet.marker import card as card_mod

# markers of these dictionaries, when the card's are absent, mean "a card, but not ours" (DICT_4X4_1000 holds
# DICT_4X4_50 as its first 50 codes, so it also catches other ids of the card's own dictionary)
OTHER_DICTIONARIES = ("DICT_4X4_1000", "DICT_5X5_1000", "DICT_6X6_1000", "DICT_7X7_1000", "DICT_APRILTAG_36h11",
                      "DICT_ARUCO_ORIGINAL")
MIN_FOREIGN_MARKERS = 2  # one stray code in a skin texture is not a card
MIN_MARKER_PERIMETER_PX = 40.0  # smallest marker the detector looks for (a 10 px side: 1.7 px per bit)


@dataclass(frozen=True)
class Thresholds:
    """When a found card is trusted (defaults chosen on the render bench, docs/marker.md: its accepted cases meet
    median <= 2%, p90 <= 5% and max <= 10% scale error overall and at every tilt)."""

    min_card_px: float = 200.0  # the card's long side (63.5 mm) in photo pixels
    # angle between the line of sight and the card's normal; the bench accepted up to 70 degrees (its largest
    # tilt), but its worst case there was 9.2% and its plane is perfectly flat, unlike a foot: 60 is the stated cap
    max_tilt_deg: float = 60.0
    max_reprojection_px: float = 2.0  # RMS of the homography's inlier points
    min_markers: int = 9  # of 9: with 6-8 markers read, 1 in 10 bench cases was off by over 10%
    bar_tolerance_mm: float = 1.0  # measured scale bar vs 50 mm

    def as_dict(self) -> dict[str, float]:
        return {"min_card_px": self.min_card_px, "max_tilt_deg": self.max_tilt_deg,
                "max_reprojection_px": self.max_reprojection_px, "min_markers": self.min_markers,
                "bar_tolerance_mm": self.bar_tolerance_mm}


DEFAULT_THRESHOLDS = Thresholds()


@dataclass(frozen=True)
class CardDetection:
    """What the search for the card in one photo found; `accepted` only when areas may be converted with it."""

    found: bool  # the card's own markers were seen (it may still be refused)
    accepted: bool
    code: str | None  # None when accepted; else no_card, two_cards, not_our_card, mirrored, partly_hidden, ...
    reason: str | None  # the sentence for the user (None when accepted)
    homography: np.ndarray | None = field(default=None, repr=False)  # card mm -> photo px (3x3), when fitted
    card_px: float | None = None  # the card's long side in photo pixels
    tilt_deg: float | None = None
    reprojection_px: float | None = None  # RMS over the inlier points
    markers_found: int = 0
    markers_expected: int = len(card_mod.MARKER_IDS)
    points_used: int = 0  # inlier points of the homography (ChArUco corners + marker corners)
    points_found: int = 0
    outline_px: np.ndarray | None = field(default=None, repr=False)  # the card's 4 corners in the photo

    def summary(self) -> dict[str, Any]:
        """The JSON form of the outputs (predict, serve, track, evaluate)."""
        return {"found": self.found, "accepted": self.accepted, "code": self.code, "reason": self.reason,
                "card_px": _r(self.card_px, 1), "tilt_deg": _r(self.tilt_deg, 1),
                "reprojection_px": _r(self.reprojection_px, 3), "markers_found": self.markers_found,
                "markers_expected": self.markers_expected, "points_used": self.points_used,
                "homography": None if self.homography is None else [[float(f"{v:.8g}") for v in row]
                                                                     for row in self.homography]}


def _r(v: float | None, digits: int) -> float | None:
    return None if v is None else round(float(v), digits)


def _refused(code: str, reason: str, found: bool = False, **kw: Any) -> CardDetection:
    return CardDetection(found=found, accepted=False, code=code, reason=reason, **kw)


def _grey(image: np.ndarray) -> np.ndarray:
    """A uint8 greyscale copy of an HxW, HxWx3 (RGB) or HxWx4 image, whatever its dtype."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = np.clip(a * (255.0 if a.dtype.kind == "f" and a.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]
    if a.ndim == 3:
        a = cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(a)


def _params(shape: tuple[int, ...]) -> cv2.aruco.DetectorParameters:
    p = cv2.aruco.DetectorParameters()
    p.cornerRefinementMethod = cv2.aruco.CORNER_REFINE_SUBPIX
    # the default (3% of the long side) would miss a 200 px card in a 12 MP photo; the card's size is judged after
    p.minMarkerPerimeterRate = min(0.03, MIN_MARKER_PERIMETER_PX / max(shape[:2]))
    return p


def _markers(grey: np.ndarray, dictionary_name: str) -> tuple[list[np.ndarray], np.ndarray]:
    """(corners (4, 2) per marker, ids) of one dictionary's markers in `grey`."""
    d = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, dictionary_name))
    corners, ids, _ = cv2.aruco.ArucoDetector(d, _params(grey.shape)).detectMarkers(grey)
    if ids is None:
        return [], np.zeros(0, np.int32)
    return [np.asarray(c, np.float64).reshape(4, 2) for c in corners], np.asarray(ids, np.int32).ravel()


def _ours(ids: np.ndarray) -> np.ndarray:
    return np.isin(ids, card_mod.MARKER_IDS)


def _tilt_deg(h: np.ndarray, at: tuple[float, float]) -> float:
    """arccos(s2/s1) of the Jacobian of `h` (card mm -> px) at card point `at`: the foreshortening angle."""
    x, y = at
    w = h[2, 0] * x + h[2, 1] * y + h[2, 2]
    u = (h[0, 0] * x + h[0, 1] * y + h[0, 2]) / w
    v = (h[1, 0] * x + h[1, 1] * y + h[1, 2]) / w
    jac = np.array([[h[0, 0] - u * h[2, 0], h[0, 1] - u * h[2, 1]],
                    [h[1, 0] - v * h[2, 0], h[1, 1] - v * h[2, 1]]]) / w
    s = np.linalg.svd(jac, compute_uv=False)
    return float(np.degrees(np.arccos(np.clip(s[1] / s[0], 0.0, 1.0))))


CHARUCO_WEIGHT = 4  # a ChArUco corner counts this many times in the final fit (about 3x more precise)


def _fit(grey: np.ndarray, corners: list[np.ndarray], ids: np.ndarray
         ) -> tuple[np.ndarray, float, int, int] | None:
    """(homography card mm -> px, inlier RMS px, inliers, points) from the card's markers and ChArUco corners.

    RANSAC over every point finds the outliers; the final least-squares fit on the inliers counts each ChArUco corner
    CHARUCO_WEIGHT times: saddle points are located about 3x more precisely than the markers' L-shaped corners
    (about 0.2 against 0.6 px RMS in a render with 0.7 px blur), while the marker corners give the fit its height
    (the ChArUco corners span only 8.5 mm vertically). Fitting the markers' centres instead of their corners (blur
    pulls the corners inwards along the diagonals, not the centre) was tried and measured worse on the render bench
    (accepted median 0.9% against 0.6%, docs/marker.md).
    """
    geo = card_mod.geometry()
    src_m = np.concatenate([geo.marker_mm[int(i)] for i in ids])
    dst_m = np.concatenate(corners)
    charuco = cv2.aruco.CharucoParameters()
    charuco.checkMarkers = False  # its consistency check drops whole boards seen at an angle; RANSAC checks instead
    det = cv2.aruco.CharucoDetector(card_mod.board(), charuco, _params(grey.shape))
    mc = tuple(np.asarray(c, np.float32).reshape(1, 4, 2) for c in corners)
    ch_corners, ch_ids, _, _ = det.detectBoard(grey, markerCorners=mc, markerIds=ids.reshape(-1, 1))
    if ch_ids is not None and len(ch_ids):
        src_c = geo.charuco_mm[np.asarray(ch_ids).ravel()]
        dst_c = np.asarray(ch_corners, np.float64).reshape(-1, 2)
    else:
        src_c = dst_c = np.zeros((0, 2))
    s, d = np.concatenate([src_m, src_c]), np.concatenate([dst_m, dst_c])
    if len(s) < 4:
        return None
    h, inl = cv2.findHomography(s, d, cv2.RANSAC, ransacReprojThreshold=3.0, maxIters=2000, confidence=0.999)
    if h is None:
        return None
    keep = inl.ravel().astype(bool)
    if keep.sum() < 4:
        return None
    km, kc = keep[:len(src_m)], keep[len(src_m):]
    fs = np.concatenate([src_m[km], *[src_c[kc]] * CHARUCO_WEIGHT])
    fd = np.concatenate([dst_m[km], *[dst_c[kc]] * CHARUCO_WEIGHT])
    h, _ = cv2.findHomography(fs, fd, 0)  # least squares (DLT + Levenberg-Marquardt) on the weighted inliers
    if h is None:
        return None
    proj = cv2.perspectiveTransform(s[keep].reshape(-1, 1, 2), h).reshape(-1, 2)
    rms = float(np.sqrt(np.mean(np.sum((proj - d[keep]) ** 2, axis=1))))
    return h / h[2, 2], rms, int(keep.sum()), len(s)


def _foreign(grey: np.ndarray, ids: np.ndarray) -> str | None:
    """Why the markers in the photo are not the card's, or None when there are none to speak of."""
    for name in OTHER_DICTIONARIES:
        _, other = _markers(grey, name)
        if name == "DICT_4X4_1000":
            other = other[~_ours(other)]
        if len(other) >= MIN_FOREIGN_MARKERS:
            shown = ", ".join(str(int(i)) for i in sorted(set(other.tolist()))[:8])
            if name.startswith("DICT_4X4"):
                return (f"markers of the card's dictionary ({card_mod.DICTIONARY_NAME}) but with other ids ({shown}): "
                        "another board, not the dfudet card (print it with `dfudet marker`)")
            return (f"{len(other)} markers of another dictionary ({name}, ids {shown}): not the dfudet card "
                    "(print it with `dfudet marker`)")
    return None


def find_card(image: np.ndarray, thresholds: Thresholds = DEFAULT_THRESHOLDS,
              bar_mm: float | None = None, explain_absence: bool = True) -> CardDetection:
    """Look for the dfudet card in one photo (RGB or grey, its own pixels) and judge whether to measure with it.

    Args:
        image: the photo as displayed (after EXIF rotation), HxW or HxWx3 RGB.
        thresholds: the refusal limits (defaults from the render bench).
        bar_mm: the printed scale bar as the user measured it (nominal 50 mm); None when not checked.
        explain_absence: without the card's markers, look for a mirrored card and other dictionaries (up to 7
            more detector passes) to say why; False answers no_card at once (the render bench).

    Returns:
        A CardDetection: accepted with the homography and its quality, or refused with the code and reason.
    """
    grey = _grey(image)
    corners, ids = _markers(grey, card_mod.DICTIONARY_NAME)
    ours = _ours(ids)
    n_ours = int(ours.sum())
    if explain_absence and (n_ours == 0 or n_ours < thresholds.min_markers):
        # a mirrored card reads as ours only in the mirror image
        _, flipped = _markers(np.ascontiguousarray(grey[:, ::-1]), card_mod.DICTIONARY_NAME)
        n_flip = int(_ours(flipped).sum())
        if n_flip >= max(2, n_ours + 1):
            return _refused("mirrored", f"the card is mirrored (found only in the mirror image of the photo, "
                            f"{n_flip} markers): a front camera that mirrors, or a card printed mirror-imaged; "
                            "retake with the rear camera or reprint with `dfudet marker`", markers_found=n_flip)
    foreign_ids = ids[~ours]
    if n_ours < thresholds.min_markers and len(foreign_ids) >= max(MIN_FOREIGN_MARKERS, 2 * n_ours):
        # mostly other ids of the card's dictionary: another board that shares a few of the card's ids
        shown = ", ".join(str(int(i)) for i in sorted(set(foreign_ids.tolist()))[:8])
        return _refused("not_our_card", f"markers of the card's dictionary ({card_mod.DICTIONARY_NAME}) but mostly "
                        f"with other ids ({shown}): another board, not the dfudet card (print it with `dfudet "
                        "marker`)")
    if n_ours == 0:
        foreign = _foreign(grey, ids) if explain_absence else None
        if foreign:
            return _refused("not_our_card", foreign)
        return _refused("no_card", "no calibration card in the photo (print one with `dfudet marker` and lay it "
                                   "beside the wound)")
    our_ids = ids[ours]
    counts = np.bincount(our_ids, minlength=max(card_mod.MARKER_IDS) + 1)
    if counts.max() > 1:
        twice = [int(i) for i in np.nonzero(counts > 1)[0]]
        return _refused("two_cards", f"two cards in the photo (marker ids {twice} seen twice): keep one card, "
                        "beside the wound being measured", found=True, markers_found=len(set(our_ids.tolist())))
    if n_ours < thresholds.min_markers:
        return _refused("partly_hidden", f"the card is partly hidden or out of the frame: {n_ours} of "
                        f"{len(card_mod.MARKER_IDS)} markers found (at least {thresholds.min_markers} needed)",
                        found=True, markers_found=n_ours)
    fit = _fit(grey, [c for c, k in zip(corners, ours) if k], our_ids)
    if fit is None:
        return _refused("bad_fit", "the card's markers do not fit one flat card (no homography)", found=True,
                        markers_found=n_ours)
    h, rms, used, total = fit
    w_mm, h_mm = card_mod.CARD_MM
    outline = cv2.perspectiveTransform(np.array([[[0, 0], [w_mm, 0], [w_mm, h_mm], [0, h_mm]]], np.float64),
                                       h).reshape(4, 2)
    card_px = float((np.linalg.norm(outline[1] - outline[0]) + np.linalg.norm(outline[2] - outline[3])) / 2)
    tilt = _tilt_deg(h, (w_mm / 2, h_mm / 2))
    common: dict[str, Any] = {"found": True, "homography": h, "card_px": card_px, "tilt_deg": tilt,
                              "reprojection_px": rms, "markers_found": n_ours, "points_used": used,
                              "points_found": total, "outline_px": outline}
    jac_sign = np.linalg.det(h[:2, :2] - np.outer(h[:2, 2], h[2, :2]))  # orientation at the card's origin
    if jac_sign < 0:
        return _refused("mirrored", "the card is mirrored (its markers are laid out mirror-imaged): reprint it "
                                    "with `dfudet marker`", **common)
    t = thresholds
    if card_px < t.min_card_px:
        return _refused("too_small", f"the card is too small in the photo ({card_px:.0f} px along its long side, "
                        f"at least {t.min_card_px:.0f} needed): move the camera closer", **common)
    if tilt > t.max_tilt_deg:
        return _refused("too_tilted", f"the card is seen too much from the side ({tilt:.0f} degrees from face-on, "
                        f"at most {t.max_tilt_deg:.0f}): hold the camera facing the wound", **common)
    if rms > t.max_reprojection_px:
        return _refused("bad_fit", f"the card's points do not fit one flat card (reprojection error {rms:.2f} px, "
                        f"at most {t.max_reprojection_px:g}): is it bent, curled or blurred?", **common)
    if bar_mm is not None:
        off = float(bar_mm) - card_mod.SCALE_BAR_MM
        if not np.isfinite(off) or abs(off) > t.bar_tolerance_mm:
            return _refused("wrong_print_size", f"the card was printed at the wrong size (its scale bar measures "
                            f"{bar_mm:g} mm, not {card_mod.SCALE_BAR_MM:g} ± {t.bar_tolerance_mm:g} mm): reprint it "
                            "at 100% / actual size, without 'fit to page'", **common)
    return CardDetection(accepted=True, code=None, reason=None, **common)
