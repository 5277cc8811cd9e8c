"""Predictor: a trained checkpoint applied to images of any size, boxes returned in original pixel coordinates.

Each image goes through the same deterministic eval transform as validation during training (resize the long side
to the checkpoint's img_size, pad bottom/right to a square), so the model sees what it was selected on. Boxes come
back in the padded square, are divided by the resize factor and clipped to the image; boxes lying wholly in the
padding are dropped. `predict_*` return every detection the model emits (down to its `box_score_thresh` floor) so
callers can sweep thresholds; `keep()` applies the operating threshold.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from dfudet.checkpoint import load_for_inference
from dfudet.config import Config
from dfudet.data.transforms import build_eval_transform
from dfudet.errors import CheckpointError, ConfigError, DataError
from dfudet.models.factory import get_spec
from dfudet.models.passes import to_float_images
from dfudet.models.spec import ModelSpec

log = logging.getLogger("dfudet")

Result = dict[str, Any]


def resolve_device(device: str) -> torch.device:
    """'auto' -> CUDA when available; a CUDA device that is not available falls back to CPU with a warning."""
    name = (device or "cpu").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        log.warning("device %s asked for but CUDA is not available; running on CPU", device)
        return torch.device("cpu")
    return dev


def boxes_to_original(boxes: Any, scale: float, width: int, height: int) -> np.ndarray:
    """Map xyxy boxes from the resized+padded model input back to the original image; drop boxes left empty."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) / np.float32(scale)
    b[:, 0::2] = np.clip(b[:, 0::2], 0, width)
    b[:, 1::2] = np.clip(b[:, 1::2], 0, height)
    return b


def _nonempty(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)


def _check_threshold(value: float, what: str) -> float:
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ConfigError(f"{what} must be between 0 and 1, got {value}")
    return v


