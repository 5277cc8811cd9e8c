"""The inference backend interface: PyTorch (`Predictor`) and ONNX Runtime (`OnnxPredictor`) answer the same calls
with the same typed `Detections`, and `load_backend()` is the one place that chooses between them (predict,
evaluate and serve all use it). Nothing here imports torch: the ONNX path must run without it.

Shared contract: every image goes through the eval transform of training (long side resized to img_size, padded
bottom/right to a square); boxes come back divided by the resize factor, clipped to the photo, and boxes lying
wholly in the padding are dropped. `predict_*` return every detection down to the model's `min_score` (the lowest
score it emits), so callers can sweep thresholds; `keep()` applies the operating threshold (chosen on val at
training time unless overridden).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from dfudet.confidence import Calibration, photo_fields
from dfudet.config import CompositeWeights, Config
from dfudet.data import instance_masks
from dfudet.data.instance_masks import Rle
from dfudet.errors import ConfigError, DataError
from dfudet.identity import ModelIdentity
from dfudet.inference.quality import assess_quality


@dataclass(frozen=True)
class ModelInfo:
    """What a backend knows about its model: from the checkpoint (PyTorch) or the export's metadata (ONNX)."""

    path: str
    identity: ModelIdentity  # whose model: name, backbone, training img_size, classes
    img_size: int  # the input side the backend feeds the model (`dfudet tune` may have chosen one above training's)
    epoch: int | None
    format: str  # checkpoint format, or the ONNX metadata format
    dfudet_version: str | None
    composite_weights: CompositeWeights  # the weights the model was selected with
    digest: str | None = None  # SHA-256 of the source checkpoint (model identity); None = hash `path` when needed
    config: Config | None = None  # the full typed run config (PyTorch checkpoints only)
    origin: str = "train"  # "train", "untrained" (--baseline), "external" (saved outside training), "lightning"
    outlines: bool = False  # the model outlines each detection (Detections.masks is set)

    def summary(self) -> dict[str, Any]:
        """JSON-ready description for reports (`img_size`: the input side; `train_img_size`: the identity's)."""
        ident = self.identity
        return {"path": self.path, "epoch": self.epoch, "origin": self.origin, "model_name": ident.model_name,
                "backbone": ident.backbone, "img_size": self.img_size, "train_img_size": ident.img_size,
                "num_classes": ident.num_classes, "format": self.format, "dfudet_version": self.dfudet_version,
                "outlines": self.outlines}


@dataclass(frozen=True)
class Detections:
    """The detections of one photo, in its own (display-orientation) pixels."""

    boxes: np.ndarray  # (N, 4) float32 xyxy
    scores: np.ndarray  # (N,) float32, descending
    width: int
    height: int
    threshold: float | None = None  # the threshold `keep()` applied, None when unfiltered
    # outline models: one COCO RLE (instance_masks) per box, in the photo's pixels; None for box-only models
    masks: tuple[Rle, ...] | None = None

    def above(self, threshold: float) -> Detections:
        """Only the detections with score >= threshold."""
        m = self.scores >= threshold
        masks = None if self.masks is None else tuple(r for r, k in zip(self.masks, m) if k)
        return replace(self, boxes=self.boxes[m], scores=self.scores[m], threshold=float(threshold), masks=masks)


