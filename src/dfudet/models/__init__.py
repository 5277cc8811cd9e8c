"""Detector models: the registry/factory, the timm+FPN backbone and anchor helpers."""

from __future__ import annotations

from dfudet.models.anchors import default_anchor_sizes, propose_anchor_sizes, propose_aspect_ratios
from dfudet.models.factory import MODELS, available_models, build_detector, num_feature_levels, register_model

__all__ = [
    "MODELS",
    "available_models",
    "build_detector",
    "default_anchor_sizes",
    "num_feature_levels",
    "propose_anchor_sizes",
    "propose_aspect_ratios",
    "register_model",
]
