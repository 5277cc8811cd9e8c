"""Calibrated confidence and the triage label at run time: what a stored calibration means and how a photo is
labelled. No torch and no scipy here: the ONNX runtime applies calibrations that `dfudet tune` fitted
(dfudet.metrics.calibration fits them and measures their error).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dfudet.errors import CheckpointError, ConfigError

LABELS = ("ulcer", "review", "no ulcer")
_EPS = 1e-6


def logit(s: np.ndarray) -> np.ndarray:
    """log(s / (1 - s)) with scores clipped away from 0 and 1."""
    s = np.clip(s, _EPS, 1 - _EPS)
    return np.log(s / (1 - s))


@dataclass(frozen=True)
class Calibration:
    """A fitted score -> probability map and what it was fitted on (stored in checkpoints and ONNX sidecars)."""

    method: str  # "platt" or "isotonic"
    a: float = 1.0  # platt: p = sigmoid(a * logit(score) + b)
    b: float = 0.0
    knots_x: tuple[float, ...] = ()  # isotonic: piecewise-linear interpolation through the fitted steps
    knots_y: tuple[float, ...] = ()
    n_boxes: int = 0
    n_true: int = 0
    iou_threshold: float = 0.5
    fitted_on: str = "val"

    def apply(self, scores: Any) -> np.ndarray:
        """The calibrated probability of each score."""
        s = np.asarray(scores, dtype=np.float64)
        if self.method == "platt":
            return 1 / (1 + np.exp(-(self.a * logit(s) + self.b)))
        return np.interp(s, np.asarray(self.knots_x), np.asarray(self.knots_y))

    def as_dict(self) -> dict[str, Any]:
        """JSON/checkpoint-ready (plain floats and lists)."""
        d = asdict(self)
        d["knots_x"], d["knots_y"] = list(self.knots_x), list(self.knots_y)
        return d

    @classmethod
    def from_dict(cls, raw: Any, where: Any) -> Calibration:
        """Rebuild and check a stored calibration (untrusted input: a bad one is a CheckpointError naming `where`)."""
        try:
            c = cls(method=str(raw["method"]), a=float(raw.get("a", 1.0)), b=float(raw.get("b", 0.0)),
                    knots_x=tuple(float(v) for v in raw.get("knots_x", ())),
                    knots_y=tuple(float(v) for v in raw.get("knots_y", ())), n_boxes=int(raw.get("n_boxes", 0)),
                    n_true=int(raw.get("n_true", 0)), iou_threshold=float(raw.get("iou_threshold", 0.5)),
                    fitted_on=str(raw.get("fitted_on", "val")))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{where}: the stored calibration is malformed ({exc})") from None
        ok = c.method in ("platt", "isotonic") and all(map(math.isfinite, (c.a, c.b, *c.knots_x, *c.knots_y)))
        if c.method == "isotonic":
            x, y = np.asarray(c.knots_x), np.asarray(c.knots_y)
            ok = ok and len(x) == len(y) >= 1 and bool(np.all(np.diff(x) >= 0)) and bool(np.all(np.diff(y) >= 0)) \
                and bool(np.all((y >= 0) & (y <= 1)))
        if not ok:
            raise CheckpointError(f"{where}: the stored calibration is invalid (method {c.method!r}: needs finite "
                                  "parameters; isotonic knots increasing, in [0, 1])")
        return c


def check_review_target(target: float) -> float:
    """A target image-level sensitivity in (0, 1]."""
    v = float(target)
    if not 0.0 < v <= 1.0:
        raise ConfigError(f"the review target sensitivity must be in (0, 1], got {target}")
    return v


def triage_label(best_score: float, operating: float, review: float, quality_ok: bool = True) -> str:
    """`ulcer` (a box at or above the operating threshold), `review` (a box between the two thresholds, or the
    photo failed the quality check) or `no ulcer`."""
    if best_score >= operating:
        return "ulcer"
    if best_score >= review or not quality_ok:
        return "review"
    return "no ulcer"


def calibration_of(stored: Mapping[str, Any], where: Any) -> Calibration | None:
    """The stored calibration (checked), or None when the model has none."""
    raw = stored.get("calibration")
    return None if raw is None else Calibration.from_dict(raw, str(where))


def review_threshold_of(stored: Mapping[str, Any], where: Any) -> float | None:
    """The stored review threshold (a score in [0, 1]), or None."""
    raw = stored.get("review_threshold")
    if raw is None:
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise CheckpointError(f"{where}: the stored review threshold {raw!r} is not a score in [0, 1]")
    return value


def photo_fields(all_scores: Any, kept_scores: Any, calibration: Calibration | None, operating: float,
                 review: float | None, quality_reasons: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """The confidence and triage fields of one photo, as predict, serve and the API write them.

    `confidence`: the calibrated probability of each kept box (None without a calibration); `label`: ulcer / review /
    no ulcer from the photo's best box among ALL its detections (a box under the operating threshold can still send
    the photo to review), and a photo that failed the quality check (`quality_reasons`) is never labelled no ulcer;
    `label_reasons` says why; without a stored review threshold the band is empty."""
    scores = np.asarray(all_scores, dtype=np.float64).reshape(-1)
    best = float(scores.max()) if len(scores) else 0.0
    kept = np.asarray(kept_scores, dtype=np.float64).reshape(-1)
    confidence = None if calibration is None else [round(float(v), 4) for v in calibration.apply(kept)]
    edge = operating if review is None else review
    label = triage_label(best, operating, edge, not quality_reasons)
    if label == "ulcer":
        why = [f"a box scored {best:.2f}, at or above the operating threshold {operating:.2f}"]
    elif label == "review":
        why = ([f"a box scored {best:.2f}, between the review threshold {edge:.2f} and the operating threshold "
                f"{operating:.2f}"] if best >= edge else []) + [f"photo quality: {r}" for r in quality_reasons]
    else:
        why = [f"no box scored {edge:.2f} or more"]
    return {"confidence": confidence, "label": label, "label_reasons": why, "review_threshold": review}
