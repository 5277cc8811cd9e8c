"""A photo quality gate: cheap measures of the photo as decoded, and the thresholds a photo must meet to be scored.

A blurred, dark, blown-out or tiny photo is where a detector's score stops meaning what it meant on the test set;
such a photo is to be sent to a person (labelled `review` with the reason), never silently scored. The measures:

- **sharpness**: the variance of the Laplacian (OpenCV's 3x3 aperture) of the grey image (ITU-R BT.601 luma)
  resized so that its long side is `MEASURE_SIDE` = 512 px (area interpolation down, bilinear up; aspect kept),
  divided by the variance of that grey image, times 1000. The fixed size makes it independent of the resolution
  (the same scene at 4000 px and at 512 px gets the same value, and a small photo, enlarged, reads as blurred, as
  it is for a detector fed 512 px). The division makes it independent of exposure and contrast: the raw variance of
  the Laplacian (kept as `laplacian_var`) of FUSeg test photos fell from a median 100 to 17 at 3 stops less light,
  as far as a Gaussian blur of sigma 1 px takes it, while this ratio stayed at 25-28 (bench/quality_sweep.py).
  Very dark photos read a little sharper (their few grey levels make steps): 34 at 5 stops less light, where the
  exposure checks send them to review anyway. Low = blurred.
- **exposure**: mean luma (0-255) and the shares of pixels near black (luma <= `DARK_LEVEL` = 15) and near white
  (luma >= `BRIGHT_LEVEL` = 240), on the photo at its own size.
- **size**: the short side in pixels.

All three are taken on the photo's content: uniform black bars along the edges (letterboxing: every FUSeg photo is
padded to 512 x 512 with black, a quarter of its pixels or more) are cut off first, with `PAD_MARGIN` px more on
each cut side so the step from photo to bar counts neither as sharpness nor as dark pixels. A border row or column
is a bar when no pixel in it is brighter than `PAD_LEVEL`; the cut is made only when the content keeps at least
half of the area (a photo that dark is an underexposed photo, not a letterboxed one).

The thresholds are in one place, `QualityThresholds` (typed, validated; bad values are a ConfigError naming the
field). The defaults were set from bench/quality_sweep.py, which measures how the shipped model's recall falls with
synthetic blur, darkening, brightening and downscaling of FUSeg test photos (docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dfudet.errors import ConfigError

MEASURE_SIDE = 512  # long side (px) of the grey image the sharpness is measured on
MIN_VARIANCE = 1.0  # a grey image varying less than this (a blank frame) has sharpness 0
DARK_LEVEL = 15  # luma at or below which a pixel counts as near black
BRIGHT_LEVEL = 240  # luma at or above which a pixel counts as near white (clipped highlights)
PAD_LEVEL = 8  # a border row/column whose brightest pixel is at most this is a black bar (JPEG ringing stays below)
PAD_MARGIN = 3  # px also cut inside each side where bars were cut (the ringing next to the bar)
MIN_CONTENT_SHARE = 0.5  # bars are cut only if the content keeps at least this share of the area


class QualityThresholds(BaseModel):
    """Where the gate stands: set from the shipped model's recall under synthetic degradation of FUSeg test photos
    (bench/results/quality_sweep_model.json, docs/benchmarks.md "Photo quality gate"): blur and darkness are
    flagged about where recall has fallen by a tenth, size where it collapses (0.686 at a 93 px short side, 0.412 at
    55 px); no clean FUSeg test photo fails."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sharpness_min: float = Field(3.0, ge=0, description="sharpness (1000 x variance of the Laplacian / variance, "
                                                         "at 512 px) below this: blurred")
    luma_min: float = Field(60.0, ge=0, le=255, description="mean luma below this: too dark")
    luma_max: float = Field(215.0, ge=0, le=255, description="mean luma above this: overexposed")
    dark_share_max: float = Field(0.6, ge=0, le=1, description="share of near-black pixels above this: too dark")
    bright_share_max: float = Field(0.25, ge=0, le=1, description="share of near-white pixels above this: "
                                                                 "overexposed")
    min_short_side: int = Field(96, ge=1, description="short side (px) below this: too small")

    @model_validator(mode="after")
    def _luma_order(self) -> QualityThresholds:
        if self.luma_min >= self.luma_max:
            raise ValueError(f"luma_min ({self.luma_min}) must be below luma_max ({self.luma_max})")
        return self


def quality_thresholds(**values: Any) -> QualityThresholds:
    """`QualityThresholds` from keyword values (the defaults for the rest); a bad value is a ConfigError naming it."""
    try:
        return QualityThresholds(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'quality'}: {e['msg']} (got {e['input']!r})"
                             if e["loc"] else f"quality: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid quality-gate thresholds: {problems}") from None


@dataclass(frozen=True)
class QualityMeasures:
    """The measures of one photo (see the module docstring for their definitions)."""

    width: int
    height: int
    content_share: float  # share of the area left after cutting black bars (1.0: none)
    short_side: int  # of the content
    sharpness: float  # 1000 x var(Laplacian) / var(grey), at MEASURE_SIDE: what the gate uses
    laplacian_var: float  # var(Laplacian) at MEASURE_SIDE, not divided (depends on exposure and contrast)
    mean_luma: float
    dark_share: float
    bright_share: float


