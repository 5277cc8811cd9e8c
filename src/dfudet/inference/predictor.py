"""Predictor: the PyTorch backend (dfudet.inference.backend) for a trained checkpoint.

The model is rebuilt from the checkpoint's own config through its ModelSpec (no pretrained weights are looked for)
and its weights are loaded strictly; see backend.py for the contract shared with the ONNX Runtime backend.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torch import nn

from dfudet.checkpoint import LoadedCheckpoint, load_for_inference
from dfudet.data.transforms import build_eval_transform
from dfudet.errors import CheckpointError, ConfigError
from dfudet.inference.backend import (
    Backend,
    Detections,
    ModelInfo,
    check_threshold,
    detections_from_outputs,
)
from dfudet.inference.tta import flip_image, fuse_views, unflip_boxes
from dfudet.models.factory import build_detector, get_spec
from dfudet.models.passes import set_input_size, to_float_images
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

    def __init__(self, model: nn.Module, spec: ModelSpec, img_size: int, operating_threshold: float,
                 info: ModelInfo, device: str = "cpu", tta: bool = False, threshold_source: str = "given") -> None:
        self.spec = spec
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.img_size = int(img_size)  # the input side (the training img_size unless tuned or overridden)
        set_input_size(self.model, self.img_size)
        self.operating_threshold = check_threshold(operating_threshold, "operating threshold")
        self.threshold_source = threshold_source
        self.tta = bool(tta)
        if self.tta and spec.masks:
            raise ConfigError(f"test-time augmentation fuses boxes only, not outlines; {spec.name} outlines each "
                              "ulcer, so run it without --tta")
        self.info = info
        self.transform = build_eval_transform(self.img_size)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], device: str = "cpu",
                        operating_threshold: float | None = None, tta: bool = False,
                        img_size: int | None = None) -> Predictor:
        """Load a checkpoint safely and build its predictor (see `from_loaded`)."""
        return cls.from_loaded(load_for_inference(path), device=device, operating_threshold=operating_threshold,
                               tta=tta, img_size=img_size)

    @classmethod
    def from_loaded(cls, ckpt: LoadedCheckpoint, device: str = "cpu", operating_threshold: float | None = None,
                    tta: bool = False, img_size: int | None = None) -> Predictor:
        """Rebuild a loaded checkpoint's model (no pretrained download) and load its weights strictly, so a caller
        that already holds the LoadedCheckpoint (e.g. `dfudet tune`) does not read the file again.

        Args:
            ckpt: what `load_for_inference` returned.
            device: cpu, cuda, cuda:N or auto.
            operating_threshold: overrides the checkpoint's (chosen on val).
            tta: horizontal-flip test-time augmentation (box models only).
            img_size: the input side; default the checkpoint's tuned `data.infer_img_size` (`dfudet tune`), else its
                training img_size.

        Returns:
            A ready Predictor whose `info` describes the checkpoint.
        """
        path, cfg, identity = ckpt.path, ckpt.config, ckpt.identity
        try:
            spec = get_spec(cfg.model.name)
            model = build_detector(cfg.model, identity.img_size, load_weights=False)
        except ConfigError as exc:
            raise CheckpointError(f"{path}: cannot rebuild the checkpoint's model: {exc}") from exc
        try:
            model.load_state_dict(ckpt.model_state_dict, strict=True)
        except (RuntimeError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"{path}: weights do not fit model {identity.model_name} (backbone {identity.backbone}): "
                f"{str(exc)[:400]}") from exc
        if operating_threshold is None:
            threshold = ckpt.operating_threshold
            if ckpt.origin == "lightning":
                source = "checkpoint operating_threshold (swept on val at the checkpoint's epoch)"
            elif ckpt.origin == "untrained":  # untrained_model.pth of `dfudet train --baseline`
                source = "checkpoint operating_threshold (swept on val for the untrained model, before any training)"
            elif ckpt.origin == "external":
                source = ("checkpoint operating_threshold (given when the weights were saved outside `dfudet train`; "
                          "not tuned on val)")
            else:
                source = f"checkpoint operating_threshold (swept on val at epoch {ckpt.epoch} of training)"
        else:
            threshold = check_threshold(operating_threshold, "--operating-threshold")
            source = "--operating-threshold"
        tuned = cfg.data.infer_img_size
        size = int(img_size or tuned or identity.img_size)
        if operating_threshold is None:
            chosen_at = tuned or identity.img_size
            if tuned is not None:
                source = f"checkpoint operating_threshold (chosen on val at input size {tuned} by `dfudet tune`)"
            if size != chosen_at:
                source += f"; it was chosen at input size {chosen_at}, this run uses {size}"
        info = ModelInfo(path=str(path), identity=identity, img_size=size, epoch=ckpt.epoch, format=ckpt.format,
                         dfudet_version=ckpt.dfudet_version, composite_weights=cfg.train.composite_weights,
                         config=cfg, origin=ckpt.origin, outlines=spec.masks)
        predictor = cls(model, spec, size, threshold, info, device=device, tta=tta, threshold_source=source)
        predictor.calibration, predictor.review_threshold = ckpt.calibration, ckpt.review_threshold
        return predictor

    @property
    def min_score(self) -> float:
        """Lowest score the model emits (its box score threshold): the start of any threshold sweep."""
        return self.spec.min_score(self.model)

    @property
    def max_detections(self) -> int:
        """Detections per image cap of the model."""
        return self.spec.max_detections(self.model)

    def _prepare(self, image: np.ndarray) -> tuple[torch.Tensor, float]:
        out, _, scale = self.transform(image, np.zeros((0, 4), np.float32))
        return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1))), float(scale)

    @torch.inference_mode()
    def _forward(self, images: list[np.ndarray]) -> list[Detections]:
        """One batched forward pass; the detections of each image in its own pixel coordinates."""
        prepared = [self._prepare(im) for im in images]
        tensors = to_float_images([t.to(self.device) for t, _ in prepared])
        outputs = self.model(tensors)
        results = []
        for im, (_, scale), out in zip(images, prepared, outputs):
            h, w = im.shape[:2]
            # outline models: (N, 1, S, S) probabilities pasted into the padded input by torchvision
            probs = out["masks"][:, 0].float().cpu().numpy() if self.spec.masks else None
            results.append(detections_from_outputs(out["boxes"].float().cpu().numpy(),
                                                   out["scores"].float().cpu().numpy(), probs, scale, w, h))
        return results

    def _predict(self, images: list[np.ndarray], batch_size: int) -> list[Detections]:
        """Batched forward passes (with TTA: each batch and its mirror image, fused)."""
        results: list[Detections] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            if self.tta:
                outs = self._forward(chunk + [flip_image(im) for im in chunk])
                n = len(chunk)
                for j, im in enumerate(chunk):
                    h, w = im.shape[:2]
                    flipped = outs[n + j]
                    boxes, scores = fuse_views([(outs[j].boxes, outs[j].scores),
                                                (unflip_boxes(flipped.boxes, w), flipped.scores)], w, h,
                                               self.min_score, max_detections=self.max_detections)
                    results.append(detections_from_outputs(boxes, scores, None, 1.0, w, h))  # already photo pixels
            else:
                results += self._forward(chunk)
        return results
