"""ModelIdentity: made once from a config (the backbone label rule), round trip through a plain dict, one diff."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dfudet.config import load_config
from dfudet.errors import CheckpointError
from dfudet.identity import ModelIdentity, check_compatible, describe
from dfudet.models.factory import model_identity


def test_the_backbone_label_follows_the_family() -> None:
    timm = load_config(None, ["model.name=fcos_timm", "model.backbone=resnet10t", "data.img_size=320"])
    assert model_identity(timm) == ModelIdentity("fcos_timm", "resnet10t", 320, 2)
    # a torchvision family fixes its own backbone: model.backbone says nothing, the model's name is recorded
    tv = load_config(None, ["model.name=fasterrcnn_mobilenet_v3_large_fpn", "model.backbone=efficientnet_b3"])
    assert model_identity(tv).backbone == "fasterrcnn_mobilenet_v3_large_fpn"
    assert ModelIdentity.of(tv, timm_backbone=True).backbone == "efficientnet_b3"


def test_round_trip_through_a_dict_and_json() -> None:
    ident = ModelIdentity("maskrcnn_efficientnet", "efficientnet_lite0", 512, 2)
    data = ident.as_dict()
    assert list(data) == list(ModelIdentity.field_names()) == ["model_name", "backbone", "img_size", "num_classes"]
    assert ModelIdentity.from_dict(json.loads(json.dumps(data)), "m.json") == ident
    assert ModelIdentity.from_dict({**data, "epoch": 3}, "m.json") == ident  # other keys of the file are ignored


@pytest.mark.parametrize(("change", "message"), [
    ({"img_size": None}, "m.json: the model identity field 'img_size' must be an integer, got None"),
    ({"num_classes": True}, "m.json: the model identity field 'num_classes' must be an integer, got True"),
    ({"backbone": 5}, "m.json: the model identity field 'backbone' must be a string, got 5"),
])
def test_from_dict_names_the_file_and_the_bad_field(change: dict[str, object], message: str) -> None:
    data = {**ModelIdentity("fcos_timm", "resnet10t", 96, 2).as_dict(), **change}
    with pytest.raises(CheckpointError, match=message):
        ModelIdentity.from_dict(data, "m.json")
    del data["model_name"]
    with pytest.raises(CheckpointError, match="m.json: the model identity field 'model_name' is missing"):
        ModelIdentity.from_dict(data, "m.json")


def test_diff_lists_exactly_the_differing_fields() -> None:
    a = ModelIdentity("fcos_timm", "resnet10t", 96, 2)
    assert a.diff(a) == {}
    b = ModelIdentity("fcos_timm", "resnet18", 128, 2)
    assert a.diff(b) == {"backbone": ("resnet10t", "resnet18"), "img_size": (96, 128)}
    assert a.diff(b, only=("model_name", "img_size")) == {"img_size": (96, 128)}
    assert describe(a.diff(b), "the run", "this config") == (
        "backbone: the run has 'resnet10t', this config has 'resnet18'\n"
        "  img_size: the run has 96, this config has 128")
    check_compatible(a, b, "m.pth", only=("model_name", "num_classes"))  # the fields compared agree: no error
    with pytest.raises(CheckpointError, match=r"(?s)m.pth: the model was trained for another model.*backbone.*"
                                              r"img_size: the model has 96, the config has 128"):
        check_compatible(a, b, "m.pth")


def test_the_identity_module_imports_no_torch() -> None:
    """The ONNX runtime reads its sidecar's identity with this module: it must not load torch."""
    code = "import sys, dfudet.identity; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
