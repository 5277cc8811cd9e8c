"""load_backend(): the one place that chooses between the PyTorch backend (`Predictor`, for a checkpoint) and the
ONNX Runtime backend (`OnnxPredictor`, for an export). predict, evaluate, track, serve and the Python API all use it.

Nothing is imported at module level beyond the interface: the ONNX path must run without torch, so each backend's
module is imported only when it is asked for.
"""

from __future__ import annotations

import os

from dfudet.errors import ConfigError
from dfudet.inference.backend import Backend

_ONE_SOURCE = "give exactly one of --checkpoint (PyTorch) or --onnx (onnxruntime)"


def load_backend(checkpoint: str | os.PathLike[str] | None = None, onnx: str | os.PathLike[str] | None = None,
                 device: str = "cpu", operating_threshold: float | None = None, tta: bool = False) -> Backend:
    """The PyTorch backend for a checkpoint or the ONNX Runtime backend for an exported model (exactly one)."""
    if (checkpoint is None) == (onnx is None):
        raise ConfigError(_ONE_SOURCE)
    if onnx is not None:
        if tta:
            raise ConfigError("--tta is not available with --onnx (the flip fusion uses torch); use --checkpoint")
        # lazy: keeps torch out of the ONNX path's imports (and onnxruntime out of the PyTorch path's)
        from dfudet.inference.onnx_predictor import OnnxPredictor

        return OnnxPredictor(onnx, operating_threshold=operating_threshold)
    if checkpoint is None:  # cannot happen after the check above; narrows the type for mypy
        raise ConfigError(_ONE_SOURCE)
    # lazy: predictor imports torch, which the ONNX path must not load
    from dfudet.inference.predictor import Predictor

    return Predictor.from_checkpoint(checkpoint, device=device, operating_threshold=operating_threshold, tta=tta)
