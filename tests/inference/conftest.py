"""Fixtures for the inference tests: a random-init tiny checkpoint (the tiny generated dataset, `demo_data`, is in
tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from dfudet.checkpoint import save_model_checkpoint
from dfudet.config import load_config
from dfudet.models.factory import build_detector

MODEL = "fasterrcnn_mobilenet_v3_large_320_fpn"


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


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random-init checkpoint at img_size 96, operating threshold 0.5."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "best_model.pth")


@pytest.fixture(scope="session")
def checkpoint_factory() -> Callable[..., Path]:
    """make_checkpoint, for tests that need another img_size or threshold (conftest modules are not importable)."""
    return make_checkpoint
