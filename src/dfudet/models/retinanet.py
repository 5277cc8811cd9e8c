"""RetinaNet family: torchvision's RetinaNet (anchor-based one stage, focal loss) on a timm backbone, P3-P7."""

from __future__ import annotations

from typing import Any, cast

from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.retinanet import RetinaNetHead

from dfudet.config import ModelConfig
from dfudet.models.anchors import anchor_generator_for
from dfudet.models.backbones import backbone_norm_stats
from dfudet.models.fcos import group_norm, one_stage_backbone
from dfudet.models.passes import locations_per_level, split_levels
from dfudet.models.spec import ModelSpec, Targets, register

LEVELS = 5  # P3..P7 at strides 8..128


class ForegroundRetinaNet(RetinaNet):
    """RetinaNet whose sigmoid classifier has one output per foreground class (no background logit), keeping the
    dfudet label convention (0 = background, 1 = ulcer) outside: targets shift down for the loss, detections up."""

    def compute_loss(self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor],
                     anchors: list[Tensor]) -> dict[str, Tensor]:
        return super().compute_loss([{**t, "labels": t["labels"] - 1} for t in targets], head_outputs, anchors)

    def postprocess_detections(self, head_outputs: dict[str, list[Tensor]], anchors: list[list[Tensor]],
                               image_shapes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        detections = super().postprocess_detections(head_outputs, anchors, image_shapes)
        for det in detections:
            det["labels"] = det["labels"] + 1
        return detections


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
    mean, std = backbone_norm_stats(backbone)
    return ForegroundRetinaNet(
        backbone, num_classes=cfg.num_classes - 1, min_size=img_size, max_size=img_size, image_mean=mean,
        image_std=std, anchor_generator=anchors, head=head, score_thresh=cfg.box_score_thresh,
        nms_thresh=cfg.box_nms_thresh, detections_per_img=cfg.detections_per_img,
        topk_candidates=cfg.dense_head.topk_candidates or 1000,
    )


def retinanet_heads_pass(model: nn.Module, image_list: Any, features: dict[str, Tensor], targets: Targets
                         ) -> tuple[dict[str, Tensor], Targets]:
    """RetinaNet.forward's loss and detection branches on one set of head outputs."""
    retinanet = cast(ForegroundRetinaNet, model)  # the one model this spec builds
    feats = list(features.values())
    head_outputs = retinanet.head(feats)
    anchors = retinanet.anchor_generator(image_list, feats)
    losses = retinanet.compute_loss(targets, head_outputs, anchors)
    locations = locations_per_level(feats)
    per_location = head_outputs["cls_logits"].size(1) // sum(locations)  # anchors per location
    split_outputs, split_anchors = split_levels(head_outputs, anchors, [n * per_location for n in locations])
    return losses, retinanet.postprocess_detections(split_outputs, split_anchors, image_list.image_sizes)


register(ModelSpec(
    name="retinanet_timm", family="retinanet", build=_retinanet_timm, heads_pass=retinanet_heads_pass,
    min_score=lambda m: float(cast(ForegroundRetinaNet, m).score_thresh),
    max_detections=lambda m: int(cast(ForegroundRetinaNet, m).detections_per_img),
    feature_levels=LEVELS, sections=frozenset({"anchors", "dense_head"}), timm_backbone=True,
))
