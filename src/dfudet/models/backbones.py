"""timm CNN features (EfficientNet by default) + torchvision FPN, shaped as a torchvision detection backbone."""

from __future__ import annotations

import difflib
import logging
from collections import OrderedDict
from typing import cast

import timm
import torch
from timm.models import FeatureInfo
from timm.utils.model import freeze
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from dfudet.errors import ConfigError
from dfudet.models.weights import WeightSource, load_pretrained

log = logging.getLogger(__name__)

# Stride-4..32 feature maps (index 0 is stride 2, too fine and too costly for an FPN level): Faster R-CNN's FPN.
OUT_INDICES: tuple[int, ...] = (1, 2, 3, 4)
# Stride-8..32 maps: one-stage heads (FCOS) run on every location of every level, so the stride-4 map would cost
# 4x the stride-8 one; P6/P7 (stride 64/128) are added on top by LastLevelP6P7 instead.
ONE_STAGE_OUT_INDICES: tuple[int, ...] = (2, 3, 4)
N_STAGES = 5  # feature stages of a timm CNN: strides 2, 4, 8, 16, 32


def weights_unavailable(name: str, exc: BaseException) -> ConfigError:
    """The message for torchvision's own ImageNet weights that cannot be had (no cache, no network)."""
    return ConfigError(
        f"the ImageNet weights for {name} could not be loaded (not in the local cache and no network): "
        f"{type(exc).__name__}: {exc}\n"
        "Run with `model.pretrained=false` to train from random initialisation, or put the weights in "
        "$TORCH_HOME/hub/checkpoints. timm backbones (fasterrcnn_efficientnet, fcos_timm) also take a weights file "
        "(`model.weights=PATH`) or an installed weight package (efficientnet_lite0/1/2)."
    )


def timm_feature_info(body: nn.Module) -> FeatureInfo:
    """The stage table (channels, reduction, module per stage) of a timm `features_only` body."""
    return cast(FeatureInfo, body.feature_info)


class TimmFpnBackbone(nn.Module):
    """timm `features_only` body + FPN + extra levels; returns an OrderedDict of maps with `out_channels` each.

    Faster R-CNN: strides 4..32 + max-pool level ("0".."3", "pool"). FCOS: strides 8..32 + P6/P7 ("0".."2", "p6", "p7").
    """

    def __init__(self, body: nn.Module, in_channels: list[int], out_channels: int,
                 extra_blocks: ExtraFPNBlock | None = None, weights_source: WeightSource | None = None) -> None:
        super().__init__()
        self.body = body
        self.weights_source = weights_source  # where the body's pretrained weights came from (None: not loaded)
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels,
                                         extra_blocks=extra_blocks if extra_blocks is not None else LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """Multi-scale features for the RPN and the RoI heads."""
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def _stage_modules(body: nn.Module, n_frozen: int) -> list[str]:
    """Names of the largest submodules that together make up the first `n_frozen` feature stages of `body`."""
    if n_frozen <= 0:
        return []
    stage_module = timm_feature_info(body).info[n_frozen - 1]["module"]
    names = [n for n, _ in body.named_modules()][1:]  # pre-order, i.e. construction (forward) order
    # index of the last module inside the stage's module: everything up to it belongs to stages 1..n_frozen
    last = max(i for i, n in enumerate(names) if n == stage_module or n.startswith(stage_module + "."))
    covered: list[str] = []
    for i, n in enumerate(names[: last + 1]):
        subtree_end = i
        while subtree_end + 1 < len(names) and names[subtree_end + 1].startswith(n + "."):
            subtree_end += 1
        if subtree_end <= last and not any(n.startswith(c + ".") for c in covered):
            covered.append(n)
    return covered


def freeze_stages(body: nn.Module, n_frozen: int) -> list[str]:
    """Freeze the first `n_frozen` feature stages of a timm features_only body (no grad, FrozenBatchNorm); returns
    the module names.
    """
    modules = _stage_modules(body, n_frozen)
    if modules:
        freeze(body, modules)
    return modules