@dataclass(frozen=True)
class QualityResult:
    """The gate's verdict on one photo: its measures, whether it passes, and why not (readable sentences)."""

    measures: QualityMeasures
    ok: bool
    reasons: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: {"ok", "reasons", "measures": {...}}."""
        return {"ok": self.ok, "reasons": list(self.reasons), "measures": asdict(self.measures)}


def _luma(image: np.ndarray) -> np.ndarray:
    """The (H, W) uint8 luma of an RGB (H, W, 3) or grey (H, W) uint8 image."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3)):
        raise ValueError(f"quality measures need an (H, W, 3) RGB or (H, W) grey uint8 image, got {arr.dtype} "
                         f"{arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"quality measures need a non-empty image, got {arr.shape[1]}x{arr.shape[0]}")
    if arr.ndim == 3 and arr.shape[2] == 3:
        return cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY)
    return arr.reshape(arr.shape[0], arr.shape[1])


def sharpness(grey: np.ndarray, side: int = MEASURE_SIDE) -> tuple[float, float]:
    """(sharpness, raw variance of the Laplacian) of `grey` resized to a long side of `side` px (low = blurred)."""
    h, w = grey.shape[:2]
    factor = side / max(h, w)
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(grey, size, interpolation=interp) if size != (w, h) else grey
    lap = float(cv2.Laplacian(resized, cv2.CV_64F).var())
    var = float(resized.astype(np.float64).var())
    return (1000.0 * lap / var if var >= MIN_VARIANCE else 0.0), lap


def content_box(grey: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of `grey` without the black bars along its edges (the whole image when there are none,
    or when cutting them would leave less than MIN_CONTENT_SHARE of the area)."""
    h, w = grey.shape
    rows = np.flatnonzero(grey.max(axis=1) > PAD_LEVEL)
    cols = np.flatnonzero(grey.max(axis=0) > PAD_LEVEL)
    if len(rows) == 0 or len(cols) == 0:
        return 0, 0, w, h
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    # the margin only on the sides that were cut, never past the middle
    y0, x0 = (y0 + PAD_MARGIN if y0 else 0), (x0 + PAD_MARGIN if x0 else 0)
    y1, x1 = (y1 - PAD_MARGIN if y1 < h else h), (x1 - PAD_MARGIN if x1 < w else w)
    if y1 <= y0 or x1 <= x0 or (y1 - y0) * (x1 - x0) < MIN_CONTENT_SHARE * h * w:
        return 0, 0, w, h
    return x0, y0, x1, y1


def measure_quality(image: np.ndarray) -> QualityMeasures:
    """The quality measures of a decoded photo (RGB or grey uint8, as dfudet decodes it: EXIF orientation applied)."""
    full = _luma(image)
    h, w = full.shape
    x0, y0, x1, y1 = content_box(full)
    y = full[y0:y1, x0:x1]
    n = float(y.size)
    sharp, lap = sharpness(y)
    return QualityMeasures(
        width=int(w), height=int(h), content_share=n / (h * w), short_side=int(min(x1 - x0, y1 - y0)),
        sharpness=sharp, laplacian_var=lap,
        mean_luma=float(y.mean()), dark_share=float(np.count_nonzero(y <= DARK_LEVEL) / n),
        bright_share=float(np.count_nonzero(y >= BRIGHT_LEVEL) / n),
    )


def judge(m: QualityMeasures, thresholds: QualityThresholds | None = None) -> QualityResult:
    """Apply the thresholds to measures already taken: the verdict with one reason per failed check."""
    t = thresholds or QualityThresholds()
    reasons: list[str] = []
    if m.sharpness < t.sharpness_min:
        reasons.append(f"blurred: sharpness {m.sharpness:.2f} is under {t.sharpness_min:g} (1000 x variance of the "
                       f"Laplacian / variance, at {MEASURE_SIDE} px)")
    if m.mean_luma < t.luma_min:
        reasons.append(f"too dark: mean brightness {m.mean_luma:.0f} of 255 is under {t.luma_min:g}")
    if m.dark_share > t.dark_share_max:
        reasons.append(f"too dark: {m.dark_share:.0%} of the pixels are near black (over {t.dark_share_max:.0%})")
    if m.mean_luma > t.luma_max:
        reasons.append(f"overexposed: mean brightness {m.mean_luma:.0f} of 255 is over {t.luma_max:g}")
    if m.bright_share > t.bright_share_max:
        reasons.append(f"overexposed: {m.bright_share:.0%} of the pixels are near white (over "
                       f"{t.bright_share_max:.0%})")
    if m.short_side < t.min_short_side:
        reasons.append(f"too small: the short side is {m.short_side} px (of {m.width}x{m.height}), under "
                       f"{t.min_short_side} px")
    return QualityResult(measures=m, ok=not reasons, reasons=tuple(reasons))


def assess_quality(image: np.ndarray, thresholds: QualityThresholds | None = None) -> QualityResult:
    """Measure a decoded photo and apply the gate (`thresholds`, default `QualityThresholds()`)."""
    return judge(measure_quality(image), thresholds)
