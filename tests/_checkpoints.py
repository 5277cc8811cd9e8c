"""Test checkpoints shared by the export and serve tests (tests/ is on sys.path through tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dfudet.checkpoint import save_model_checkpoint
from dfudet.config import load_config
from dfudet.data.demo import render_sample
from dfudet.models.factory import build_detector, get_spec

MODEL = "fasterrcnn_mobilenet_v3_large_320_fpn"
IMG_SIZE = 128


# model.rcnn={}: the Faster R-CNN sampler sizes set below go back to their defaults (fcos_timm does not read them, so
# it refuses other values)
FCOS_OVERRIDES = ("model.name=fcos_timm", "model.backbone=resnet10t", "model.fpn_channels=32",
                  "model.dense_head.convs=1", "model.rcnn={}")

# an outline model small enough for tests: Mask R-CNN on a random-init resnet10t, narrow FPN and mask head
MASK_OVERRIDES = ("model.name=maskrcnn_efficientnet", "model.backbone=resnet10t", "model.fpn_channels=32",
                  "model.mask_head.channels=16", "model.mask_head.convs=1")


def train_demo_checkpoint(path: Path, img_size: int = IMG_SIZE, steps: int = 3, threshold: float = 0.3,
                          overrides: tuple[str, ...] = ()) -> Path:
    """A best_model.pth trained for a few SGD steps on demo images: a random-init head gives tied scores
    (every box 0.50), which makes box order arbitrary; a few steps give distinct, image-dependent scores.
    `overrides` (e.g. FCOS_OVERRIDES) change the model."""
    cfg = load_config(None, [f"model.name={MODEL}", "model.pretrained=false", f"data.img_size={img_size}",
                             "model.box_score_thresh=0.05", "model.detections_per_img=30",
                             "model.rcnn.rpn_batch_size_per_image=64", "model.rcnn.box_batch_size_per_image=64",
                             *overrides])
    torch.manual_seed(0)
    model = build_detector(cfg.model, img_size)
    samples = [render_sample(0, i, img_size, healthy=False) for i in range(2)]
    images = [torch.from_numpy(s.image).permute(2, 0, 1).float() / 255 for s in samples]
    targets = [{"boxes": torch.from_numpy(s.boxes), "labels": torch.ones(len(s.boxes), dtype=torch.int64),
                "masks": torch.from_numpy(np.stack(s.masks).astype(np.uint8))} for s in samples]
    if not get_spec(cfg.model.name).masks:
        targets = [{k: v for k, v in t.items() if k != "masks"} for t in targets]
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    model.train()
    for _ in range(steps):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_model_checkpoint(path, model.state_dict(), cfg, operating_threshold=threshold, epoch=1)
    return path


def make_checkpoint(path: Path, img_size: int = 96, operating_threshold: float = 0.5, seed: int = 0,
                    *overrides: str) -> Path:
    """A best_model.pth of a freshly built (untrained) MobileNet Faster R-CNN that emits boxes at any score."""
    cfg = load_config(None, [f"model.name={MODEL}", "model.pretrained=false", f"data.img_size={img_size}",
                             "model.box_score_thresh=0.0", "model.detections_per_img=20", *overrides])
    torch.manual_seed(seed)
    model = build_detector(cfg.model, img_size)
    _spread_scores(model, img_size)
    save_model_checkpoint(path, model.state_dict(), cfg, operating_threshold=operating_threshold, epoch=3)
    return path


def _spread_scores(model: torch.nn.Module, img_size: int) -> None:
    """Make an untrained detector emit varied boxes and scores (roughly 0.3-0.7) instead of one constant score.

    At torchvision's init the backbone features vanish (BatchNorm running stats 0/1 do not fit random weights),
    so every box gets the same score. Calibrating BatchNorm on random images and shrinking the heads' output
    layers gives image-dependent, varied detections: enough for thresholds, sweeps and galleries to mean something.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration passes
    model.backbone.train()
    with torch.no_grad():
        for _ in range(3):
            model.backbone(torch.rand(4, 3, img_size, img_size))
    for bn in bns:
        bn.momentum = 0.1
    model.eval()
    torch.nn.init.constant_(model.rpn.head.cls_logits.bias, 4.0)  # proposals pass the RPN score threshold
    torch.nn.init.normal_(model.rpn.head.bbox_pred.weight, std=1e-3)
    torch.nn.init.normal_(model.roi_heads.box_predictor.bbox_pred.weight, std=1e-4)
    torch.nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight, std=3e-4)
    torch.nn.init.zeros_(model.roi_heads.box_predictor.cls_score.bias)
