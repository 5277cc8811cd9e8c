"""Wound area in physical units: pixels always, mm² only when the photo's scale is known (never guessed).

The scale is millimetres per pixel of the photo as read (after EXIF rotation, which does not change it): from a
ruler or calibration sticker in the photo, or the camera set-up of a clinic. `dfudet predict --mm-per-px`, the
`scale` column of a photo list / VISITS.csv and the service's `mm_per_px` field all go through `check_mm_per_px`.

Without a user scale, the photo is searched for the dfudet calibration card (`dfudet.marker`): when it is found and
trusted, each outline is mapped onto the card's plane and measured there (mm² per outline, not one global scale).
Every area states its source: `area_source` "user" (a given scale wins), "card", or null with `area_note` saying
why (no scale, or the card's refusal reason).
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from dfudet.data import instance_masks
from dfudet.errors import ConfigError
from dfudet.inference.backend import Detections
from dfudet.marker.detect import CardDetection, find_card
from dfudet.marker.scale import mask_area_mm2, mask_mm_per_px

# a number and an optional unit: "0.2", "0.2 mm/px", "5 px/mm"
_NUMBER = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*(.*)")
_MM_PER_PX = {"", "mm/px", "mm/pixel", "mm/pix", "mmperpx", "mmperpixel"}
_PX_PER_MM = {"px/mm", "pixel/mm", "pixels/mm", "pix/mm", "pxpermm", "pixelspermm", "pixelpermm"}
NO_SCALE_NOTE = "no scale given (mm per pixel) and no calibration card found: areas are in pixels only"
CARD_REFUSED_NOTE = "areas are in pixels only: "  # + the card's refusal reason


def check_mm_per_px(value: float | str | None, where: str) -> float | None:
    """A positive, finite mm-per-pixel scale, None for an empty value, or a ConfigError naming `where`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: scale {value!r} is not a number (millimetres per pixel, e.g. 0.2)") from None
    if not math.isfinite(v) or v <= 0:
        raise ConfigError(f"{where}: scale must be a positive number of millimetres per pixel, got {value!r}")
    return v


def area_mm2(area_px: float, mm_per_px: float | None) -> float | None:
    """Area in mm² of `area_px` pixels at `mm_per_px` (None when the scale is unknown)."""
    return None if mm_per_px is None else float(area_px) * mm_per_px * mm_per_px


def parse_scale(text: str, where: str) -> float | None:
    """mm per pixel from "0.2", "0.2 mm/px" or "5 px/mm" (None when empty); ConfigError for anything else."""
    t = text.strip()
    if not t:
        return None
    m = _NUMBER.fullmatch(t)
    if m is None:
        return check_mm_per_px(t, where)  # raises: not a number
    value = check_mm_per_px(m.group(1), where)
    unit = re.sub(r"\s+", "", m.group(2).lower())
    if unit in _MM_PER_PX:
        return value
    if unit in _PX_PER_MM and value is not None:
        return 1.0 / value
    raise ConfigError(f"{where}: unknown scale unit {m.group(2)!r} in {t!r} (use mm/px, e.g. '0.2 mm/px', or px/mm)")


def round_mm2(value: float | None) -> float | None:
    """mm² as every output writes it: 6 significant digits (a 10-pixel wound at 0.01 mm/px stays 0.001, not 0)."""
    return None if value is None else float(f"{value:.6g}")


def card_note(card: CardDetection | None) -> str:
    """The `area_note` of a photo measured without a usable scale: the card's refusal reason, or no scale at all."""
    if card is None or card.reason is None or card.code == "no_card":
        return NO_SCALE_NOTE
    return CARD_REFUSED_NOTE + card.reason


def outline_fields(kept: Detections, mm_per_px: float | None, image: np.ndarray | None = None,
                   card: CardDetection | None = None, bar_mm: float | None = None) -> dict[str, Any]:
    """The outline fields of one photo (the service's response, each image of predictions.json).

    `{"outlines": false}` for a box-only model; for an outline model `detections` (one `{outline, area_px,
    area_mm2}` per box, in the order of `boxes`), `mm_per_px`, `area_source` and, without mm², an `area_note` saying
    why areas are in pixels only. Outlines are COCO polygons in the photo's pixels (1 decimal); mm² has 6
    significant digits.

    Scale sources, in order: `mm_per_px` (the user's; "user"); else the calibration card, searched in `image` (or
    `card`, an earlier search of the same photo), when accepted ("card": each outline's mask is mapped onto the
    card's plane, and each detection also gets `mm_per_px`, the mean local scale at that wound, for display); else
    none (`area_source` null). `card` in the output summarises the search (null when a user scale made it moot).
    `bar_mm`: the card's printed 50 mm bar as the user measured it (a card printed at the wrong size is refused).
    """
    if kept.masks is None:
        return {"outlines": False}
    if mm_per_px is None and card is None and image is not None:
        card = find_card(image, bar_mm=bar_mm)
    use_card = mm_per_px is None and card is not None and card.accepted and card.homography is not None
    detections = []
    for rle in kept.masks:
        px = instance_masks.area(rle)
        det: dict[str, Any] = {
            "outline": [[round(v, 1) for v in poly] for poly in instance_masks.polygons(rle, tolerance=1.0)],
            "area_px": px}
        if use_card and card is not None and card.homography is not None:
            mask = instance_masks.decode(rle)
            local = mask_mm_per_px(mask, card.homography)
            det["area_mm2"] = round_mm2(mask_area_mm2(mask, card.homography))
            det["mm_per_px"] = None if local is None else float(f"{local:.6g}")
        else:
            det["area_mm2"] = round_mm2(area_mm2(px, mm_per_px))
        detections.append(det)
    source = "user" if mm_per_px is not None else ("card" if use_card else None)
    fields: dict[str, Any] = {"outlines": True, "detections": detections, "mm_per_px": mm_per_px,
                              "area_source": source,
                              "card": None if mm_per_px is not None or card is None else card.summary()}
    if source is None:
        fields["area_note"] = card_note(card)
    return fields
