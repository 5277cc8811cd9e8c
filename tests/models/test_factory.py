"""Detector factory: every registry name trains and predicts, config is honoured, errors are clear
(random init, tiny).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch
from timm.layers import FrozenBatchNormAct2d
from torchvision.models.detection import FasterRCNN

from dfudet.config import AnchorsConfig, DenseHeadConfig, ModelConfig, RcnnConfig
from dfudet.errors import ConfigError
from dfudet.models import available_models, build_detector, get_spec
from dfudet.models.backbones import freeze_stages

IMG = 128
LOSS_KEYS = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}


def _cfg(name: str, **kw: object) -> ModelConfig:
    return ModelConfig(name=name, backbone="efficientnet_b0", pretrained=False, **kw)


def _batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, IMG, IMG, generator=g) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0], [70.0, 5.0, 120.0, 40.0]]), "labels": torch.tensor([1, 1])},
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)},  # healthy image, no boxes
    ]
    return images, targets


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _train_and_predict(model: torch.nn.Module, loss_keys: set[str] = LOSS_KEYS) -> None:
    images, targets = _batch()
    model.train()
    losses = model(images, targets)
    assert set(losses) == loss_keys
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(g is not None for g in grads) > 0.9 * len(grads)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert isinstance(out, list) and len(out) == 2
    assert sum(len(d["boxes"]) for d in out) > 0  # random heads score ~0.5 > threshold: the bounds checks bite
    for det in out:
        assert set(det) == {"boxes", "scores", "labels"}
        boxes = det["boxes"]
        assert boxes.ndim == 2 and boxes.shape[1] == 4 and len(det["scores"]) == len(boxes) == len(det["labels"])
        assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= IMG).all() and (boxes[:, [1, 3]] <= IMG).all()
        assert (det["labels"] == 1).all()  # dfudet labels (1 = ulcer); FCOS: not its head's 0-based class index
        assert ((det["scores"] >= 0) & (det["scores"] <= 1)).all()


def test_registry_names() -> None:
    assert available_models() == [
        "fasterrcnn_efficientnet",
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        "fasterrcnn_mobilenet_v3_large_fpn",
        "fasterrcnn_resnet50_fpn_v2",
        "fcos_timm",
        "maskrcnn_efficientnet",
        "retinanet_timm",
    ]
    assert get_spec("fasterrcnn_efficientnet").feature_levels == 5
    assert get_spec("fasterrcnn_mobilenet_v3_large_fpn").feature_levels == 3


@pytest.mark.parametrize(
    "name",
    [
        "fasterrcnn_efficientnet",
        "fasterrcnn_mobilenet_v3_large_fpn",
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        pytest.param("fasterrcnn_resnet50_fpn_v2", marks=pytest.mark.slow),
    ],
)
def test_every_model_trains_and_predicts_and_honours_config(name: str) -> None:
    cfg = _cfg(
        name,
        box_score_thresh=0.02,
        box_nms_thresh=0.4,
        detections_per_img=7,
        rcnn=RcnnConfig(rpn_batch_size_per_image=64, box_batch_size_per_image=32),
    )
    model = build_detector(cfg, IMG)
    assert isinstance(model, FasterRCNN)
    t = model.transform
    assert t.min_size == (IMG,) and t.max_size == IMG
    assert t.image_mean == pytest.approx([0.485, 0.456, 0.406]) and t.image_std == pytest.approx([0.229, 0.224, 0.225])
    rh = model.roi_heads
    assert (rh.score_thresh, rh.nms_thresh, rh.detections_per_img) == (0.02, 0.4, 7)
    assert rh.fg_bg_sampler.batch_size_per_image == 32 and model.rpn.fg_bg_sampler.batch_size_per_image == 64
    assert rh.box_predictor.cls_score.out_features == 2
    # default anchors: the 512-px ladder 16..256 scaled to the input size
    gen = model.rpn.anchor_generator
    assert len(gen.sizes) == get_spec(name).feature_levels
    assert min(min(s) for s in gen.sizes) == pytest.approx(16 * IMG / 512)
    assert max(max(s) for s in gen.sizes) == pytest.approx(256 * IMG / 512)
    _train_and_predict(model)


def test_fcos_trains_and_predicts_ulcer_labels_in_image_bounds() -> None:
    cfg = ModelConfig(name="fcos_timm", backbone="resnet10t", pretrained=False, fpn_channels=32,
                      dense_head=DenseHeadConfig(convs=1))
    _train_and_predict(build_detector(cfg, IMG), {"classification", "bbox_regression", "bbox_ctrness"})


def test_efficientnet_backbone_fpn_levels_and_channels() -> None:
    model = build_detector(_cfg("fasterrcnn_efficientnet", fpn_channels=64, num_classes=3), IMG)
    assert model.backbone.out_channels == 64
    assert model.roi_heads.box_predictor.cls_score.out_features == 3
    assert model.roi_heads.box_roi_pool.featmap_names == ["0", "1", "2", "3"]
    with torch.no_grad():
        feats = model.backbone(torch.rand(1, 3, IMG, IMG))
    assert list(feats) == ["0", "1", "2", "3", "pool"]
    assert [tuple(f.shape[1:]) for f in feats.values()] == [(64, IMG // s, IMG // s) for s in (4, 8, 16, 32, 64)]


def test_custom_anchors_change_generator_and_rpn_head() -> None:
    sizes = [[6.0, 9.0], [12.0, 18.0], [24.0, 36.0], [48.0, 72.0], [96.0, 144.0]]
    model = build_detector(_cfg("fasterrcnn_efficientnet",
                                anchors=AnchorsConfig(sizes=sizes, aspect_ratios=[0.5, 1.0, 2.0, 3.0])), IMG)
    gen = model.rpn.anchor_generator
    assert gen.sizes == tuple(tuple(s) for s in sizes)
    assert gen.num_anchors_per_location() == [8] * 5
    assert model.rpn.head.cls_logits.out_channels == 8 and model.rpn.head.bbox_pred.out_channels == 32

    # torchvision model: a different anchor count replaces its RPN head (keeping its conv depth) and still trains
    mb = build_detector(_cfg("fasterrcnn_mobilenet_v3_large_320_fpn",
                             anchors=AnchorsConfig(sizes=[[16.0], [32.0], [64.0]], aspect_ratios=[1.0])), IMG)
    assert mb.rpn.anchor_generator.num_anchors_per_location() == [1, 1, 1]
    assert mb.rpn.head.cls_logits.out_channels == 1
    _train_and_predict(mb)


@pytest.mark.parametrize(
    "name, levels, expected",
    [
        ("fasterrcnn_efficientnet", 4, "has 4 levels but fasterrcnn_efficientnet has 5 feature maps"),
        ("fasterrcnn_mobilenet_v3_large_fpn", 5,
         "has 5 levels but fasterrcnn_mobilenet_v3_large_fpn has 3 feature maps"),
    ],
)
def test_wrong_anchor_level_count_is_a_config_error(name: str, levels: int, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_detector(_cfg(name, anchors=AnchorsConfig(sizes=[[32.0]] * levels)), IMG)
    assert expected in str(err.value)


def test_unknown_names_are_config_errors() -> None:
    with pytest.raises(ConfigError) as err:
        build_detector(_cfg("yolo"), IMG)
    assert "unknown model.name 'yolo'" in str(err.value)
    assert "fasterrcnn_efficientnet, fasterrcnn_mobilenet_v3_large_320_fpn" in str(err.value)
    with pytest.raises(ConfigError) as err:
        build_detector(ModelConfig(backbone="efficientnet_b00", pretrained=False), IMG)
    assert "'efficientnet_b00' is not a timm model" in str(err.value) and "efficientnet_b0" in str(err.value)
    with pytest.raises(ConfigError, match=r"gives feature maps at strides \[16, 16, 16, 16\], not a pyramid"):
        build_detector(_cfg("fasterrcnn_efficientnet").model_copy(update={"backbone": "vit_tiny_patch16_224"}), IMG)
    with pytest.raises(ConfigError, match="fasterrcnn_mobilenet_v3_large_fpn .*does not read model.fpn_channels=128"):
        build_detector(_cfg("fasterrcnn_mobilenet_v3_large_fpn", fpn_channels=128), IMG)


def test_tf_efficientnet_variant_builds() -> None:
    model = build_detector(_cfg("fasterrcnn_efficientnet").model_copy(update={"backbone": "tf_efficientnet_b0"}), IMG)
    assert model.backbone.body.feature_info.channels() == [24, 40, 112, 320]


def test_freeze_stages_freezes_early_stages_and_their_batchnorm() -> None:
    body = timm.create_model("efficientnet_b0", pretrained=False, features_only=True, out_indices=(1, 2, 3, 4))
    assert freeze_stages(body, 0) == []
    names = freeze_stages(body, 2)  # stride-2 and stride-4 stages
    assert names == ["conv_stem", "bn1", "blocks.0", "blocks.1"]
    for n, p in body.named_parameters():
        frozen = n.split(".")[0] in ("conv_stem", "bn1") or n.startswith(("blocks.0.", "blocks.1."))
        assert p.requires_grad is not frozen, n
    assert isinstance(body.bn1, FrozenBatchNormAct2d) and isinstance(body.blocks[1][0].bn1, FrozenBatchNormAct2d)
    assert not isinstance(body.blocks[2][0].bn1, FrozenBatchNormAct2d)
    before = body.blocks[1][0].bn1.running_mean.clone()
    body.train()
    body(torch.rand(2, 3, 64, 64))
    assert torch.equal(body.blocks[1][0].bn1.running_mean, before)  # frozen statistics do not drift in train mode
    freeze_stages(body, 5)
    assert not any(p.requires_grad for p in body.parameters())


@pytest.mark.slow  # a fresh interpreter that imports torch and builds two detectors: ~5 s of CPU
def test_pretrained_without_cache_or_network_is_a_clear_config_error(tmp_path: Path) -> None:
    """Offline by construction, so a machine with internet gives the same result: empty caches, timm's download
    switched off (HF_HUB_OFFLINE) and torchvision's sent through a proxy on a closed loopback port."""
    # huggingface_hub reads HF_HUB_OFFLINE/HF_HOME at import, so the real build runs in a fresh interpreter
    script = textwrap.dedent(
        """
        from dfudet.config import AnchorsConfig, DenseHeadConfig, ModelConfig, RcnnConfig
        from dfudet.errors import ConfigError
        from dfudet.models import build_detector
        for name in ("fasterrcnn_efficientnet", "fasterrcnn_mobilenet_v3_large_320_fpn"):
            try:
                build_detector(ModelConfig(name=name, backbone="efficientnet_b0", pretrained=True), 128)
            except ConfigError as exc:
                print("CONFIGERROR", exc)
            else:
                print("BUILT", name)
        """
    )
    with socket.socket() as s:  # a loopback port nobody listens on: a connection to it is refused at once
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("no_proxy", "hf_hub_cache", "huggingface_hub_cache", "hf_hub_offline")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), TORCH_HOME=str(tmp_path / "torch"),
               XDG_CACHE_HOME=str(tmp_path / "cache"), https_proxy=closed, HTTPS_PROXY=closed, http_proxy=closed,
               HTTP_PROXY=closed)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "BUILT" not in out
    assert "no ImageNet weights for model.backbone 'efficientnet_b0' could be found. Tried, in order:" in out
    # every source was asked, and the download was refused by the configuration, not by the network of the day
    assert "timm's cache (no file for its default tag)" in out
    assert "weight packages (none registered for efficientnet_b0" in out
    assert "timm's download (skipped: HF_HUB_OFFLINE is set)" in out
    assert (
        "the ImageNet weights for fasterrcnn_mobilenet_v3_large_320_fpn (torchvision MobileNet_V3_Large_Weights"
        ".IMAGENET1K_V1) could not be loaded (not in the local cache and no network)" in out
    )
    assert "Connection refused" in out  # the closed proxy answered, not a DNS failure or a missing route
    assert out.count("`model.pretrained=false`") == 2
