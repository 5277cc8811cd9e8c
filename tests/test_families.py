"""The same checks for every registered detector family (parametrised over the registry, so a new family is tested
by registering it): build, train step, the one-pass val step, checkpoint -> Predictor (with TTA), resume, ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from _checkpoints import train_demo_checkpoint
from dfudet.checkpoint import safe_torch_load, save_model_checkpoint
from dfudet.config import Config, load_config
from dfudet.data.demo import render_sample
from dfudet.errors import ConfigError
from dfudet.inference.predictor import Predictor
from dfudet.models.factory import available_models, build_detector, get_spec
from dfudet.models.passes import loss_mode, losses_and_detections, model_targets

IMG = 96
MODELS = available_models()


def tiny_overrides(name: str) -> list[str]:
    """The smallest configuration of a registered model, chosen from its spec (not from its name)."""
    spec = get_spec(name)
    out = [f"model.name={name}", "model.pretrained=false", f"data.img_size={IMG}", "model.box_score_thresh=0.0",
           "model.detections_per_img=20"]
    if spec.timm_backbone:
        out += ["model.backbone=resnet10t", "model.fpn_channels=32"]
    if "rcnn" in spec.sections:
        out += ["model.rcnn.rpn_batch_size_per_image=32", "model.rcnn.box_batch_size_per_image=32"]
    if "dense_head" in spec.sections:
        out += ["model.dense_head.convs=1"]
    if "mask_head" in spec.sections:
        out += ["model.mask_head.channels=16", "model.mask_head.convs=1"]
    return out


def _cfg(name: str, *extra: str) -> Config:
    return load_config(None, [*tiny_overrides(name), *extra])


def _batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, IMG, IMG, generator=g) for _ in range(2)]
    masks = torch.zeros((2, IMG, IMG), dtype=torch.uint8)  # each box's wound mask (outline models train on them)
    masks[0, 25:65, 15:45] = 1
    masks[1, 8:28, 62:88] = 1
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 50.0, 70.0], [60.0, 5.0, 90.0, 30.0]]), "labels": torch.tensor([1, 1]),
         "masks": masks},
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)},  # healthy image
    ]
    return images, targets


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_detector(_cfg(name).model, IMG)  # as training and inference build it (channels-last input)


@pytest.mark.parametrize("name", MODELS)
def test_train_step_and_detections(name: str):
    model = _model(name)
    images, targets = _batch()
    model.train()
    losses = model(images, model_targets(get_spec(name), images, targets))
    assert losses and all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(g is not None for g in grads) > 0.9 * len(grads)
    model.eval()
    with torch.no_grad():
        out = model(images)
    for det in out:
        assert det["boxes"].shape[1:] == (4,) and len(det["scores"]) == len(det["labels"]) == len(det["boxes"])
        assert (det["labels"] == 1).all()  # dfudet labels (1 = ulcer) for every family
        assert ((det["boxes"] >= 0) & (det["boxes"] <= IMG)).all()
    spec = get_spec(name)
    assert 0.0 <= spec.min_score(model) <= 1.0 and spec.max_detections(model) == 20


@pytest.mark.parametrize("name", MODELS)
def test_one_pass_val_step_equals_the_models_own_passes(name: str):
    """spec.heads_pass gives the losses of the train-mode forward and the detections of the eval forward."""
    model = _model(name)
    spec = get_spec(name)
    images, targets = _batch()
    losses, detections = losses_and_detections(model, spec, images, targets, seed=3)
    again, _ = losses_and_detections(model, spec, images, targets, seed=3)
    assert all(torch.equal(losses[k], again[k]) for k in losses)  # repeatable (random samplers under a fixed seed)
    loss_mode(model)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(3)
        direct = model(images, model_targets(spec, images, targets))
    assert set(direct) == set(losses)
    for k in losses:
        torch.testing.assert_close(losses[k], direct[k])
    model.eval()
    with torch.no_grad():
        plain = model(images)
    for a, b in zip(detections, plain):
        torch.testing.assert_close(a["boxes"], b["boxes"])
        torch.testing.assert_close(a["scores"], b["scores"])


def _checkpoint(name: str, path: Path) -> Path:
    cfg = _cfg(name)
    model = _model(name)
    save_model_checkpoint(path, model.state_dict(), cfg, epoch=0)
    return path


@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_to_predictor_with_and_without_tta(name: str, tmp_path: Path):
    ckpt = _checkpoint(name, tmp_path / "best_model.pth")
    photo = (np.random.default_rng(0).random((150, 200, 3)) * 255).astype(np.uint8)
    pred = Predictor.from_checkpoint(ckpt)
    assert pred.spec is get_spec(name)
    res = pred.predict_arrays([photo])[0]
    assert (res.width, res.height) == (200, 150) and len(res.boxes) > 0
    assert (res.boxes[:, [0, 2]] <= 200).all() and (res.boxes[:, [1, 3]] <= 150).all()
    assert (res.masks is not None) == get_spec(name).masks
    if get_spec(name).masks:  # TTA fuses boxes, not outlines
        with pytest.raises(ConfigError, match="fuses boxes only, not outlines"):
            Predictor.from_checkpoint(ckpt, tta=True)
        return
    tta = Predictor.from_checkpoint(ckpt, tta=True).predict_arrays([photo])[0]
    assert len(tta.boxes) > 0 and (tta.scores <= 1).all()


# ResNet-50 FPN v2 comes from the same torchvision-constructor builder as the two MobileNet models and trains through
# the same loop; its own train step, val pass, checkpoint -> predictor and ONNX export are checked by the other tests
# here. Training and resuming it took 31 of the suite's seconds.
RESUME_MODELS = [m for m in MODELS if m != "fasterrcnn_resnet50_fpn_v2"]


@pytest.mark.slow
@pytest.mark.parametrize("name", RESUME_MODELS)
def test_train_and_resume(name: str, tiny_cache: Path, tmp_path: Path):
    from dfudet.engine.runner import run_training

    run = tmp_path / "run"
    extra = [f"data.cache={tiny_cache}", f"run_dir={run}", "data.batch_size=2", "train.accelerator=cpu",
             "train.limit_train_batches=2", "train.limit_val_batches=2", "train.threads=1"]
    run_training(_cfg(name, *extra, "train.epochs=1"))
    assert safe_torch_load(run / "last.ckpt")["epoch"] == 0
    result = run_training(_cfg(name, *extra, "train.epochs=2"))  # resumes from last.ckpt
    assert safe_torch_load(run / "last.ckpt")["epoch"] == 1 and result["epochs_run"] == 2
    pred = Predictor.from_checkpoint(run / "best_model.pth")
    assert pred.spec.name == name


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_onnx_export_matches_pytorch(name: str, tmp_path: Path):
    from dfudet.export.onnx import export_onnx
    from dfudet.inference.onnx_predictor import OnnxPredictor

    rng = np.random.default_rng(1)
    if name.startswith("fasterrcnn_mobilenet"):
        # random-init MobileNet heads tie their scores (0.50), which makes box order and the NMS survivors arbitrary:
        # these two are compared on a briefly trained checkpoint (distinct scores) and on demo photos
        ckpt = train_demo_checkpoint(tmp_path / "best_model.pth", img_size=IMG, steps=3, threshold=0.05,
                                     overrides=(f"model.name={name}",))
        photos = [render_sample(5, i, size, healthy=False).image for i, size in enumerate((96, 120))]
    else:
        ckpt = _checkpoint(name, tmp_path / "best_model.pth")
        photos = [(rng.random(shape) * 255).astype(np.uint8) for shape in ((96, 96, 3), (120, 80, 3))]
    export_onnx(ckpt, tmp_path / "model.onnx")
    torch_pred, onnx_pred = Predictor.from_checkpoint(ckpt), OnnxPredictor(tmp_path / "model.onnx")
    for photo in photos:
        a, b = torch_pred.predict_arrays([photo])[0], onnx_pred.predict_arrays([photo])[0]
        assert len(a.boxes) == len(b.boxes) > 0
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1.0)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-3)
    assert onnx_pred.min_score == torch_pred.min_score


@pytest.mark.parametrize("name", MODELS)
def test_channels_last_changes_the_layout_not_the_results(name: str):
    """model.channels_last feeds the backbone NHWC tensors; features and losses match NCHW, weights untouched."""
    spec = get_spec(name)
    torch.manual_seed(0)
    nhwc = build_detector(_cfg(name).model, IMG)
    nchw = build_detector(_cfg(name, "model.channels_last=false").model, IMG)
    nchw.load_state_dict(nhwc.state_dict())
    layouts: dict[str, list[bool]] = {"nhwc": [], "nchw": []}
    for key, model in (("nhwc", nhwc), ("nchw", nchw)):  # the finest feature map of every backbone pass
        model.backbone.register_forward_hook(
            lambda mod, args, out, key=key: layouts[key].append(_channels_last(next(iter(out.values())))))
    images, targets = _batch()
    batch = torch.stack(images)
    results = {}
    for key, model in (("nhwc", nhwc), ("nchw", nchw)):
        with torch.random.fork_rng():
            model.eval()
            with torch.no_grad():
                features = model.backbone(batch)
            torch.manual_seed(3)
            loss_mode(model)
            losses = model(images, model_targets(spec, images, targets))  # train-mode forward, with autograd
            sum(losses.values()).backward()
            results[key] = (features, losses)
    assert layouts == {"nhwc": [True, True], "nchw": [False, False]}  # eval and train passes
    for k, level in results["nchw"][0].items():  # random-init ResNet-50 features reach ~1e2: tolerance to scale
        scale = max(1.0, float(level.abs().max()))
        torch.testing.assert_close(results["nhwc"][0][k], level, rtol=1e-4, atol=1e-4 * scale)
    for k, loss in results["nchw"][1].items():  # through sampling and NMS: a little looser
        torch.testing.assert_close(results["nhwc"][1][k].detach(), loss.detach(), rtol=1e-3, atol=1e-3)
    # gradients and weights keep the usual layout, so optimizer state and checkpoints do not depend on it
    assert all(p.grad is None or p.grad.is_contiguous() for p in nhwc.parameters())
    assert all(t.is_contiguous() for t in nhwc.state_dict().values())


def _channels_last(x: torch.Tensor) -> bool:
    """NHWC and not NCHW (a map with H = W = 1 would be both at once: the finest one never is here)."""
    assert x.shape[-1] > 1 and x.shape[-2] > 1
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def test_training_and_inference_build_with_the_configured_layout(tmp_path: Path):
    """The Lightning module and a Predictor from its checkpoint both feed the backbone in the configured layout."""
    from dfudet.engine.module import DetectorModule

    batch = torch.stack(_batch()[0])
    for channels_last in (True, False):
        cfg = _cfg("fcos_timm", f"model.channels_last={str(channels_last).lower()}")
        module = DetectorModule(cfg).eval()
        ckpt = tmp_path / f"{channels_last}.pth"
        save_model_checkpoint(ckpt, module.model.state_dict(), cfg, epoch=0)
        predictor = Predictor.from_checkpoint(ckpt)
        with torch.no_grad():
            for model in (module.model, predictor.model):
                assert _channels_last(next(iter(model.backbone(batch).values()))) == channels_last
