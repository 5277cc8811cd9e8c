"""Validation loss must not change weights, BatchNorm buffers or dropout state, and must be repeatable."""

import logging

import pytest
import torch

from dfudet.config import load_config
from dfudet.engine.module import DetectorModule
from dfudet.models.passes import loss_mode, losses_and_detections, to_float_images


def _batch():
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 96, 96), dtype=torch.uint8, generator=g) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 40.0, 50.0]]), "labels": torch.tensor([1]), "image_id": torch.tensor(0)},
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64), "image_id": torch.tensor(1)},
    ]
    return images, targets


def _module(name: str, **extra: str) -> DetectorModule:
    overrides = [f"model.name={name}", "model.pretrained=false", "data.img_size=96", "model.backbone=efficientnet_b0"]
    return DetectorModule(load_config(None, overrides + [f"{k}={v}" for k, v in extra.items()]))


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


FRCNN_LOSSES = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
FCOS_LOSSES = {"classification", "bbox_regression", "bbox_ctrness"}


def test_val_pass_leaves_weights_and_bn_buffers_unchanged():
    for name, keys in (("fasterrcnn_mobilenet_v3_large_320_fpn", FRCNN_LOSSES),
                       ("fasterrcnn_efficientnet", FRCNN_LOSSES), ("fcos_timm", FCOS_LOSSES)):
        module = _module(name)
        module.eval()
        images, targets = _batch()
        before = _snapshot(module)
        with torch.inference_mode():
            losses1, dets = losses_and_detections(module.model, module.spec, to_float_images(images), targets, seed=5)
            losses2, _ = losses_and_detections(module.model, module.spec, to_float_images(images), targets, seed=5)
        after = _snapshot(module)
        changed = [k for k in before if not torch.equal(before[k], after[k])]
        assert changed == [], f"{name}: validation changed {changed[:5]}"
        assert set(losses1) == keys
        with torch.inference_mode(), torch.random.fork_rng():  # the losses are those of the model's own forward
            torch.manual_seed(5)
            loss_mode(module.model)
            direct = module.model(to_float_images(images),
                                  [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
            module.model.eval()
        assert {k: float(v) for k, v in direct.items()} == pytest.approx({k: float(v) for k, v in losses1.items()})
        assert all(torch.isfinite(v) for v in losses1.values())
        assert {k: float(v) for k, v in losses1.items()} == {k: float(v) for k, v in losses2.items()}  # repeatable
        assert len(dets) == 2 and all(d["boxes"].shape[1] == 4 for d in dets)
        assert not module.model.training  # mode restored
        with torch.inference_mode():  # the one-pass detections are exactly the eval-mode forward's
            plain = module.model(to_float_images(images))
        for d, p in zip(dets, plain):
            assert torch.equal(d["boxes"], p["boxes"]) and torch.equal(d["scores"], p["scores"])
            assert torch.equal(d["labels"], p["labels"])


def test_the_naive_way_would_change_bn_buffers():
    """Guard for the test above: plain train-mode forward under no_grad does update BatchNorm running stats."""
    module = _module("fasterrcnn_mobilenet_v3_large_320_fpn")
    images, targets = _batch()
    before = _snapshot(module)
    module.model.train()
    with torch.no_grad():
        module.model(to_float_images(images), [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
    after = _snapshot(module)
    assert any("running_mean" in k and not torch.equal(before[k], after[k]) for k in before)


def test_training_step_returns_finite_loss_and_updates_weights():
    module = _module("fasterrcnn_mobilenet_v3_large_320_fpn")
    module.train()
    images, targets = _batch()
    opt = torch.optim.SGD(module.parameters(), lr=0.01)
    before = _snapshot(module)
    losses = module.model(to_float_images(images), [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
    loss = sum(losses.values())
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(before[k], v) for k, v in module.state_dict().items() if "weight" in k)


def test_a_non_finite_batch_loss_is_counted_not_averaged_in():
    module = _module("fasterrcnn_mobilenet_v3_large_320_fpn")
    module._accumulate("val", torch.tensor(0.5), 2)
    module._accumulate("val", torch.tensor(float("nan")), 2)
    module._accumulate("val", torch.tensor(1.5), 2)
    assert module.epoch_loss("val") == 1.0
    assert module._nonfinite["val"] == 1


def test_validation_metrics_report_coco_ap50_and_apply_the_recall_floor():
    import numpy as np

    from dfudet.metrics.coco import coco_map

    module = _module("fasterrcnn_mobilenet_v3_large_320_fpn", **{"train.select_at": "operating",
                                                                 "train.operating_min_recall": 0.5})
    gt = np.array([[10.0, 10.0, 50.0, 50.0]])
    fps = np.array([[100.0, 100, 140, 140], [150, 150, 190, 190], [200, 10, 240, 50]])
    preds = [(0, gt.copy(), np.array([0.95]), gt)]
    preds += [(i, np.vstack([[[10.0, 10, 50, 34]], fps]), np.full(4, 0.3), gt) for i in range(1, 10)]
    v = module.validation_metrics(preds)
    ref = coco_map([(b, s) for _, b, s, _ in preds], [g for *_, g in preds])
    assert v.ap50 == pytest.approx(ref["AP50"]) and 0 < v.ap50 < 1
    assert v.ap50_95 == pytest.approx(ref["AP50_95"])
    assert v.recall >= 0.5 and v.operating_threshold <= 0.3
    assert v.selection_threshold == v.operating_threshold and v.composite == v.composite_at_operating


def test_the_pretrained_weights_source_is_a_run_output_in_every_checkpoint(tmp_path, caplog):
    """Not a config key: the module records it, best_model.pth and last.ckpt carry it, a resume keeps the first."""
    import timm

    from dfudet.checkpoint import atomic_torch_save, load_for_inference
    from dfudet.engine.callbacks import best_payload
    from dfudet.metrics.scores import ValidationScores

    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), tmp_path / "w.pth")
    cfg = load_config(None, ["model.name=fcos_timm", "model.backbone=resnet10t", "model.fpn_channels=32",
                             "model.dense_head.convs=1", "data.img_size=96", f"model.weights={tmp_path / 'w.pth'}"])
    module = DetectorModule(cfg)
    assert module.weights_source.startswith(f"file: {tmp_path / 'w.pth'} (")
    assert module.hparams["config"] == cfg.model_dump(mode="json") and module.cfg is cfg  # typed in, plain dict out
    atomic_torch_save(best_payload(module, ValidationScores.unknown(0.5, 0.5), 0, {}), tmp_path / "best.pth")
    assert load_for_inference(tmp_path / "best.pth").weights_source == module.weights_source
    last = {"state_dict": {f"model.{k}": v for k, v in module.model.state_dict().items()}}
    module.on_save_checkpoint(last)
    assert last["dfudet"]["weights_source"] == module.weights_source
    resumed = DetectorModule(cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained": False,
                                                                                           "weights": None})}))
    assert resumed.weights_source is None
    resumed.on_load_checkpoint(last)
    assert resumed.weights_source == module.weights_source
    # a pretrained run resumed by a process whose own build found other weights logs the run's source, not its own
    last["dfudet"]["weights_source"] = "file: first.pth (12 tensors, mapped by name)"
    with caplog.at_level(logging.INFO, logger="dfudet"):
        DetectorModule(cfg).on_load_checkpoint(last)
    assert "pretrained weights (as the run began): file: first.pth (12 tensors, mapped by name)" in caplog.text
