"""build_detector(cfg) and get_spec(name): the one registry of detector names -> ModelSpec (models/spec.py).

build_detector is also the one place that refuses model settings a family does not read (check_settings_read).

Each family module registers its specs when imported; the list below is the registry's only line per family.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from dfudet.config import Config, ModelConfig, model_sections
from dfudet.errors import ConfigError
from dfudet.identity import ModelIdentity
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


def model_identity(cfg: Config) -> ModelIdentity:
    """The identity of the model a config builds (its family says whether `model.backbone` names the backbone)."""
    return ModelIdentity.of(cfg, get_spec(cfg.model.name).timm_backbone)


def build_detector(cfg: ModelConfig, img_size: int, load_weights: bool = True) -> nn.Module:
    """Build the configured detector: a torchvision detector taking 0..1 float images of img_size x img_size.

    `load_weights=False`: same modules (frozen stages included) but no pretrained weights are looked for; the caller
    loads a checkpoint's state dict next.
    """
    spec = get_spec(cfg.name)
    check_settings_read(spec, cfg)
    model = spec.build(cfg, img_size, load_weights)
    if cfg.channels_last:
        model.get_submodule("backbone").register_forward_pre_hook(_channels_last_input)
    return model


def check_settings_read(spec: ModelSpec, cfg: ModelConfig) -> None:
    """Refuse settings the model would ignore: a key of a section its spec does not list, or a key in its `ignores`,
    set to anything but its default (once, here, for every family; the builders read only what applies to them)."""
    defaults = ModelConfig()
    given: list[tuple[str, Any]] = [(k, getattr(cfg, k)) for k in spec.ignores
                                    if getattr(cfg, k) != getattr(defaults, k)]
    for section in model_sections():
        if section in spec.sections:
            continue
        values, default = getattr(cfg, section), getattr(defaults, section)
        given += [(f"{section}.{k}", getattr(values, k)) for k in type(values).model_fields
                  if getattr(values, k) != getattr(default, k)]
    if not given:
        return
    places = sorted({k.split(".")[0] for k, _ in given})
    readers = "; ".join(f"model.{p}: {', '.join(_models_reading(p))}" for p in places)
    reads = ", ".join(f"model.{s}" for s in sorted(spec.sections)) or "none"
    them = len(given) > 1
    raise ConfigError(
        f"{cfg.name} (family {spec.family}) does not read {', '.join(f'model.{k}={v!r}' for k, v in given)} (the "
        f"sections it reads: {reads}); remove {'them' if them else 'it'}, or choose a model that reads "
        f"{'them' if them else 'it'} ({readers})")


def _models_reading(place: str) -> list[str]:
    """The registered models that read a section (or a common key)."""
    if place in model_sections():
        return [name for name, spec in sorted(MODELS.items()) if place in spec.sections]
    return [name for name, spec in sorted(MODELS.items()) if place not in spec.ignores]


def _channels_last_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """Forward pre-hook on the backbone: hand it the batch in channels-last (NHWC) memory layout.

    Every conv after it then computes and returns NHWC, which oneDNN's CPU kernels (depthwise ones above all) and
    cuDNN's tensor-core kernels run faster than NCHW; the values are the same up to float rounding and the weights
    are untouched, so checkpoints do not depend on it. Skipped while tracing for ONNX export (a layout is not part
    of an ONNX graph).
    """
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return None
    return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])


def weights_source(model: nn.Module) -> str | None:
    """Where a built detector's pretrained backbone weights came from (None: random init or not a timm backbone)."""
    source = getattr(getattr(model, "backbone", None), "weights_source", None)
    return source.describe() if source is not None else None
