"""fcos_timm: the one-stage anchor-free detector (FCOS on a timm backbone) of the CPU recipe (random init, tiny).

Its train-and-predict check shares the registry-wide one in test_factory.py.
"""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import FCOS
from torchvision.ops import box_iou

from dfudet.config import DenseHeadConfig, FcosConfig, ModelConfig
from dfudet.errors import ConfigError
from dfudet.models import build_detector, get_spec
from dfudet.models.fcos import FCOS_STRIDES

IMG = 128


def _cfg(**kw: object) -> ModelConfig:
    base: dict[str, object] = dict(name="fcos_timm", backbone="resnet10t", pretrained=False, fpn_channels=32,
                                   dense_head=DenseHeadConfig(convs=1))
    return ModelConfig(**{**base, **kw})


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_fcos_is_registered_anchor_free_with_a_timm_backbone() -> None:
    assert get_spec("fcos_timm").anchor_free and get_spec("fcos_timm").timm_backbone
    assert not get_spec("fasterrcnn_efficientnet").anchor_free and get_spec("fasterrcnn_efficientnet").timm_backbone
    assert not get_spec("fasterrcnn_mobilenet_v3_large_fpn").timm_backbone
    assert get_spec("fcos_timm").feature_levels == len(FCOS_STRIDES) == 5


def test_fcos_honours_config_levels_and_head() -> None:
    model = build_detector(_cfg(box_score_thresh=0.03, box_nms_thresh=0.45, detections_per_img=9,
                                dense_head=DenseHeadConfig(convs=3, topk_candidates=50), fpn_channels=48), IMG)
    assert isinstance(model, FCOS)
    assert (model.score_thresh, model.nms_thresh, model.detections_per_img,
            model.topk_candidates) == (0.03, 0.45, 9, 50)
    assert model.transform.min_size == (IMG,) and model.transform.max_size == IMG
    cls_head = model.head.classification_head
    assert cls_head.cls_logits.out_channels == 1  # one sigmoid output for "ulcer": no background logit
    assert sum(isinstance(m, torch.nn.Conv2d) for m in cls_head.conv) == 3
    assert all(m.num_groups == 8 for m in cls_head.conv if isinstance(m, torch.nn.GroupNorm))  # gcd(32, 24)
    assert model.anchor_generator.sizes == tuple((s,) for s in FCOS_STRIDES)
    with torch.no_grad():
        feats = model.backbone(torch.rand(1, 3, IMG, IMG))
    assert list(feats) == ["0", "1", "2", "p6", "p7"]
    assert [tuple(f.shape[1:]) for f in feats.values()] == [(48, IMG // s, IMG // s) for s in FCOS_STRIDES]


def test_fcos_learns_a_box_on_one_image() -> None:
    """A few dozen Adam steps on one image: the top detection lands on the box (catches a wrong label shift,
    which would train the head on the wrong class or on none)."""
    model = build_detector(_cfg(), IMG)
    g = torch.Generator().manual_seed(1)
    image = torch.rand(3, IMG, IMG, generator=g) * 0.3
    image[:, 40:90, 30:70] = 0.9  # a bright rectangle where the box is
    gt = torch.tensor([[30.0, 40.0, 70.0, 90.0]])
    target = {"boxes": gt, "labels": torch.tensor([1])}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(40):
        loss = sum(model([image], [target]).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        det = model([image])[0]
    assert len(det["boxes"]) > 0 and int(det["labels"][0]) == 1
    assert float(box_iou(det["boxes"][:1], gt)[0, 0]) > 0.5
    assert float(det["scores"][0]) > 0.3


def test_an_odd_fpn_width_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="model.fpn_channels=33 must be even for fcos_timm"):
        build_detector(_cfg(fpn_channels=33), IMG)


def test_backbone_with_other_strides_is_a_config_error() -> None:
    """dla34's stages 2..4 are at strides 4, 8, 16: the FCOS level sizes 8..128 would all be off by 2x."""
    with pytest.raises(ConfigError,
                       match=r"'dla34' gives feature maps at strides \[4, 8, 16\].*needs strides \[8, 16, 32\]"):
        build_detector(_cfg(backbone="dla34"), IMG)


def _loss_inputs(balance: float) -> tuple[torch.nn.Module, list[torch.Tensor], dict[str, torch.Tensor]]:
    model = build_detector(_cfg(fcos=FcosConfig(instance_balance=balance)), IMG)
    model.train()
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(3, IMG, IMG, generator=g) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[20.0, 20.0, 31.0, 30.0], [50.0, 40.0, 100.0, 96.0]]),
                "labels": torch.tensor([1, 1])},
               {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)}]
    return model, images, targets


def test_instance_balance_zero_is_torchvisions_loss_and_one_changes_it() -> None:
    """The balanced path with every weight 1 (a box per location) gives torchvision's numbers; balance 1 does not."""
    model, images, targets = _loss_inputs(0.0)
    torch.manual_seed(0)
    plain = model(images, targets)
    model.head.balance = 1e-12  # the balanced code path, weights n ** -1e-12 = 1 up to rounding
    torch.manual_seed(0)
    same = model(images, targets)
    for k in plain:
        assert torch.allclose(plain[k], same[k], rtol=1e-5, atol=1e-6), k
    model.head.balance = 1.0
    balanced = model(images, targets)
    assert not torch.allclose(plain["bbox_regression"], balanced["bbox_regression"])
    assert sum(balanced.values()).requires_grad


def test_instance_weights_make_each_box_weigh_the_same() -> None:
    from dfudet.models.fcos import instance_weights

    idx = torch.tensor([-1, 0, 1, 1, 1, -1, 1, 1, 1, 1, 1, 1])  # box 0: 1 location, box 1: 9
    w = instance_weights([idx, torch.full((12,), -1)], 1.0)
    assert w.shape == (2, 12) and float(w[1].abs().sum()) == 0.0 and float(w[0, 0]) == 0.0
    assert torch.isclose(w[0][idx >= 0].mean(), torch.tensor(1.0))
    assert torch.isclose(w[0, 1], w[0][idx == 1].sum())  # one ulcer's total = the other's
    half = instance_weights([idx], 0.5)[0]
    assert torch.isclose(half[1] / half[2], torch.tensor(3.0))  # (1 / 9) ** -0.5
    assert torch.equal(instance_weights([idx], 0.0)[0][idx >= 0], torch.ones(10))


def test_instance_balance_is_a_share_between_0_and_1() -> None:
    with pytest.raises(ValueError, match="instance_balance"):
        FcosConfig(instance_balance=1.5)
