"""Wound area in physical units: pixels always, mm² only when the photo's scale is known (never guessed).

The scale is millimetres per pixel of the photo as read (after EXIF rotation, which does not change it): from a
ruler or calibration sticker in the photo, or the camera set-up of a clinic. `dfudet predict --mm-per-px`, the
`scale` column of a photo list / VISITS.csv and the service's `mm_per_px` field all go through `check_mm_per_px`.
"""

from __future__ import annotations

import math
import re
from typing import Any

from dfudet.data import instance_masks
from dfudet.errors import ConfigError
from dfudet.inference.backend import Detections

# a number and an optional unit: "0.2", "0.2 mm/px", "5 px/mm"
_NUMBER = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*(.*)")
_MM_PER_PX = {"", "mm/px", "mm/pixel", "mm/pix", "mmperpx", "mmperpixel"}
_PX_PER_MM = {"px/mm", "pixel/mm", "pixels/mm", "pix/mm", "pxpermm", "pixelspermm", "pixelpermm"}
NO_SCALE_NOTE = "no scale given (mm per pixel): areas are in pixels only"


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


def outline_fields(kept: Detections, mm_per_px: float | None) -> dict[str, Any]:
    """The outline fields of one photo (the service's response, each image of predictions.json).

    `{"outlines": false}` for a box-only model; for an outline model `detections` (one `{outline, area_px,
    area_mm2}` per box, in the order of `boxes`), `mm_per_px`, and without a scale an `area_note` that areas are in
    pixels only. Outlines are COCO polygons in the photo's pixels (1 decimal); mm² has 6 significant digits.
    """
    if kept.masks is None:
        return {"outlines": False}
    detections = []
    for rle in kept.masks:
        px = instance_masks.area(rle)
        mm2 = area_mm2(px, mm_per_px)
        detections.append({
            "outline": [[round(v, 1) for v in poly] for poly in instance_masks.polygons(rle, tolerance=1.0)],
            "area_px": px, "area_mm2": round_mm2(mm2)})
    fields: dict[str, Any] = {"outlines": True, "detections": detections, "mm_per_px": mm_per_px}
    if mm_per_px is None:
        fields["area_note"] = NO_SCALE_NOTE
    return fields
