"""RetinaNet family: torchvision's RetinaNet (anchor-based one stage, focal loss) on a timm backbone, P3-P7."""

from __future__ import annotations

from torch import nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.retinanet import RetinaNetHead

from dfudet.config import ModelConfig
from dfudet.models.anchors import anchor_generator_for
from dfudet.models.fcos import (
    ForegroundLabels,
    group_norm,
    one_stage_backbone,
    one_stage_settings,
    one_stage_spec,
)
from dfudet.models.spec import register

LEVELS = 5  # P3..P7 at strides 8..128


class ForegroundRetinaNet(ForegroundLabels, RetinaNet):
    """RetinaNet with one classifier output per foreground class (no background logit; see ForegroundLabels)."""


def _retinanet_timm(cfg: ModelConfig, img_size: int, load_weights: bool = True) -> nn.Module:
    """RetinaNet on a timm backbone: stride-8..32 maps + FPN + P6/P7, torchvision's head (GroupNorm, as in its v2
    recipe) with model.dense_head.convs conv layers per branch (default 4), focal loss; anchors as for Faster R-CNN
    (model.anchors over the five levels)."""
    anchors = anchor_generator_for(cfg, img_size, LEVELS)
    backbone = one_stage_backbone(cfg, load_weights)
    num_anchors = anchors.num_anchors_per_location()[0]
    head = RetinaNetHead(cfg.fpn_channels, num_anchors, cfg.num_classes - 1, norm_layer=group_norm(cfg.fpn_channels))
    n_convs = cfg.dense_head.convs or 4
    head.classification_head.conv = head.classification_head.conv[:n_convs]
    head.regression_head.conv = head.regression_head.conv[:n_convs]
    return ForegroundRetinaNet(backbone, anchor_generator=anchors, head=head,
                               topk_candidates=cfg.dense_head.topk_candidates or 1000,
                               **one_stage_settings(cfg, img_size, backbone))


register(one_stage_spec("retinanet_timm", "retinanet", _retinanet_timm, levels_in_loss=False, feature_levels=LEVELS,
                        sections=frozenset({"anchors", "dense_head"})))
