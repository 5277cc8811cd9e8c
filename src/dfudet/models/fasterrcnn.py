"""Faster R-CNN family: torchvision's two-stage detector on a timm backbone + FPN (the seed system's design) and
torchvision's own MobileNet/ResNet variants."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import torch
from torch import Tensor, nn
from torchvision.models import MobileNet_V3_Large_Weights, ResNet50_Weights
from torchvision.models.detection import (
    FasterRCNN,
    MaskRCNN,
    fasterrcnn_mobilenet_v3_large_320_fpn,
    fasterrcnn_mobilenet_v3_large_fpn,
    fasterrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign, poolers

from dfudet.config import ModelConfig
from dfudet.models.anchors import anchor_generator_for
from dfudet.models.backbones import backbone_norm_stats, build_timm_fpn_backbone, weights_unavailable
from dfudet.models.spec import ModelSpec, Targets, register

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
TWO_MLP_HEAD_SIZE = 1024  # representation size of torchvision's default box head (TwoMLPHead)
ROI_SIZE = 7  # the box head's RoIAlign output (torchvision's default)


def two_stage_heads_pass(model: nn.Module, image_list: Any, features: dict[str, Tensor], targets: Targets
                         ) -> tuple[dict[str, Tensor], Targets]:
    """RPN + RoI heads in train mode for the losses, then in eval mode for the detections (features reused)."""
    rcnn = cast(FasterRCNN, model)  # every model of this family is one
    proposals, rpn_losses = rcnn.rpn(image_list, features, targets)
    _, det_losses = rcnn.roi_heads(features, proposals, image_list.image_sizes, targets)
    rcnn.rpn.eval()
    rcnn.roi_heads.eval()
    proposals, _ = rcnn.rpn(image_list, features)
    detections, _ = rcnn.roi_heads(features, proposals, image_list.image_sizes)
    return {**rpn_losses, **det_losses}, detections


def _merge_levels_by_gather(levels: Any, unmerged_results: list[Any]) -> Any:
    """Put per-FPN-level RoIAlign outputs back in RoI order with one Gather (same values as torchvision's merge)."""
    index = torch.cat([torch.where(levels == level)[0] for level in range(len(unmerged_results))])
    return torch.cat(unmerged_results, 0)[torch.argsort(index)]


@contextmanager
def fast_roi_merge() -> Iterator[None]:
    """While tracing for ONNX, swap torchvision's RoI merge for a gather.

    torchvision scatters every (RoIs, C, 7, 7) element with ScatterElements: on this CPU that op took 54% of
    onnxruntime's time (388 of 720 ms for mobilenet_v3_large_fpn @ 320, 1000 RoIs), more than PyTorch's whole
    forward pass. The argsort + gather that replaces it copies whole RoI slices.
    """
    original = poolers._onnx_merge_levels
    poolers._onnx_merge_levels = _merge_levels_by_gather
    try:
        yield
    finally:
        poolers._onnx_merge_levels = original


def _detector_kwargs(cfg: ModelConfig, img_size: int, mean: list[float], std: list[float]) -> dict[str, Any]:
    # min_size=max_size=img_size: the data pipeline already resized/padded to img_size, so the internal
    # GeneralizedRCNNTransform only normalises (and pads to a multiple of 32 if img_size is not one).
    return dict(
        min_size=img_size,
        max_size=img_size,
        image_mean=mean,
        image_std=std,
        box_score_thresh=cfg.box_score_thresh,
        box_nms_thresh=cfg.box_nms_thresh,
        box_detections_per_img=cfg.detections_per_img,
        rpn_batch_size_per_image=cfg.rcnn.rpn_batch_size_per_image,
        box_batch_size_per_image=cfg.rcnn.box_batch_size_per_image,
    )


def _box_head(cfg: ModelConfig, fpn_channels: int) -> dict[str, Any]:
    """The box head keyword arguments of torchvision's FasterRCNN/MaskRCNN: its two-layer box head and predictor at
    `rcnn.box_head_size`, or, when that is unset, none (torchvision builds its own 1024-wide head, in the same order
    as before the setting existed, so seeded runs start from the same weights)."""
    if cfg.rcnn.box_head_size is None:
        return {}
    size = cfg.rcnn.box_head_size
    return dict(box_head=TwoMLPHead(fpn_channels * ROI_SIZE ** 2, size),
                box_predictor=FastRCNNPredictor(size, cfg.num_classes))


def _fasterrcnn_timm(cfg: ModelConfig, img_size: int, load_weights: bool = True) -> nn.Module:
    """Faster R-CNN on a timm backbone (cfg.backbone, EfficientNet-B0..B7 or any features_only CNN) + FPN."""
    anchors = anchor_generator_for(cfg, img_size, 5)  # validate before the (possibly slow) backbone build
    backbone = build_timm_fpn_backbone(cfg.backbone, cfg.pretrained, cfg.fpn_channels, cfg.trainable_backbone_layers,
                                       weights_file=cfg.weights, load_weights=load_weights)
    mean, std = backbone_norm_stats(backbone)
    box_head = _box_head(cfg, cfg.fpn_channels)
    return FasterRCNN(
        backbone,
        num_classes=None if box_head else cfg.num_classes,  # torchvision: given through the box predictor if custom
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(featmap_names=["0", "1", "2", "3"], output_size=ROI_SIZE, sampling_ratio=2),
        **box_head,
        **_detector_kwargs(cfg, img_size, mean, std),
    )


def _maskrcnn_timm(cfg: ModelConfig, img_size: int, load_weights: bool = True) -> nn.Module:
    """Mask R-CNN on a timm backbone + FPN: the Faster R-CNN above plus torchvision's mask branch, which outlines each
    detected box on a 28 x 28 grid (RoIAlign 14 x 14 on the four FPN levels, `mask_head.convs` convs, a 2x deconv).

    The mask head is `mask_head.convs` x `mask_head.channels` (default 4 x the FPN width; torchvision: 4 x 256).
    Trained jointly with the boxes: the mask loss is taken on the RoIs sampled as positives for the box head.
    """
    anchors = anchor_generator_for(cfg, img_size, 5)
    backbone = build_timm_fpn_backbone(cfg.backbone, cfg.pretrained, cfg.fpn_channels, cfg.trainable_backbone_layers,
                                       weights_file=cfg.weights, load_weights=load_weights)
    mean, std = backbone_norm_stats(backbone)
    channels = cfg.mask_head.channels or cfg.fpn_channels
    levels = ["0", "1", "2", "3"]
    mask_predictor = MaskRCNNPredictor(channels, channels, cfg.num_classes)
    # small initial logits (detectron2's init of this layer): torchvision's kaiming init starts the mask loss near 30
    # on a pretrained FPN, whose gradients then reach the shared backbone in the first steps
    nn.init.normal_(mask_predictor.mask_fcn_logits.weight, std=0.001)
    nn.init.zeros_(mask_predictor.mask_fcn_logits.bias)
    # built in this order (mask head, then the box predictor) so that seeded runs draw the same initial weights as
    # before model.rcnn.box_head_size existed
    mask_head = MaskRCNNHeads(cfg.fpn_channels, [channels] * (cfg.mask_head.convs or 4), 1)
    box_head = _box_head(cfg, cfg.fpn_channels) or dict(
        box_predictor=FastRCNNPredictor(TWO_MLP_HEAD_SIZE, cfg.num_classes))  # after torchvision's default box head
    return MaskRCNN(
        backbone,
        num_classes=None,  # torchvision: given through the two predictors when the mask predictor is custom
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(featmap_names=levels, output_size=ROI_SIZE, sampling_ratio=2),
        mask_roi_pool=MultiScaleRoIAlign(featmap_names=levels, output_size=14, sampling_ratio=2),
        mask_head=mask_head,
        **box_head,
        mask_predictor=mask_predictor,
        **_detector_kwargs(cfg, img_size, mean, std),
    )


def _torchvision_detector(builder: Callable[..., FasterRCNN], backbone_weights: Any, levels: int
                          ) -> Callable[[ModelConfig, int, bool], nn.Module]:
    """A builder calling a torchvision Faster R-CNN constructor with 2-class heads and ImageNet backbone weights.

    weights_backbone (ImageNet) rather than the COCO detector weights: our heads have cfg.num_classes outputs, so COCO
    heads could not be loaded anyway, and the backbone is what transfers.
    """

    def build(cfg: ModelConfig, img_size: int, load_weights: bool = True) -> nn.Module:
        anchors = anchor_generator_for(cfg, img_size, levels)
        pretrained = cfg.pretrained and load_weights
        try:
            model = builder(
                weights=None,
                weights_backbone=backbone_weights if pretrained else None,
                num_classes=cfg.num_classes,
                # torchvision semantics (mobilenet: 0..6, resnet: 0..5 stages trainable); only meaningful with weights
                trainable_backbone_layers=cfg.trainable_backbone_layers if pretrained else None,
                **_detector_kwargs(cfg, img_size, IMAGENET_MEAN, IMAGENET_STD),
            )
        except OSError as exc:  # URLError and friends: no cached file and no network
            if pretrained:
                raise weights_unavailable(f"{cfg.name} (torchvision {backbone_weights})", exc) from exc
            raise
        old_head = model.rpn.head
        model.rpn.anchor_generator = anchors
        n_anchors = anchors.num_anchors_per_location()[0]
        if n_anchors != old_head.cls_logits.out_channels:
            model.rpn.head = RPNHead(old_head.cls_logits.in_channels, n_anchors, conv_depth=len(old_head.conv))
        box_head = _box_head(cfg, model.backbone.out_channels)  # torchvision's FPN here is 256 wide
        if box_head:
            model.roi_heads.box_head, model.roi_heads.box_predictor = box_head["box_head"], box_head["box_predictor"]
        return model

    return build


def _spec(name: str, build: Callable[[ModelConfig, int, bool], nn.Module], levels: int, timm: bool = False,
          masks: bool = False) -> ModelSpec:
    return register(ModelSpec(
        name=name, family="mask_rcnn" if masks else "faster_rcnn", build=build, heads_pass=two_stage_heads_pass,
        masks=masks, sections=frozenset({"anchors", "rcnn", "mask_head"} if masks else {"anchors", "rcnn"}),
        # torchvision's own backbones take its ImageNet weights (no model.weights) and fix their FPN at 256 channels
        ignores=() if timm else ("weights", "fpn_channels"),
        min_score=lambda m: float(cast(FasterRCNN, m).roi_heads.score_thresh),
        max_detections=lambda m: int(cast(FasterRCNN, m).roi_heads.detections_per_img),
        feature_levels=levels, timm_backbone=timm, export_context=fast_roi_merge,
    ))


# strides 4..32 + the FPN's pool level; the RoI pool reads the four conv levels
_spec("fasterrcnn_efficientnet", _fasterrcnn_timm, 5, timm=True)
# the same + an outline (mask) of each detection, trained on the data's wound masks
_spec("maskrcnn_efficientnet", _maskrcnn_timm, 5, timm=True, masks=True)
# torchvision MobileNetV3-Large FPN Faster R-CNN (fast on CPU)
_spec("fasterrcnn_mobilenet_v3_large_fpn",
      _torchvision_detector(fasterrcnn_mobilenet_v3_large_fpn, MobileNet_V3_Large_Weights.IMAGENET1K_V1, 3), 3)
# the low-resolution MobileNet variant (150 RPN proposals at test time, RPN score threshold 0.05)
_spec("fasterrcnn_mobilenet_v3_large_320_fpn",
      _torchvision_detector(fasterrcnn_mobilenet_v3_large_320_fpn, MobileNet_V3_Large_Weights.IMAGENET1K_V1, 3), 3)
# torchvision ResNet-50 FPN v2 Faster R-CNN (the strongest and slowest reference)
_spec("fasterrcnn_resnet50_fpn_v2",
      _torchvision_detector(fasterrcnn_resnet50_fpn_v2, ResNet50_Weights.IMAGENET1K_V1, 5), 5)
