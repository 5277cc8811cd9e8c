"""Predictor: the PyTorch backend (dfudet.inference.backend) for a trained checkpoint.

The model is rebuilt from the checkpoint's own config through its ModelSpec (no pretrained weights are looked for)
and its weights are loaded strictly; see backend.py for the contract shared with the ONNX Runtime backend.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from dfudet.checkpoint import load_for_inference
from dfudet.config import Config
from dfudet.data.transforms import build_eval_transform
from dfudet.errors import CheckpointError, ConfigError
from dfudet.inference.backend import Backend, Detections, check_image, check_threshold, nonempty, to_original
from dfudet.models.factory import get_spec
from dfudet.models.passes import to_float_images
from dfudet.models.spec import ModelSpec

log = logging.getLogger("dfudet")



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


class Predictor(Backend):
    """A detector in eval mode plus its input size, device and operating threshold."""

    name = "torch"

    def __init__(self, model: nn.Module, spec: ModelSpec, img_size: int, score_threshold: float,
                 device: str = "cpu", tta: bool = False, info: dict[str, Any] | None = None,
                 threshold_source: str = "given") -> None:
        self.spec = spec
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.img_size = int(img_size)
        self.score_threshold = check_threshold(score_threshold, "score threshold")
        self.threshold_source = threshold_source
        self.tta = bool(tta)
        self.info = dict(info or {})
        self.transform = build_eval_transform(self.img_size)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], device: str = "cpu", score_threshold: float | None = None,
                        tta: bool = False) -> Predictor:
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
            threshold = check_threshold(score_threshold, "--score-threshold")
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
            boxes = to_original(out["boxes"].float().cpu().numpy(), scale, w, h)
            scores = out["scores"].float().cpu().numpy().astype(np.float32)
            keep = nonempty(boxes)
            results.append((boxes[keep], scores[keep]))
        return results

    def predict_arrays(self, images: Sequence[np.ndarray], batch_size: int = 8) -> list[Detections]:
        """Detections for HWC uint8 RGB arrays of any size (every detection down to the model's floor)."""
        from dfudet.inference.tta import flip_image, fuse_views, unflip_boxes

        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        results: list[Detections] = []
        for start in range(0, len(images), batch_size):
            chunk = [check_image(im, start + j) for j, im in enumerate(images[start:start + batch_size])]
            if self.tta:
                outs = self._forward(chunk + [flip_image(im) for im in chunk])
                n = len(chunk)
                fused = []
                for j, im in enumerate(chunk):
                    h, w = im.shape[:2]
                    fb, fs = outs[n + j]
                    boxes, scores = fuse_views([outs[j], (unflip_boxes(fb, w), fs)], w, h, self.floor,
                                               max_detections=self.max_detections)
                    boxes = to_original(boxes, 1.0, w, h)
                    keep = nonempty(boxes)
                    fused.append((boxes[keep], scores[keep]))
                outs = fused
            else:
                outs = self._forward(chunk)
            for im, (boxes, scores) in zip(chunk, outs):
                results.append(Detections(boxes.astype(np.float32), scores.astype(np.float32), int(im.shape[1]),
                                          int(im.shape[0])))
        return results
