"""Detector models: one ModelSpec per family (spec.py), the registry (factory.py), backbones and anchor helpers."""

from __future__ import annotations

from dfudet.models.anchors import default_anchor_sizes, propose_anchor_sizes, propose_aspect_ratios
from dfudet.models.factory import available_models, build_detector, get_spec
from dfudet.models.spec import MODELS, ModelSpec

__all__ = [
    "MODELS",
    "ModelSpec",
    "available_models",
    "build_detector",
    "default_anchor_sizes",
    "get_spec",
    "propose_anchor_sizes",
    "propose_aspect_ratios",
]
