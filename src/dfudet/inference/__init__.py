"""The runtime: the backend interface, the PyTorch and ONNX Runtime backends, TTA, areas, drawing, the photo quality
check and the shipped models (what serve, the Python API and an ONNX-only install need; the batch commands that
drive it live in dfudet.commands).

Names are imported lazily: `dfudet.inference.onnx_predictor` must load on a machine without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"Predictor": "dfudet.inference.predictor", "resolve_device": "dfudet.inference.predictor",
         "Backend": "dfudet.inference.backend", "Detections": "dfudet.inference.backend",
         "load_backend": "dfudet.inference.loader", "OnnxPredictor": "dfudet.inference.onnx_predictor"}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dfudet.inference' has no attribute {name!r}")
