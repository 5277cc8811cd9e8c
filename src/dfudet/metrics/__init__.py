"""Detection metrics shared by training and evaluation: matching, scores, COCO AP, curves, bootstrap CIs.

This package imports nothing from ``dfudet.engine`` or ``dfudet.data``. The definitions live in the module
docstrings of ``matching`` (per-image greedy matching) and ``scores`` (P/R/F1, mean IoU, composite, image-level
figures). ``coco``, ``curves`` (matplotlib) and ``bootstrap`` are imported lazily so the training loop pays only
for what it uses.
"""

from __future__ import annotations

import importlib
from typing import Any

from dfudet.metrics.matching import MatchResult, RankedMatch, match_image, match_ranked
from dfudet.metrics.scores import (
    DEFAULT_THRESHOLDS,
    DEFAULT_WEIGHTS,
    best_threshold,
    composite_score,
    detection_scores,
    sweep_thresholds,
)

_LAZY = {
    "coco_map": "dfudet.metrics.coco",
    "bootstrap_ci": "dfudet.metrics.bootstrap",
    "pr_curve": "dfudet.metrics.curves",
    "froc": "dfudet.metrics.curves",
    "threshold_series": "dfudet.metrics.curves",
    "plot_pr": "dfudet.metrics.curves",
    "plot_froc": "dfudet.metrics.curves",
    "plot_threshold_sweep": "dfudet.metrics.curves",
}

__all__ = [
    "DEFAULT_THRESHOLDS", "DEFAULT_WEIGHTS", "MatchResult", "RankedMatch", "best_threshold", "composite_score",
    "detection_scores", "match_image", "match_ranked", "sweep_thresholds", *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dfudet.metrics' has no attribute {name!r}")
