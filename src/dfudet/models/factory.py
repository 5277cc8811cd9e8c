"""build_detector(cfg) and get_spec(name): the one registry of detector names -> ModelSpec (models/spec.py).

Each family module registers its specs when imported; the list below is the registry's only line per family.
"""

from __future__ import annotations

import importlib

from torch import nn

from dfudet.config import ModelConfig
from dfudet.errors import ConfigError
from dfudet.models.spec import MODELS, ModelSpec

FAMILIES = ("dfudet.models.fasterrcnn", "dfudet.models.fcos", "dfudet.models.retinanet")
for _module in FAMILIES:
    importlib.import_module(_module)


def available_models() -> list[str]:
    """Registered detector names, sorted (for CLI help and error messages)."""
    return sorted(MODELS)


def get_spec(name: str) -> ModelSpec:
    """The spec of model `name`, or a clear error listing the registered names."""
    if name not in MODELS:
        raise ConfigError(f"unknown model.name {name!r}; available models: {', '.join(available_models())}")
    return MODELS[name]


def backbone_label(name: str, backbone: str) -> str:
    """The backbone a checkpoint records: the timm name for timm-backbone models, else the model's own name."""
    spec = MODELS.get(name)
    return backbone if spec is not None and spec.timm_backbone else name


def build_detector(cfg: ModelConfig, img_size: int, load_weights: bool = True) -> nn.Module:
    """Build the configured detector: a torchvision detector taking 0..1 float images of img_size x img_size.

    `load_weights=False`: same modules (frozen stages included) but no pretrained weights are looked for; the caller
    loads a checkpoint's state dict next.
    """
    return get_spec(cfg.name).build(cfg, img_size, load_weights)


def weights_source(model: nn.Module) -> str | None:
    """Where a built detector's pretrained backbone weights came from (None: random init or not a timm backbone)."""
    source = getattr(getattr(model, "backbone", None), "weights_source", None)
    return source.describe() if source is not None else None