def build_timm_fpn_backbone(
    name: str, pretrained: bool, fpn_channels: int = 256, trainable_layers: int = N_STAGES,
    out_indices: tuple[int, ...] = OUT_INDICES, p6p7: bool = False, weights_file: str | None = None,
    load_weights: bool = True,
) -> TimmFpnBackbone:
    """Create the timm body (optionally with ImageNet weights), freeze early stages when pretrained, and add the FPN.

    Pretrained weights come from `dfudet.models.weights.load_pretrained` (a user's file, timm's cache, a weight
    package, or the hub). `load_weights=False` builds the same structure (frozen stages included) without loading
    any weights: for rebuilding a trained model from its checkpoint.
    `out_indices` picks the feature stages the FPN sees (default: strides 4..32); `p6p7` adds RetinaNet/FCOS-style
    stride-64/128 levels computed from the top FPN map instead of the max-pool level.

    `trainable_layers` counts feature stages from the top (5 = all trainable, 0 = whole body frozen), like
    torchvision's `trainable_backbone_layers`. Frozen stages get `requires_grad=False` and FrozenBatchNorm, so small
    detection batches do not disturb ImageNet statistics. Without pretrained weights nothing is frozen.
    """
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        hint = f" (did you mean: {', '.join(close)}?)" if close else ""
        raise ConfigError(f"model.backbone {name!r} is not a timm model{hint}")
    try:
        body = timm.create_model(name, pretrained=False, features_only=True, out_indices=out_indices)
    except (RuntimeError, ValueError, AssertionError, TypeError, IndexError) as exc:
        raise ConfigError(
            f"model.backbone {name!r} cannot be used: timm could not create it with features_only=True, "
            f"out_indices={out_indices} ({type(exc).__name__}: {exc}); use a CNN such as efficientnet_b0..b7"
        ) from exc
    if len(timm_feature_info(body).info) < N_STAGES:
        raise ConfigError(f"model.backbone {name!r} has fewer than {N_STAGES} feature stages; "
                          "use a CNN such as efficientnet_b5")
    strides = list(timm_feature_info(body).reduction())
    if any(b <= a for a, b in zip(strides, strides[1:])):
        # ViT/MLP-style models give same-stride maps: no pyramid for the FPN and RoI level mapping
        raise ConfigError(
            f"model.backbone {name!r} gives feature maps at strides {strides}, not a pyramid of increasing strides; "
            "use a CNN such as efficientnet_b0..b7"
        )
    source = None
    if pretrained and load_weights:
        source = load_pretrained(name, body, weights_file)
        log.info("backbone %s: pretrained weights from %s", name, source.describe())
    if pretrained and trainable_layers < N_STAGES:
        modules = freeze_stages(body, N_STAGES - trainable_layers)
        log.info("backbone %s: froze %d of %d stages (%s)", name, N_STAGES - trainable_layers, N_STAGES,
                 ", ".join(modules))
    elif not pretrained and trainable_layers < N_STAGES:
        log.info("backbone %s has random weights: trainable_backbone_layers=%d ignored, all stages train",
                 name, trainable_layers)
    extra = LastLevelP6P7(fpn_channels, fpn_channels) if p6p7 else None
    return TimmFpnBackbone(body, list(timm_feature_info(body).channels()), fpn_channels, extra, source)


def backbone_norm_stats(backbone: TimmFpnBackbone) -> tuple[list[float], list[float]]:
    """Input mean/std the timm body was trained with (ImageNet for EfficientNets), for the detector's transform."""
    cfg = getattr(backbone.body, "pretrained_cfg", None) or {}
    mean = list(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = list(cfg.get("std", (0.229, 0.224, 0.225)))
    return [float(m) for m in mean], [float(s) for s in std]