class Predictor:
    """A detector in eval mode plus its input size, device and operating threshold."""

    def __init__(self, model: nn.Module, spec: ModelSpec, img_size: int, score_threshold: float,
                 device: str = "cpu", tta: bool = False, info: dict[str, Any] | None = None,
                 threshold_source: str = "given") -> None:
        self.spec = spec
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.img_size = int(img_size)
        self.score_threshold = _check_threshold(score_threshold, "score threshold")
        self.threshold_source = threshold_source
        self.tta = bool(tta)
        self.info = dict(info or {})
        self.transform = build_eval_transform(self.img_size)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], device: str = "cpu", score_threshold: float | None = None,
                        tta: bool = False) -> "Predictor":
        """Load a checkpoint safely, rebuild its model (no pretrained download) and load the weights strictly."""
        path = Path(path)
        ckpt = load_for_inference(path)
        try:
            cfg = Config.model_validate(ckpt["config"])
        except (ValidationError, TypeError) as exc:
            raise CheckpointError(f"{path}: the config stored in the checkpoint is invalid ({str(exc)[:300]})") from exc
        img_size = int(ckpt.get("img_size") or cfg.data.img_size)
        try:
            spec = get_spec(cfg.model.name)
            model = spec.build(cfg.model, img_size, False)
        except ConfigError as exc:
            raise CheckpointError(f"{path}: cannot rebuild the checkpoint's model: {exc}") from exc
        try:
            model.load_state_dict(ckpt["model_state_dict"], strict=True)
        except (RuntimeError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"{path}: weights do not fit model {cfg.model.name} (backbone {cfg.model.backbone}): {str(exc)[:400]}"
            ) from exc
        if score_threshold is None:
            threshold = float(ckpt["operating_threshold"])
            if ckpt.get("format") == "lightning":
                source = "checkpoint operating_threshold (swept on val at the checkpoint's epoch)"
            elif ckpt.get("epoch") == -1:  # untrained_model.pth of `dfudet train --baseline`
                source = "checkpoint operating_threshold (swept on val for the untrained model, before any training)"
            else:
                source = f"checkpoint operating_threshold (swept on val at epoch {ckpt.get('epoch')} of training)"
        else:
            threshold = _check_threshold(score_threshold, "--score-threshold")
            source = "--score-threshold"
        info = {k: v for k, v in ckpt.items() if k not in ("model_state_dict", "optimizer_state_dict")}
        info["path"] = str(path)
        return cls(model, spec, img_size, threshold, device=device, tta=tta, info=info, threshold_source=source)

    @property
    def floor(self) -> float:
        """Lowest score the model emits (its box_score_thresh): the start of any threshold sweep."""
        return self.spec.score_floor(self.model)

    @property
    def max_detections(self) -> int:
        """Detections per image cap of the model."""
        return self.spec.max_detections(self.model)

    def _prepare(self, image: np.ndarray) -> tuple[torch.Tensor, float]:
        out, _, scale = self.transform(image, np.zeros((0, 4), np.float32))
        return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1))), float(scale)

    @torch.inference_mode()
    def _forward(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """One batched forward pass; (boxes, scores) per image in that image's own pixel coordinates."""
        prepared = [self._prepare(im) for im in images]
        tensors = to_float_images([t.to(self.device) for t, _ in prepared])
        outputs = self.model(tensors)
        results = []
        for im, (_, scale), out in zip(images, prepared, outputs):
            h, w = im.shape[:2]
            boxes = boxes_to_original(out["boxes"].float().cpu().numpy(), scale, w, h)
            scores = out["scores"].float().cpu().numpy().astype(np.float32)
            keep = _nonempty(boxes)
            results.append((boxes[keep], scores[keep]))
        return results

    def predict_arrays(self, images: Sequence[np.ndarray], batch_size: int = 8) -> list[Result]:
        """Detections for HWC uint8 RGB arrays of any size: boxes (N,4) in original pixels, scores (N,), size."""
        from dfudet.inference.tta import flip_image, fuse_views, unflip_boxes

        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        results: list[Result] = []
        for start in range(0, len(images), batch_size):
            chunk = [self._check_array(im, start + j) for j, im in enumerate(images[start:start + batch_size])]
            if self.tta:
                outs = self._forward(chunk + [flip_image(im) for im in chunk])
                n = len(chunk)
                fused = []
                for j, im in enumerate(chunk):
                    h, w = im.shape[:2]
                    fb, fs = outs[n + j]
                    boxes, scores = fuse_views([outs[j], (unflip_boxes(fb, w), fs)], w, h, self.floor,
                                               max_detections=self.max_detections)
                    boxes = boxes_to_original(boxes, 1.0, w, h)
                    keep = _nonempty(boxes)
                    fused.append((boxes[keep], scores[keep]))
                outs = fused
            else:
                outs = self._forward(chunk)
            for im, (boxes, scores) in zip(chunk, outs):
                results.append({"boxes": boxes.astype(np.float32), "scores": scores.astype(np.float32),
                                "width": int(im.shape[1]), "height": int(im.shape[0])})
        return results

    @staticmethod
    def _check_array(image: np.ndarray, index: int) -> np.ndarray:
        a = np.asarray(image)
        if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8 or a.shape[0] < 1 or a.shape[1] < 1:
            raise DataError(f"image {index}: expected an HxWx3 uint8 RGB array, got shape {a.shape} dtype {a.dtype}")
        return a

    def predict_paths(self, paths: Iterable[str | os.PathLike[str]], batch_size: int = 8) -> list[Result]:
        """Detections for image files (EXIF orientation applied, so boxes are in the displayed orientation)."""
        from dfudet.data.checks import load_image

        paths = [Path(p) for p in paths]
        results: list[Result] = []
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            for p, r in zip(chunk, self.predict_arrays([load_image(p) for p in chunk], batch_size)):
                results.append({"file": str(p), **r})
        return results

    def keep(self, result: Result, threshold: float | None = None) -> Result:
        """The result restricted to detections with score >= threshold (default: the operating threshold)."""
        t = self.score_threshold if threshold is None else float(threshold)
        m = np.asarray(result["scores"]) >= t
        return {**result, "boxes": np.asarray(result["boxes"])[m], "scores": np.asarray(result["scores"])[m],
                "threshold": t}