def to_original(boxes: Any, scale: float, width: int, height: int) -> np.ndarray:
    """Map xyxy boxes from the resized+padded model input back to the photo (divide by scale, clip to it)."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) / np.float32(scale)
    b[:, 0::2] = np.clip(b[:, 0::2], 0, width)
    b[:, 1::2] = np.clip(b[:, 1::2], 0, height)
    return b


def nonempty(boxes: np.ndarray) -> np.ndarray:
    """Mask of boxes with positive width and height (after clipping, boxes in the padding are empty)."""
    return (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)


def detections_from_outputs(boxes: Any, scores: Any, mask_probs: Any, scale: float, width: int, height: int
                            ) -> Detections:
    """A photo's Detections from a model's outputs on its resized+padded input (both backends map them here).

    Args:
        boxes: (N, 4) xyxy in input pixels.
        scores: (N,) scores, descending.
        mask_probs: None for a box-only model, else (N, S, S) outline probabilities pasted into the padded input.
        scale: the resize factor of the input (input side / photo's long side).
        width: the photo's width in pixels.
        height: the photo's height in pixels.

    Returns:
        The detections in the photo's pixels: boxes divided by the scale and clipped to the photo, boxes lying wholly
        in the padding dropped, one outline RLE per kept box (instance_masks.from_probabilities).
    """
    b = to_original(boxes, scale, width, height)
    keep = nonempty(b)
    masks = None
    if mask_probs is not None:
        probs = np.asarray(mask_probs, dtype=np.float32)[keep]
        masks = tuple(instance_masks.from_probabilities(probs, scale, width, height))
    return Detections(b[keep], np.asarray(scores, dtype=np.float32).reshape(-1)[keep], width, height, masks=masks)


def check_batch_size(batch_size: int) -> int:
    """A batch size of at least 1, or a ConfigError."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    return batch_size


def check_threshold(value: float, what: str) -> float:
    """A score threshold in [0, 1], or a clear error naming where it came from."""
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ConfigError(f"{what} must be between 0 and 1, got {value}")
    return v


def check_image(image: np.ndarray, index: int) -> np.ndarray:
    """An HxWx3 uint8 RGB array, or a DataError naming the image's position."""
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8 or a.shape[0] < 1 or a.shape[1] < 1:
        raise DataError(f"image {index}: expected an HxWx3 uint8 RGB array, got shape {a.shape} dtype {a.dtype}")
    return a


class Backend(ABC):
    """A trained detector ready to run: its input size, operating threshold and model description."""

    name: str  # "torch" or "onnxruntime"
    img_size: int
    operating_threshold: float  # chosen on val at training time unless overridden
    threshold_source: str
    tta: bool
    info: ModelInfo
    calibration: Calibration | None = None  # score -> probability of a true ulcer (fitted on val by `dfudet tune`)
    review_threshold: float | None = None  # lower edge of the triage band (chosen on val by `dfudet tune`)

    @property
    @abstractmethod
    def min_score(self) -> float:
        """Lowest score the model emits (its box score threshold): the start of any threshold sweep."""

    @property
    @abstractmethod
    def max_detections(self) -> int:
        """Detections per image cap of the model."""

    def predict_arrays(self, images: Sequence[np.ndarray], batch_size: int = 8) -> list[Detections]:
        """Detections for HWC uint8 RGB arrays of any size (every detection down to min_score).

        Args:
            images: HxWx3 uint8 RGB photos (a DataError names the first that is not).
            batch_size: images per forward pass (the ONNX graph takes one at a time).

        Returns:
            One Detections per image, in its own pixels.
        """
        check_batch_size(batch_size)
        return self._predict([check_image(im, i) for i, im in enumerate(images)], batch_size)

    @abstractmethod
    def _predict(self, images: list[np.ndarray], batch_size: int) -> list[Detections]:
        """The backend's forward passes on checked images (see predict_arrays)."""

    def photo_fields(self, detections: Detections, kept: Detections, image: np.ndarray | None = None
                     ) -> dict[str, Any]:
        """`confidence` per kept box, the photo `quality` check (when the image is given) and the photo's triage
        `label` (see dfudet.confidence.photo_fields and dfudet.inference.quality)."""
        quality = assess_quality(image) if image is not None else None
        fields = photo_fields(detections.scores, kept.scores, self.calibration, self.operating_threshold,
                              self.review_threshold, quality.reasons if quality is not None else ())
        if quality is not None:
            fields["quality"] = quality.as_dict()
        return fields

    def keep(self, detections: Detections, threshold: float | None = None) -> Detections:
        """The detections at or above the threshold (default: the operating threshold)."""
        return detections.above(self.operating_threshold if threshold is None else float(threshold))
