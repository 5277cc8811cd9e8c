"""One backend interface: PyTorch and ONNX Runtime answer with the same typed Detections, chosen by load_backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dfudet.commands.evaluate import run_evaluation
from dfudet.errors import ConfigError
from dfudet.inference.backend import Backend, Detections
from dfudet.inference.loader import load_backend
from dfudet.inference.predictor import Predictor


def test_detections_above_keeps_the_scores_at_or_over_the_threshold():
    d = Detections(np.array([[0, 0, 5, 5], [1, 1, 4, 4], [2, 2, 3, 3]], np.float32),
                   np.array([0.9, 0.5, 0.2], np.float32), width=10, height=8)
    kept = d.above(0.5)
    assert kept.scores.tolist() == pytest.approx([0.9, 0.5]) and kept.boxes.shape == (2, 4) and kept.threshold == 0.5
    assert (kept.width, kept.height) == (10, 8) and d.threshold is None  # the original is unchanged


def test_load_backend_needs_exactly_one_model(tiny_ckpt: Path):
    with pytest.raises(ConfigError, match="exactly one"):
        load_backend()
    with pytest.raises(ConfigError, match="exactly one"):
        load_backend(checkpoint=tiny_ckpt, onnx=tiny_ckpt)
    backend = load_backend(checkpoint=tiny_ckpt, operating_threshold=0.4)
    assert isinstance(backend, Predictor) and isinstance(backend, Backend) and backend.name == "torch"
    photo = (np.random.default_rng(0).random((70, 90, 3)) * 255).astype(np.uint8)
    det = backend.predict_arrays([photo])[0]
    assert isinstance(det, Detections) and (det.width, det.height) == (90, 70)
    assert backend.keep(det).threshold == 0.4


@pytest.mark.slow
def test_evaluate_scores_the_exported_onnx_model_like_its_checkpoint(tiny_ckpt: Path, demo_data, tmp_path: Path):
    """`dfudet evaluate --onnx` measures the deployed model itself, with the checkpoint's numbers."""
    from dfudet.export.onnx import export_onnx

    export_onnx(tiny_ckpt, tmp_path / "model.onnx")
    a = run_evaluation(tiny_ckpt, demo_data["cache"], tmp_path / "pt", split="test", bootstrap=0, progress=False)
    b = run_evaluation(None, demo_data["cache"], tmp_path / "ort", split="test", bootstrap=0, progress=False,
                       onnx=tmp_path / "model.onnx")
    assert b["operating_threshold"] == a["operating_threshold"]
    assert abs(a["coco"]["AP50"] - b["coco"]["AP50"]) < 0.02
    assert a["at_threshold"]["tp"] == b["at_threshold"]["tp"] and a["at_threshold"]["fp"] == b["at_threshold"]["fp"]
