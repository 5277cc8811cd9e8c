"""FCOS family: torchvision's anchor-free one-stage detector on a timm backbone (P3-P7), with a light head."""

from __future__ import annotations

import math
from functools import partial
from typing import Any, cast

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSClassificationHead, FCOSHead, FCOSRegressionHead
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from dfudet.config import ModelConfig
from dfudet.errors import ConfigError
from dfudet.models.backbones import (
    ONE_STAGE_OUT_INDICES,
    backbone_norm_stats,
    build_timm_fpn_backbone,
    timm_feature_info,
)
from dfudet.models.passes import dense_heads_pass
from dfudet.models.spec import ModelSpec, register

FCOS_STRIDES = (8, 16, 32, 64, 128)  # P3..P7: stride-8..32 backbone maps + P6/P7 (LastLevelP6P7)


class ForegroundLabels:
    """Mixin (first base) for torchvision's sigmoid one-stage detectors (FCOS, RetinaNet): one classifier output per
    foreground class, no background logit.

    torchvision's FCOS/RetinaNet convention is a logit for every label including the unused 0; postprocessing then
    also emits "background" boxes that take detection slots. Here the head predicts labels 1..num_classes-1 only:
    targets are shifted down by one for the loss and detections shifted back up, so the outputs keep the dfudet
    label convention (0 = background, 1 = ulcer) used by the metrics, predict and ONNX.
    """

    def compute_loss(self, targets: list[dict[str, Tensor]], *args: Any) -> dict[str, Tensor]:
        shifted = [{**t, "labels": t["labels"] - 1} for t in targets]
        return cast(Any, super()).compute_loss(shifted, *args)  # the detector's own loss (FCOS or RetinaNet)

    def postprocess_detections(self, head_outputs: dict[str, list[Tensor]], anchors: list[list[Tensor]],
                               image_shapes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        detections = cast(Any, super()).postprocess_detections(head_outputs, anchors, image_shapes)
        for det in detections:
            det["labels"] = det["labels"] + 1
        return detections


class ForegroundFCOS(ForegroundLabels, FCOS):
    """torchvision FCOS with one classifier output per foreground class (see ForegroundLabels)."""


def instance_weights(matched_idxs: list[Tensor], balance: float) -> Tensor:
    """Per-location loss weights [N, HWA]: 0 for background, n ** -balance for a location that is one of the n
    positive locations of its box, rescaled so that the positives' weights average 1 (the loss keeps its scale)."""
    weights = []
    for idx in matched_idxs:
        w = torch.zeros(idx.shape, dtype=torch.float32, device=idx.device)
        fg = idx >= 0
        if fg.any():
            counts = torch.bincount(idx[fg])
            w[fg] = counts[idx[fg]].to(torch.float32).pow(-balance)
        weights.append(w)
    stacked = torch.stack(weights)
    fg_all = stacked > 0
    if fg_all.any():
        stacked[fg_all] *= fg_all.sum() / stacked[fg_all].sum()
    return stacked


class BalancedFCOSHead(FCOSHead):
    """torchvision's FCOS head whose loss can weigh every ulcer alike instead of every positive location alike.

    torchvision (like the FCOS paper) sums the losses over positive locations: a box gets one per stride-8 location
    inside it and near its centre, so an 8-16 px ulcer has 1-3 and a 48 px one 9, and small ulcers weigh little in
    what the head learns about box size and score. With `balance` > 0 each positive location's focal, GIoU and
    centre-ness losses are weighted by n ** -balance (n: its box's positive locations; weights average 1);
    background locations keep weight 1. balance 0 is torchvision's loss exactly (its own code runs).
    """

    balance: float = 0.0

    def compute_loss(self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor],
                     anchors: list[Tensor], matched_idxs: list[Tensor]) -> dict[str, Tensor]:
        if self.balance == 0:
            return super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        cls_logits = head_outputs["cls_logits"]  # [N, HWA, C]
        gt_classes, gt_boxes = [], []
        for t, idx in zip(targets, matched_idxs):
            if len(t["labels"]) == 0:
                classes, boxes = t["labels"].new_zeros(idx.shape), t["boxes"].new_zeros((len(idx), 4))
            else:
                classes, boxes = t["labels"][idx.clip(min=0)], t["boxes"][idx.clip(min=0)]
            classes[idx < 0] = -1  # indexing and new_zeros made copies: the targets are not touched
            gt_classes.append(classes)
            gt_boxes.append(boxes)
        all_classes, all_boxes, all_anchors = torch.stack(gt_classes), torch.stack(gt_boxes), torch.stack(anchors)
        fg = all_classes >= 0
        num_fg = max(1, int(fg.sum().item()))
        w = instance_weights(matched_idxs, self.balance)

        cls_targets = torch.zeros_like(cls_logits)
        cls_targets[fg, all_classes[fg]] = 1.0
        cls_weight = torch.where(fg, w, torch.ones_like(w)).unsqueeze(-1)
        loss_cls = (sigmoid_focal_loss(cls_logits, cls_targets, reduction="none") * cls_weight).sum()

        pred_boxes = self.box_coder.decode(head_outputs["bbox_regression"], all_anchors)
        loss_reg = (generalized_box_iou_loss(pred_boxes[fg], all_boxes[fg], reduction="none") * w[fg]).sum()

        reg_targets = self.box_coder.encode(all_anchors, all_boxes)
        lr, tb = reg_targets[:, :, [0, 2]], reg_targets[:, :, [1, 3]]
        ctr_targets = torch.sqrt((lr.min(dim=-1)[0] / lr.max(dim=-1)[0]) * (tb.min(dim=-1)[0] / tb.max(dim=-1)[0]))
        pred_ctr = head_outputs["bbox_ctrness"].squeeze(dim=2)
        loss_ctr = (nn.functional.binary_cross_entropy_with_logits(pred_ctr[fg], ctr_targets[fg], reduction="none")
                    * w[fg]).sum()
        return {"classification": loss_cls / num_fg, "bbox_regression": loss_reg / num_fg,
                "bbox_ctrness": loss_ctr / num_fg}


