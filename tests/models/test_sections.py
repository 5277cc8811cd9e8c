"""Per-family model settings: each ModelSpec lists the sections of ModelConfig it reads; build_detector refuses a
non-default key of any other section (and of the common keys a family ignores) once, for every family, and each
family's own sections reach the model it builds (random init, tiny)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from dfudet.config import ModelConfig, model_sections
from dfudet.errors import ConfigError
from dfudet.models import MODELS, available_models, build_detector, get_spec
from dfudet.models.factory import check_settings_read

IMG = 64

# one non-default value for every key of every section: the tests below cover a key only if it is here, and
# test_every_section_key_has_a_sample fails when a new key is added without one
SAMPLES: dict[str, Any] = {
    "anchors.sizes": None,  # set per model below (one list per feature level)
    "anchors.aspect_ratios": [0.5, 1.0],
    "anchors.auto": True,
    "rcnn.rpn_batch_size_per_image": 24,
    "rcnn.box_batch_size_per_image": 20,
    "rcnn.box_head_size": 64,
    "mask_head.channels": 16,
    "mask_head.convs": 2,
    "dense_head.convs": 2,
    "dense_head.topk_candidates": 50,
    "fcos.instance_balance": 0.5,
}


def _sample(name: str, key: str) -> Any:
    if key == "anchors.sizes":
        return [[8.0 * 2**i] for i in range(get_spec(name).feature_levels)]
    return SAMPLES[key]


def _section_keys() -> list[str]:
    cfg = ModelConfig()
    return [f"{s}.{k}" for s in model_sections() for k in type(getattr(cfg, s)).model_fields]


def _with(name: str, settings: dict[str, Any], **common: Any) -> ModelConfig:
    """A tiny config of model `name` (resnet10t, narrow FPN where the family takes them) with section keys set."""
    spec = get_spec(name)
    base: dict[str, Any] = {"name": name, "pretrained": False, **common}
    if spec.timm_backbone:
        base |= {"backbone": "resnet10t", "fpn_channels": 32}
    for key, value in settings.items():
        section, field = key.split(".")
        base.setdefault(section, {})[field] = value
    return ModelConfig.model_validate(base)


def test_every_section_key_has_a_sample() -> None:
    assert sorted(SAMPLES) == sorted(_section_keys())
    defaults = ModelConfig()
    for key in SAMPLES:
        section, field = key.split(".")
        assert _sample("fasterrcnn_efficientnet", key) != getattr(getattr(defaults, section), field), key


def test_every_spec_reads_known_sections_and_every_section_has_a_reader() -> None:
    assert set(model_sections()) == {"anchors", "rcnn", "mask_head", "dense_head", "fcos"}
    assert set().union(*(spec.sections for spec in MODELS.values())) == set(model_sections())
    assert get_spec("fcos_timm").sections == {"dense_head", "fcos"} and get_spec("fcos_timm").anchor_free
    assert get_spec("retinanet_timm").sections == {"anchors", "dense_head"}
    assert get_spec("maskrcnn_efficientnet").sections == {"anchors", "rcnn", "mask_head"}
    assert get_spec("fasterrcnn_mobilenet_v3_large_fpn").sections == {"anchors", "rcnn"}


UNREAD = [(name, key) for name in available_models() for key in _section_keys()
          if key.split(".")[0] not in get_spec(name).sections]


@pytest.mark.parametrize("name, key", UNREAD)
def test_a_section_key_the_family_does_not_read_is_refused_naming_it(name: str, key: str) -> None:
    spec = get_spec(name)
    value = _sample(name, key)
    with pytest.raises(ConfigError) as err:
        build_detector(_with(name, {key: value}), IMG)
    msg = str(err.value)
    assert f"{name} (family {spec.family}) does not read model.{key}={value!r}" in msg
    section = key.split(".")[0]
    readers = [n for n, s in sorted(MODELS.items()) if section in s.sections]
    assert f"remove it, or choose a model that reads it (model.{section}: {', '.join(readers)})" in msg


def test_several_unread_keys_are_named_in_one_message() -> None:
    with pytest.raises(ConfigError) as err:
        check_settings_read(get_spec("fcos_timm"), _with("fcos_timm", {"anchors.auto": True,
                                                                       "rcnn.box_batch_size_per_image": 64}))
    msg = str(err.value)
    assert "does not read model.anchors.auto=True, model.rcnn.box_batch_size_per_image=64" in msg
    assert "remove them" in msg and "model.anchors: " in msg and "; model.rcnn: " in msg


def test_an_unread_section_left_at_its_defaults_is_accepted() -> None:
    """Spelling out a default (e.g. `model.rcnn={}` or the default sampler size) is not a setting that is ignored."""
    for name in available_models():
        check_settings_read(get_spec(name), _with(name, {"rcnn.rpn_batch_size_per_image": 256}))


@pytest.mark.parametrize("key, value", [("weights", "w.pth"), ("fpn_channels", 128)])
def test_common_keys_a_torchvision_model_ignores_are_refused(key: str, value: Any) -> None:
    name = "fasterrcnn_mobilenet_v3_large_320_fpn"
    cfg = ModelConfig.model_validate({"name": name, key: value})
    with pytest.raises(ConfigError) as err:
        build_detector(cfg, IMG)
    assert f"{name} (family faster_rcnn) does not read model.{key}={value!r}" in str(err.value)
    assert "fasterrcnn_efficientnet, fcos_timm, maskrcnn_efficientnet, retinanet_timm" in str(err.value)


def test_register_refuses_a_spec_naming_an_unknown_section() -> None:
    from dataclasses import replace

    from dfudet.models.spec import register

    spec = get_spec("fcos_timm")
    with pytest.raises(ValueError, match=r"names settings ModelConfig does not have.*\['head'\]"):
        register(replace(spec, name="fcos_typo", sections=frozenset({"head"})))
    with pytest.raises(ValueError, match=r"\['anchors'\]"):
        register(replace(spec, name="fcos_typo", ignores=("anchors",)))
    assert "fcos_typo" not in MODELS


def _anchor_generator(model: nn.Module) -> Any:
    return model.rpn.anchor_generator if hasattr(model, "rpn") else model.anchor_generator


def _convs(branch: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in branch.modules())


def _box_head_width(model: nn.Module) -> int | None:
    head, predictor = model.roi_heads.box_head, model.roi_heads.box_predictor
    widths = {head.fc6.out_features, head.fc7.in_features, head.fc7.out_features, predictor.cls_score.in_features,
              predictor.bbox_pred.in_features}
    return widths.pop() if len(widths) == 1 else None


# what each section changes in a built model: (model, name) -> the values read back, compared with the settings
READ_BACK = {
    "anchors": lambda m, name: {"anchors.sizes": [list(s) for s in _anchor_generator(m).sizes],
                                "anchors.aspect_ratios": list(_anchor_generator(m).aspect_ratios[0])},
    "rcnn": lambda m, name: {"rcnn.rpn_batch_size_per_image": m.rpn.fg_bg_sampler.batch_size_per_image,
                             "rcnn.box_batch_size_per_image": m.roi_heads.fg_bg_sampler.batch_size_per_image,
                             # the box head's width, as both of its layers and the predictor see it
                             "rcnn.box_head_size": _box_head_width(m)},
    "mask_head": lambda m, name: {"mask_head.channels": m.roi_heads.mask_head[0][0].out_channels,
                                  "mask_head.convs": len(m.roi_heads.mask_head)},
    "dense_head": lambda m, name: {"dense_head.convs": _convs(m.head.classification_head.conv),
                                   "dense_head.topk_candidates": m.topk_candidates},
    "fcos": lambda m, name: {"fcos.instance_balance": m.head.balance},
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "fasterrcnn_resnet50_fpn_v2" else n
                                  for n in available_models()])
def test_each_family_builds_with_its_own_sections_and_reads_them(name: str) -> None:
    spec = get_spec(name)
    settings = {k: _sample(name, k) for k in _section_keys() if k.split(".")[0] in spec.sections}
    torch.manual_seed(0)
    model = build_detector(_with(name, settings), IMG)
    read = {k: v for section in sorted(spec.sections) for k, v in READ_BACK[section](model, name).items()}
    # anchors.auto is accepted here but read by the runner (it fills anchors.sizes from the training boxes first)
    assert read == {k: v for k, v in settings.items() if k != "anchors.auto"}
