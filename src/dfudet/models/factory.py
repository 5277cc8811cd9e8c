"""build_detector(cfg): the one registry of detector names -> builders (torchvision Faster R-CNNs and FCOS)."""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable

from torch import Tensor, nn
from torchvision.models import MobileNet_V3_Large_Weights, ResNet50_Weights
from torchvision.models.detection import (
    FCOS,
    FasterRCNN,
    fasterrcnn_mobilenet_v3_large_320_fpn,
    fasterrcnn_mobilenet_v3_large_fpn,
    fasterrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSClassificationHead, FCOSHead, FCOSRegressionHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

from dfudet.config import ModelConfig
from dfudet.errors import ConfigError
from dfudet.models.anchors import default_anchor_sizes, make_anchor_generator
from dfudet.models.backbones import (
    ONE_STAGE_OUT_INDICES,
    backbone_norm_stats,
    build_timm_fpn_backbone,
    weights_unavailable,
)

# (model config, image size, load_weights): load_weights=False builds the pretrained structure (frozen stages) without
# loading ImageNet weights, for rebuilding a trained model from its checkpoint.
Builder = Callable[[ModelConfig, int, bool], nn.Module]

MODELS: dict[str, Builder] = {}
FEATURE_LEVELS: dict[str, int] = {}  # feature maps the RPN sees (FPN levels incl. "pool"), i.e. anchor levels
ANCHOR_FREE: set[str] = set()  # one-stage anchor-free models: no anchor_sizes / auto_anchors / aspect_ratios
TIMM_BACKBONE: set[str] = set()  # models whose backbone is cfg.backbone (a timm name); the others fix their own

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
TORCHVISION_FPN_CHANNELS = 256  # fixed inside torchvision's mobilenet/resnet FPN extractors


def register_model(name: str, feature_levels: int = 5, anchor_free: bool = False,
                   timm_backbone: bool = False) -> Callable[[Builder], Builder]:
    """Add a builder to the registry under `name` (with the number of feature maps its anchors must cover)."""

    def deco(fn: Builder) -> Builder:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = fn
        FEATURE_LEVELS[name] = feature_levels
        if anchor_free:
            ANCHOR_FREE.add(name)
        if timm_backbone:
            TIMM_BACKBONE.add(name)
        return fn

    return deco


def available_models() -> list[str]:
    """Registered detector names, sorted (for CLI help and error messages)."""
    return sorted(MODELS)


def num_feature_levels(name: str) -> int:
    """How many anchor levels model `name` needs (pass it to propose_anchor_sizes as n_levels)."""
    _check_name(name)
    return FEATURE_LEVELS[name]


def is_anchor_free(name: str) -> bool:
    """True for one-stage anchor-free models (FCOS): anchor sizes and auto_anchors do not apply."""
    _check_name(name)
    return name in ANCHOR_FREE


def uses_timm_backbone(name: str) -> bool:
    """True when model `name` builds its backbone from cfg.backbone (a timm model name)."""
    _check_name(name)
    return name in TIMM_BACKBONE


def backbone_label(name: str, backbone: str) -> str:
    """The backbone a checkpoint records: the timm name for timm-backbone models, else the model's own name."""
    return backbone if name in TIMM_BACKBONE else name


def _check_name(name: str) -> None:
    if name not in MODELS:
        raise ConfigError(f"unknown model.name {name!r}; available models: {', '.join(available_models())}")


def build_detector(cfg: ModelConfig, img_size: int, load_weights: bool = True) -> nn.Module:
    """Build the configured detector: a torchvision detector taking 0..1 float images of img_size x img_size.

    `load_weights=False`: same modules (frozen stages included) but no pretrained weights are looked for; the caller
    loads a checkpoint's state dict next.
    """
    _check_name(cfg.name)
    return MODELS[cfg.name](cfg, img_size, load_weights)


def weights_source(model: nn.Module) -> str | None:
    """Where a built detector's pretrained backbone weights came from (None: random init or not a timm backbone)."""
    source = getattr(getattr(model, "backbone", None), "weights_source", None)
    return source.describe() if source is not None else None


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


def _no_one_stage_settings(cfg: ModelConfig) -> None:
    for key in ("head_convs", "topk_candidates"):
        value = getattr(cfg, key)
        if value is not None:
            raise ConfigError(f"model.{key}={value} applies to one-stage heads (fcos_timm), not {cfg.name}; "
                              "remove the setting")


@register_model("fasterrcnn_efficientnet", feature_levels=5, timm_backbone=True)
def _fasterrcnn_efficientnet(cfg: ModelConfig, img_size: int, load_weights: bool = True) -> nn.Module:
    """Faster R-CNN on a timm backbone (cfg.backbone, EfficientNet-B0..B7 or any features_only CNN) + FPN."""
    _no_one_stage_settings(cfg)
    anchors = _anchor_generator(cfg, img_size)  # validate before the (possibly slow) backbone build
    backbone = build_timm_fpn_backbone(cfg.backbone, cfg.pretrained, cfg.fpn_channels, cfg.trainable_backbone_layers,
                                       weights_file=cfg.weights, load_weights=load_weights)
    mean, std = backbone_norm_stats(backbone)
    return FasterRCNN(
        backbone,
        num_classes=cfg.num_classes,
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(featmap_names=["0", "1", "2", "3"], output_size=7, sampling_ratio=2),
        **_detector_kwargs(cfg, img_size, mean, std),
    )


def _torchvision_detector(builder: Callable[..., FasterRCNN], backbone_weights: Any, cfg: ModelConfig, img_size: int,
                          load_weights: bool = True) -> nn.Module:
    """Call a torchvision Faster R-CNN builder with 2-class heads and ImageNet backbone weights, then set our anchors.

    weights_backbone (ImageNet) rather than the COCO detector weights: our heads have cfg.num_classes outputs, so COCO
    heads could not be loaded anyway, and the backbone is what transfers.
    """
    _no_one_stage_settings(cfg)
    if cfg.weights:
        raise ConfigError(f"model.weights applies to timm backbones (fasterrcnn_efficientnet, fcos_timm), not "
                          f"{cfg.name}, which takes torchvision's ImageNet weights; remove the setting")
    if cfg.fpn_channels != TORCHVISION_FPN_CHANNELS:
        raise ConfigError(
            f"model.fpn_channels={cfg.fpn_channels} is not supported by {cfg.name} (torchvision fixes its FPN at "
            f"{TORCHVISION_FPN_CHANNELS} channels); remove the setting or use fasterrcnn_efficientnet"
        )
    anchors = _anchor_generator(cfg, img_size)
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
    return model


@register_model("fasterrcnn_mobilenet_v3_large_fpn", feature_levels=3)
def _fasterrcnn_mobilenet_v3_large_fpn(cfg: ModelConfig, img_size: int, load_weights: bool = True) -> nn.Module:
    """torchvision MobileNetV3-Large FPN Faster R-CNN (fast on CPU)."""
    return _torchvision_detector(fasterrcnn_mobilenet_v3_large_fpn, MobileNet_V3_Large_Weights.IMAGENET1K_V1, cfg, img_size,
                                 load_weights)


@register_model("fasterrcnn_mobilenet_v3_large_320_fpn", feature_levels=3)
def _fasterrcnn_mobilenet_v3_large_320_fpn(cfg: ModelConfig, img_size: int, load_weights: bool = True) -> nn.Module:
    """The low-resolution MobileNet variant (150 RPN proposals at test time, RPN score threshold 0.05)."""
    return _torchvision_detector(
        fasterrcnn_mobilenet_v3_large_320_fpn, MobileNet_V3_Large_Weights.IMAGENET1K_V1, cfg, img_size, load_weights
    )


@register_model("fasterrcnn_resnet50_fpn_v2", feature_levels=5)
def _fasterrcnn_resnet50_fpn_v2(cfg: ModelConfig, img_size: int, load_weights: bool = True) -> nn.Module:
    """torchvision ResNet-50 FPN v2 Faster R-CNN (the strongest and slowest reference)."""
    return _torchvision_detector(fasterrcnn_resnet50_fpn_v2, ResNet50_Weights.IMAGENET1K_V1, cfg, img_size, load_weights)


# --------------------------------------------------------------------------------------------------- one-stage
FCOS_STRIDES = (8, 16, 32, 64, 128)  # P3..P7: stride-8..32 backbone maps + P6/P7 (LastLevelP6P7)


class ForegroundFCOS(FCOS):
    """torchvision FCOS whose sigmoid classifier has one output per foreground class (no background logit).

    torchvision's FCOS/RetinaNet convention is a logit for every label including the unused 0; postprocessing then
    also emits "background" boxes that take detection slots. Here the head predicts labels 1..num_classes-1 only:
    targets are shifted down by one for the loss and detections shifted back up, so the outputs keep the dfudet
    label convention (0 = background, 1 = ulcer) used by the metrics, predict and ONNX.
    """

    def compute_loss(self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor],
                     anchors: list[Tensor], num_anchors_per_level: list[int]) -> dict[str, Tensor]:
        shifted = [{**t, "labels": t["labels"] - 1} for t in targets]
        return super().compute_loss(shifted, head_outputs, anchors, num_anchors_per_level)

    def postprocess_detections(self, head_outputs: dict[str, list[Tensor]], anchors: list[list[Tensor]],
                               image_shapes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        detections = super().postprocess_detections(head_outputs, anchors, image_shapes)
        for det in detections:
            det["labels"] = det["labels"] + 1
        return detections


def _fcos_head(channels: int, num_foreground: int, num_convs: int) -> FCOSHead:
    """FCOS head with `num_convs` conv+GroupNorm+ReLU layers per branch.

    GroupNorm groups: gcd(32, channels // 2), i.e. torchvision's 32 for 256 channels, and always >= 2 channels per
    group (GroupNorm of one channel on the 1x1 P7 map of a small image has a single value and fails in training).
    """
    norm = partial(nn.GroupNorm, math.gcd(32, channels // 2))
    head = FCOSHead(channels, 1, num_foreground, num_convs=0)  # no GroupNorm(32) layers; branches replaced below
    head.classification_head = FCOSClassificationHead(channels, 1, num_foreground, num_convs, norm_layer=norm)
    head.regression_head = FCOSRegressionHead(channels, 1, num_convs, norm_layer=norm)
    return head


def _check_one_stage_settings(cfg: ModelConfig) -> None:
    """Refuse settings an anchor-free one-stage model cannot honour (anchors, Faster R-CNN samplers, odd widths)."""
    defaults = ModelConfig()
    given = [k for k, v in (("anchor_sizes", cfg.anchor_sizes is not None), ("auto_anchors", cfg.auto_anchors),
                            ("aspect_ratios", cfg.aspect_ratios != defaults.aspect_ratios)) if v]
    if given:
        raise ConfigError(
            f"{cfg.name} is anchor-free: model.anchor_sizes, model.aspect_ratios and model.auto_anchors do not apply "
            f"(its level sizes are the strides {', '.join(map(str, FCOS_STRIDES))}); remove "
            f"{', '.join('model.' + k for k in given)}"
        )
    two_stage = [k for k in ("rpn_batch_size_per_image", "box_batch_size_per_image")
                 if getattr(cfg, k) != getattr(defaults, k)]
    if two_stage:
        verb, what = ("apply", "those settings") if len(two_stage) > 1 else ("applies", "the setting")
        raise ConfigError(f"{', '.join('model.' + k for k in two_stage)} {verb} to Faster R-CNN, not {cfg.name} "
                          f"(it has no RPN or RoI sampler); remove {what}")
    if cfg.fpn_channels % 2:
        raise ConfigError(f"model.fpn_channels={cfg.fpn_channels} must be even for {cfg.name} (its head's GroupNorm "
                          "uses gcd(32, fpn_channels / 2) groups)")


@register_model("fcos_timm", feature_levels=len(FCOS_STRIDES), anchor_free=True, timm_backbone=True)
def _fcos_timm(cfg: ModelConfig, img_size: int, load_weights: bool = True) -> nn.Module:
    """FCOS (anchor-free, one stage) on a timm backbone: stride-8..32 maps + FPN + P6/P7, a light head.

    The CPU alternative to Faster R-CNN when training from scratch: every location of P3 (stride 8) is a
    candidate, so 8-16 px ulcers get positives, and the head is a few shared convs instead of RPN + RoI heads.
    """
    _check_one_stage_settings(cfg)
    backbone = build_timm_fpn_backbone(cfg.backbone, cfg.pretrained, cfg.fpn_channels, cfg.trainable_backbone_layers,
                                       out_indices=ONE_STAGE_OUT_INDICES, p6p7=True, weights_file=cfg.weights,
                                       load_weights=load_weights)
    strides = list(backbone.body.feature_info.reduction())  # type: ignore[union-attr,operator]
    if strides != list(FCOS_STRIDES[:3]):
        raise ConfigError(
            f"model.backbone {cfg.backbone!r} gives feature maps at strides {strides} for stages "
            f"{list(ONE_STAGE_OUT_INDICES)}; {cfg.name} needs strides {list(FCOS_STRIDES[:3])} (its level sizes "
            "8..128 set the FCOS size ranges); use a CNN such as resnet10t, resnet18, regnetx_004 or efficientnet_b0"
        )
    mean, std = backbone_norm_stats(backbone)
    anchors = AnchorGenerator(tuple((s,) for s in FCOS_STRIDES), ((1.0,),) * len(FCOS_STRIDES))
    return ForegroundFCOS(
        backbone,
        num_classes=cfg.num_classes - 1,
        min_size=img_size,
        max_size=img_size,
        image_mean=mean,
        image_std=std,
        anchor_generator=anchors,
        head=_fcos_head(cfg.fpn_channels, cfg.num_classes - 1, cfg.head_convs or 4),
        score_thresh=cfg.box_score_thresh,
        nms_thresh=cfg.box_nms_thresh,
        detections_per_img=cfg.detections_per_img,
        topk_candidates=cfg.topk_candidates or 1000,
    )