def group_norm(channels: int) -> Any:
    """GroupNorm with gcd(32, channels // 2) groups: torchvision's 32 for 256 channels, and always >= 2 channels per
    group (GroupNorm of one channel on the 1x1 P7 map of a small image has a single value and fails in training)."""
    return partial(nn.GroupNorm, math.gcd(32, channels // 2))


def _fcos_head(channels: int, num_foreground: int, num_convs: int, balance: float = 0.0) -> BalancedFCOSHead:
    """FCOS head with `num_convs` conv+GroupNorm+ReLU layers per branch; `balance`: see BalancedFCOSHead."""
    norm = group_norm(channels)
    head = BalancedFCOSHead(channels, 1, num_foreground, num_convs=0)  # no GroupNorm(32) layers; branches below
    head.balance = balance
    head.classification_head = FCOSClassificationHead(channels, 1, num_foreground, num_convs, norm_layer=norm)
    head.regression_head = FCOSRegressionHead(channels, 1, num_convs, norm_layer=norm)
    return head


def one_stage_backbone(cfg: ModelConfig, load_weights: bool) -> Any:
    """timm backbone at strides 8/16/32 + FPN + P6/P7 (the P3-P7 pyramid of FCOS and RetinaNet)."""
    if cfg.fpn_channels % 2:
        raise ConfigError(f"model.fpn_channels={cfg.fpn_channels} must be even for {cfg.name} (its head's GroupNorm "
                          "uses gcd(32, fpn_channels / 2) groups)")
    backbone = build_timm_fpn_backbone(cfg.backbone, cfg.pretrained, cfg.fpn_channels, cfg.trainable_backbone_layers,
                                       out_indices=ONE_STAGE_OUT_INDICES, p6p7=True, weights_file=cfg.weights,
                                       load_weights=load_weights)
    strides = list(timm_feature_info(backbone.body).reduction())
    if strides != list(FCOS_STRIDES[:3]):
        raise ConfigError(
            f"model.backbone {cfg.backbone!r} gives feature maps at strides {strides} for stages "
            f"{list(ONE_STAGE_OUT_INDICES)}; {cfg.name} needs strides {list(FCOS_STRIDES[:3])} (P3-P7 at strides "
            "8..128); use a CNN such as resnet10t, resnet18, regnetx_004 or efficientnet_b0"
        )
    return backbone


def one_stage_settings(cfg: ModelConfig, img_size: int, backbone: Any) -> dict[str, Any]:
    """The keyword arguments torchvision's FCOS and RetinaNet take alike: foreground classes, the fixed square
    input, the backbone's normalisation, and post-processing (score floor, NMS, detections per image)."""
    mean, std = backbone_norm_stats(backbone)
    return {"num_classes": cfg.num_classes - 1, "min_size": img_size, "max_size": img_size, "image_mean": mean,
            "image_std": std, "score_thresh": cfg.box_score_thresh, "nms_thresh": cfg.box_nms_thresh,
            "detections_per_img": cfg.detections_per_img}


def _fcos_timm(cfg: ModelConfig, img_size: int, load_weights: bool = True) -> nn.Module:
    """FCOS (anchor-free, one stage) on a timm backbone: stride-8..32 maps + FPN + P6/P7, a light head.

    The CPU alternative to Faster R-CNN when training from scratch: every location of P3 (stride 8) is a
    candidate, so 8-16 px ulcers get positives, and the head is a few shared convs instead of RPN + RoI heads.
    """
    backbone = one_stage_backbone(cfg, load_weights)
    anchors = AnchorGenerator(tuple((s,) for s in FCOS_STRIDES), ((1.0,),) * len(FCOS_STRIDES))
    return ForegroundFCOS(
        backbone,
        anchor_generator=anchors,
        head=_fcos_head(cfg.fpn_channels, cfg.num_classes - 1, cfg.dense_head.convs or 4,
                        cfg.fcos.instance_balance),
        topk_candidates=cfg.dense_head.topk_candidates or 1000,
        **one_stage_settings(cfg, img_size, backbone),
    )


def one_stage_spec(name: str, family: str, build: Any, levels_in_loss: bool, feature_levels: int,
                   **extra: Any) -> ModelSpec:
    """The ModelSpec of a torchvision one-stage detector on a timm backbone (FCOS, RetinaNet): the heads pass of
    both (`dense_heads_pass`) and their post-processing limits (`score_thresh`, `detections_per_img`)."""
    return ModelSpec(name=name, family=family, build=build,
                     heads_pass=partial(dense_heads_pass, levels_in_loss=levels_in_loss),
                     min_score=lambda m: float(cast(Any, m).score_thresh),
                     max_detections=lambda m: int(cast(Any, m).detections_per_img),
                     feature_levels=feature_levels, timm_backbone=True, **extra)


# anchor-free (no model.anchors): its level sizes are the strides 8..128
register(one_stage_spec("fcos_timm", "fcos", _fcos_timm, levels_in_loss=True, feature_levels=len(FCOS_STRIDES),
                        sections=frozenset({"dense_head", "fcos"})))
