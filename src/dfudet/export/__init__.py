"""Model export for deployment without PyTorch: `dfudet.export.onnx.export_onnx` (ONNX + JSON sidecar)."""

from __future__ import annotations
