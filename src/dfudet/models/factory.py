"""build_detector(cfg): the one registry of detector names -> builders (all torchvision Faster R-CNNs)."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn
from torchvision.models import MobileNet_V3_Large_Weights, ResNet50_Weights
from torchvision.models.detection import (
    FasterRCNN,
    fasterrcnn_mobilenet_v3_large_320_fpn,
    fasterrcnn_mobilenet_v3_large_fpn,
    fasterrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

from dfudet.config import ModelConfig
from dfudet.errors import ConfigError
from dfudet.models.anchors import default_anchor_sizes, make_anchor_generator
from dfudet.models.backbones import backbone_norm_stats, build_timm_fpn_backbone, weights_unavailable

Builder = Callable[[ModelConfig, int], nn.Module]

MODELS: dict[str, Builder] = {}
FEATURE_LEVELS: dict[str, int] = {}  # feature maps the RPN sees (FPN levels incl. "pool"), i.e. anchor levels

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
TORCHVISION_FPN_CHANNELS = 256  # fixed inside torchvision's mobilenet/resnet FPN extractors


def register_model(name: str, feature_levels: int = 5) -> Callable[[Builder], Builder]:
    """Add a builder to the registry under `name` (with the number of feature maps its anchors must cover)."""

    def deco(fn: Builder) -> Builder:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = fn
        FEATURE_LEVELS[name] = feature_levels
        return fn

    return deco


def available_models() -> list[str]:
    """Registered detector names, sorted (for CLI help and error messages)."""
    return sorted(MODELS)


def num_feature_levels(name: str) -> int:
    """How many anchor levels model `name` needs (pass it to propose_anchor_sizes as n_levels)."""
    _check_name(name)
    return FEATURE_LEVELS[name]


def _check_name(name: str) -> None:
    if name not in MODELS:
        raise ConfigError(f"unknown model.name {name!r}; available models: {', '.join(available_models())}")


def build_detector(cfg: ModelConfig, img_size: int) -> nn.Module:
    """Build the configured detector: a torchvision FasterRCNN taking 0..1 float images of img_size x img_size."""
    _check_name(cfg.name)
    return MODELS[cfg.name](cfg, img_size)


def _anchor_generator(cfg: ModelConfig, img_size: int) -> AnchorGenerator:
    """cfg.anchor_sizes (or the img_size-scaled defaults) x cfg.aspect_ratios, checked against the model's levels."""
    n_levels = FEATURE_LEVELS[cfg.name]
    sizes = cfg.anchor_sizes if cfg.anchor_sizes is not None else default_anchor_sizes(img_size, n_levels)
    return make_anchor_generator(sizes, cfg.aspect_ratios, n_levels, cfg.name)


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
        rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
        box_batch_size_per_image=cfg.box_batch_size_per_image,
    )


@register_model("fasterrcnn_efficientnet", feature_levels=5)
def _fasterrcnn_efficientnet(cfg: ModelConfig, img_size: int) -> nn.Module:
    """Faster R-CNN on a timm backbone (cfg.backbone, EfficientNet-B0..B7 or any features_only CNN) + FPN."""
    anchors = _anchor_generator(cfg, img_size)  # validate before the (possibly slow) backbone build
    backbone = build_timm_fpn_backbone(cfg.backbone, cfg.pretrained, cfg.fpn_channels, cfg.trainable_backbone_layers)
    mean, std = backbone_norm_stats(backbone)
    return FasterRCNN(
        backbone,
        num_classes=cfg.num_classes,
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(featmap_names=["0", "1", "2", "3"], output_size=7, sampling_ratio=2),
        **_detector_kwargs(cfg, img_size, mean, std),
    )


def _torchvision_detector(builder: Callable[..., FasterRCNN], backbone_weights: Any, cfg: ModelConfig, img_size: int) -> nn.Module:
    """Call a torchvision Faster R-CNN builder with 2-class heads and ImageNet backbone weights, then set our anchors.

    weights_backbone (ImageNet) rather than the COCO detector weights: our heads have cfg.num_classes outputs, so COCO
    heads could not be loaded anyway, and the backbone is what transfers.
    """
    if cfg.fpn_channels != TORCHVISION_FPN_CHANNELS:
        raise ConfigError(
            f"model.fpn_channels={cfg.fpn_channels} is not supported by {cfg.name} (torchvision fixes its FPN at "
            f"{TORCHVISION_FPN_CHANNELS} channels); remove the setting or use fasterrcnn_efficientnet"
        )
    anchors = _anchor_generator(cfg, img_size)
    try:
        model = builder(
            weights=None,
            weights_backbone=backbone_weights if cfg.pretrained else None,
            num_classes=cfg.num_classes,
            # torchvision semantics (mobilenet: 0..6, resnet: 0..5 stages trainable); only meaningful with weights
            trainable_backbone_layers=cfg.trainable_backbone_layers if cfg.pretrained else None,
            **_detector_kwargs(cfg, img_size, IMAGENET_MEAN, IMAGENET_STD),
        )
    except OSError as exc:  # URLError and friends: no cached file and no network
        if cfg.pretrained:
            raise weights_unavailable(f"{cfg.name} (torchvision {backbone_weights})", exc) from exc
        raise
    old_head = model.rpn.head
    model.rpn.anchor_generator = anchors
    n_anchors = anchors.num_anchors_per_location()[0]
    if n_anchors != old_head.cls_logits.out_channels:
        model.rpn.head = RPNHead(old_head.cls_logits.in_channels, n_anchors, conv_depth=len(old_head.conv))
    return model


@register_model("fasterrcnn_mobilenet_v3_large_fpn", feature_levels=3)
def _fasterrcnn_mobilenet_v3_large_fpn(cfg: ModelConfig, img_size: int) -> nn.Module:
    """torchvision MobileNetV3-Large FPN Faster R-CNN (fast on CPU)."""
    return _torchvision_detector(fasterrcnn_mobilenet_v3_large_fpn, MobileNet_V3_Large_Weights.IMAGENET1K_V1, cfg, img_size)


@register_model("fasterrcnn_mobilenet_v3_large_320_fpn", feature_levels=3)
def _fasterrcnn_mobilenet_v3_large_320_fpn(cfg: ModelConfig, img_size: int) -> nn.Module:
    """The low-resolution MobileNet variant (150 RPN proposals at test time, RPN score threshold 0.05)."""
    return _torchvision_detector(
        fasterrcnn_mobilenet_v3_large_320_fpn, MobileNet_V3_Large_Weights.IMAGENET1K_V1, cfg, img_size
    )


@register_model("fasterrcnn_resnet50_fpn_v2", feature_levels=5)
def _fasterrcnn_resnet50_fpn_v2(cfg: ModelConfig, img_size: int) -> nn.Module:
    """torchvision ResNet-50 FPN v2 Faster R-CNN (the strongest and slowest reference)."""
    return _torchvision_detector(fasterrcnn_resnet50_fpn_v2, ResNet50_Weights.IMAGENET1K_V1, cfg, img_size)
