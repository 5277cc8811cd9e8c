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

from dfudet.config import ModelConfig, model_sections

# (model config, image size, load_weights) -> detector. load_weights=False builds the pretrained structure (frozen
# stages) without looking for ImageNet weights, for rebuilding a trained model from its checkpoint.
Builder = Callable[[ModelConfig, int, bool], nn.Module]
Targets = list[dict[str, Tensor]]
# The heads of one val pass on features computed once: (model, image_list, features, targets) -> (losses,
# detections in the transformed image's pixels). Called with BatchNorm/dropout frozen and the RNG forked.
HeadsPass = Callable[[nn.Module, Any, "dict[str, Tensor]", Targets], tuple[dict[str, Tensor], Targets]]


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
    # the sections of ModelConfig the builder reads (anchors, rcnn, mask_head, dense_head, fcos); build_detector
    # refuses a non-default key of any other section
    sections: frozenset[str] = frozenset()
    # keys every other family reads that this one does not (e.g. torchvision's own FPN is fixed at 256 channels):
    # they too must stay at their defaults
    ignores: tuple[str, ...] = ()
    timm_backbone: bool = False  # backbone from model.backbone (a timm name); others fix their own
    masks: bool = False  # also outlines each detection (Mask R-CNN): trains on and needs the data's wound masks
    # tracing tweaks while exporting to ONNX (e.g. a faster RoI merge for two-stage models)
    export_context: Callable[[], AbstractContextManager[Any]] = nullcontext

    @property
    def anchor_free(self) -> bool:
        """No anchor boxes to configure (model.anchors does not apply: FCOS's level sizes are its strides)."""
        return "anchors" not in self.sections


MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a spec to the registry (names are unique)."""
    if spec.name in MODELS:
        raise ValueError(f"model {spec.name!r} is already registered")
    unknown = sorted(spec.sections - set(model_sections())) + sorted(
        k for k in spec.ignores if k not in ModelConfig.model_fields or k in model_sections())
    if unknown:
        raise ValueError(f"model {spec.name!r} names settings ModelConfig does not have (or sections as ignored "
                         f"keys): {unknown}")
    MODELS[spec.name] = spec
    return spec
