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


# the Faster R-CNN sampler sizes below go back to their defaults: fcos_timm refuses non-default ones
FCOS_OVERRIDES = ("model.name=fcos_timm", "model.backbone=resnet10t", "model.fpn_channels=32", "model.head_convs=1",
                  "model.rpn_batch_size_per_image=256", "model.box_batch_size_per_image=512")

# an outline model small enough for tests: Mask R-CNN on a random-init resnet10t, narrow FPN and mask head
MASK_OVERRIDES = ("model.name=maskrcnn_efficientnet", "model.backbone=resnet10t", "model.fpn_channels=32",
                  "model.mask_head_channels=16", "model.mask_head_convs=1")


def train_demo_checkpoint(path: Path, img_size: int = IMG_SIZE, steps: int = 3, threshold: float = 0.3,
                          overrides: tuple[str, ...] = ()) -> Path:
    """A best_model.pth trained for a few SGD steps on demo images: a random-init head gives tied scores
    (every box 0.50), which makes box order arbitrary; a few steps give distinct, image-dependent scores.
    `overrides` (e.g. FCOS_OVERRIDES) change the model."""
    cfg = load_config(None, [f"model.name={MODEL}", "model.pretrained=false", f"data.img_size={img_size}",
                             "model.box_score_thresh=0.05", "model.detections_per_img=30",
                             "model.rpn_batch_size_per_image=64", "model.box_batch_size_per_image=64", *overrides])
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
