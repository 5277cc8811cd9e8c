"""ModelSpec: everything the engine, inference and export need to know about one detector family.

A family module (fasterrcnn.py, fcos.py, retinanet.py) builds its models and registers one spec per model name;
the rest of dfudet asks the spec (`dfudet.models.factory.get_spec(name)`), never the model's class or attributes.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from dfudet.config import ModelConfig
from dfudet.errors import ConfigError

# (model config, image size, load_weights) -> detector. load_weights=False builds the pretrained structure (frozen
# stages) without looking for ImageNet weights, for rebuilding a trained model from its checkpoint.
Builder = Callable[[ModelConfig, int, bool], nn.Module]
Targets = list[dict[str, Tensor]]
# The heads of one val pass on features computed once: (model, image_list, features, targets) -> (losses,
# detections in the transformed image's pixels). Called with BatchNorm/dropout frozen and the RNG forked.
# model settings that only outline (mask) models take; the other builders refuse a non-default value
MASK_HEAD_SETTINGS = ("mask_head_channels", "mask_head_convs")
HeadsPass = Callable[[nn.Module, Any, "dict[str, Tensor]", Targets], tuple[dict[str, Tensor], Targets]]


def refuse_instance_balance(cfg: ModelConfig) -> None:
    """model.instance_balance weights FCOS's per-location losses; the other families refuse a non-zero value."""
    if cfg.instance_balance:
        raise ConfigError(f"model.instance_balance={cfg.instance_balance} applies to fcos_timm (its per-location "
                          f"loss), not {cfg.name}; remove the setting")


@dataclass(frozen=True)
class ModelSpec:
    """One registered detector: how to build it and how the shared code drives it."""

    name: str
    family: str  # "faster_rcnn", "fcos", "retinanet": what the docs and the run header call it
    build: Builder
    heads_pass: HeadsPass  # losses and detections from one backbone pass (validation)
    min_score: Callable[[nn.Module], float]  # lowest score the model emits (start of threshold sweeps)
    max_detections: Callable[[nn.Module], int]  # detections per image cap
    feature_levels: int  # feature maps the anchors / dense head cover (FPN levels incl. extra ones)
    anchor_free: bool = False  # no anchor_sizes / aspect_ratios / auto_anchors
    timm_backbone: bool = False  # backbone from model.backbone (a timm name); others fix their own
    masks: bool = False  # also outlines each detection (Mask R-CNN): trains on and needs the data's wound masks
    # tracing tweaks while exporting to ONNX (e.g. a faster RoI merge for two-stage models)
    export_context: Callable[[], AbstractContextManager[Any]] = nullcontext


MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a spec to the registry (names are unique)."""
    if spec.name in MODELS:
        raise ValueError(f"model {spec.name!r} is already registered")
    MODELS[spec.name] = spec
    return spec
