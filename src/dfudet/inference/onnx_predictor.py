"""OnnxPredictor: the Predictor interface on an exported ONNX model, needing only numpy, OpenCV and onnxruntime.

It reproduces the eval transform of training (albumentations LongestMaxSize(bilinear) + PadIfNeeded top-left) with
cv2/numpy, so a clinic laptop needs no torch or albumentations; tests/export/test_onnx.py checks that its outputs
match the PyTorch Predictor's (boxes within 1 px, scores within 1e-3). Nothing here imports torch.

Outline models (sidecar `"outlines": true`) have a `masks` output, mapped to the photo exactly as the PyTorch
Predictor maps its masks (instance_masks.from_probabilities), so `Detections.masks` holds one RLE per box
(tests/export/test_onnx_masks.py: outline IoU >= 0.99 against PyTorch).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import ValidationError

from dfudet.confidence import calibration_of, review_threshold_of
from dfudet.config import CompositeWeights
from dfudet.errors import CheckpointError
from dfudet.identity import ModelIdentity
from dfudet.inference.backend import (
    Backend,
    Detections,
    ModelInfo,
    check_threshold,
    detections_from_outputs,
)


def metadata_path(onnx_path: str | os.PathLike[str]) -> Path:
    """The JSON sidecar of an ONNX model written by `dfudet export`: MODEL.onnx -> MODEL.json."""
    return Path(onnx_path).with_suffix(".json")


# v3: the model's identity as one `identity` object (dfudet.identity), `img_size` the graph's input side
ONNX_META_FORMAT = "dfudet-onnx-v3"


def read_metadata(meta: dict[str, Any], onnx_path: Path, meta_file: Path) -> ModelInfo:
    """The typed model description of an export's JSON sidecar (format ONNX_META_FORMAT only)."""
    if meta.get("format") != ONNX_META_FORMAT:
        raise CheckpointError(f"{meta_file}: sidecar format {meta.get('format')!r}; this dfudet reads "
                              f"{ONNX_META_FORMAT!r} only; export the model again with `dfudet export`")
    if not isinstance(meta.get("identity"), dict):
        raise CheckpointError(f"{meta_file}: the sidecar has no model identity; export the model again")
    return ModelInfo(
        path=str(onnx_path), identity=ModelIdentity.from_dict(meta["identity"], meta_file),
        img_size=int(meta["img_size"]), epoch=meta.get("epoch"), format=str(meta["format"]),
        dfudet_version=meta.get("dfudet_version"),
        composite_weights=CompositeWeights.model_validate(meta.get("composite_weights") or {}),
        digest=meta.get("onnx_sha256"), origin=str(meta.get("origin", "train")),
        outlines=_flag(meta["outlines"], "outlines"))


def _flag(value: Any, key: str) -> bool:
    """A JSON true/false, or a TypeError naming the key."""
    if not isinstance(value, bool):
        raise TypeError(f"{key} must be true or false, got {value!r}")
    return value


def resize_pad(image: np.ndarray, img_size: int) -> tuple[np.ndarray, float]:
    """Long side to img_size (bilinear) and zero-pad bottom/right to a square: (CHW float32 0..1, scale)."""
    h, w = image.shape[:2]
    scale = img_size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))  # albumentations' rounding, for parity
    resized = image if (nh, nw) == (h, w) else cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    canvas = np.zeros((img_size, img_size, 3), np.uint8)
    canvas[:nh, :nw] = resized[:img_size, :img_size]
    return np.ascontiguousarray(canvas.transpose(2, 0, 1)).astype(np.float32) / np.float32(255.0), float(scale)


class OnnxPredictor(Backend):
    """An exported detector in an onnxruntime session plus its input size and operating threshold."""

    name = "onnxruntime"
    tta = False  # the flip fusion (inference.tta) uses torch: test-time augmentation is a PyTorch-backend option

    def __init__(self, model_path: str | os.PathLike[str], operating_threshold: float | None = None,
                 threads: int | None = None) -> None:
        """Load MODEL.onnx and its MODEL.json sidecar written by `dfudet export`."""
        import onnxruntime as ort  # lazy: optional `deploy` extra, needed only by this backend

        path = Path(model_path)
        if not path.is_file():
            raise CheckpointError(f"{path}: ONNX model file does not exist")
        meta_file = metadata_path(path)
        try:
            meta: dict[str, Any] = json.loads(meta_file.read_text(encoding="utf-8"))
            self.info = read_metadata(meta, path, meta_file)
            self.img_size = self.info.img_size
            default_threshold = float(meta["operating_threshold"])
            self._min_score = float(meta["min_score"])
            self._max_detections = int(meta.get("max_detections", 100))
            self.calibration = calibration_of(meta, str(meta_file))
            self.review_threshold = review_threshold_of(meta, str(meta_file))
        except FileNotFoundError as exc:
            raise CheckpointError(f"{meta_file}: metadata file missing; re-run `dfudet export` (it writes "
                                  f"{path.name} and {meta_file.name} side by side)") from exc
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            raise CheckpointError(f"{meta_file}: not a dfudet ONNX metadata file ({str(exc)[:300]})") from exc
        if operating_threshold is None:
            self.operating_threshold = check_threshold(default_threshold, f"{meta_file}: operating_threshold")
            self.threshold_source = "model metadata operating_threshold"
        else:
            self.operating_threshold = check_threshold(operating_threshold, "--operating-threshold")
            self.threshold_source = "--operating-threshold"
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise CheckpointError(f"{path}: onnxruntime cannot load the model ({str(exc)[:300]})") from exc
        self._input = self.session.get_inputs()[0].name
        self._outputs = [o.name for o in self.session.get_outputs()]
        if not {"boxes", "scores"} <= set(self._outputs):
            raise CheckpointError(f"{path}: graph outputs {self._outputs} lack 'boxes'/'scores' (not a dfudet export)")
        if self.info.outlines and "masks" not in self._outputs:
            raise CheckpointError(f"{meta_file} says the model outlines each detection, but the graph's outputs "
                                  f"{self._outputs} have no 'masks'; re-run `dfudet export`")

    @property
    def min_score(self) -> float:
        """Lowest score the model emits (its box score threshold)."""
        return self._min_score

    @property
    def max_detections(self) -> int:
        """Detections per image cap of the model."""
        return self._max_detections

    def _forward(self, image: np.ndarray) -> Detections:
        """One image through the graph: its detections (and outlines) in its own pixels."""
        x, scale = resize_pad(image, self.img_size)
        out = dict(zip(self._outputs, self.session.run(None, {self._input: x[None]})))
        h, w = image.shape[:2]
        # outline models: (N, 1, S, S) probabilities pasted into the padded input, as in the Predictor
        probs = np.asarray(out["masks"], dtype=np.float32)[:, 0] if self.info.outlines else None
        return detections_from_outputs(out["boxes"], out["scores"], probs, scale, w, h)

    def _predict(self, images: list[np.ndarray], batch_size: int) -> list[Detections]:
        """One image per graph call (the exported graph takes one image; batch_size does not apply)."""
        return [self._forward(image) for image in images]
