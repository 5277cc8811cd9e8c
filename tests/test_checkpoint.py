import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dfudet.checkpoint import (
    atomic_torch_save,
    build_best_payload,
    check_compatible,
    config_digest,
    load_for_inference,
    safe_torch_load,
    save_model_checkpoint,
    state_digest,
)
from dfudet.config import config_to_dict, load_config
from dfudet.engine.checkpoint_io import AtomicCheckpointIO
from dfudet.errors import CheckpointError
from dfudet.metrics.scores import ValidationScores


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("boom while pickling")


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path: Path):
    path = tmp_path / "best_model.pth"
    atomic_torch_save({"a": torch.ones(3)}, path)
    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"a": torch.zeros(3), "bad": _Unpicklable()}, path)
    assert torch.equal(safe_torch_load(path)["a"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model.pth"]  # no temp files left


def test_lightning_io_is_atomic_and_safe(tmp_path: Path):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.arange(4)}, "epoch": 3}, tmp_path / "last.ckpt")
    assert io.load_checkpoint(tmp_path / "last.ckpt")["epoch"] == 3


def test_untrusted_pickle_is_refused(tmp_path: Path):
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as fh:
        pickle.dump({"x": Path("/etc/passwd")}, fh)  # arbitrary class: weights_only must refuse it
    with pytest.raises(CheckpointError, match="evil.pth: not a dfudet checkpoint, or a damaged one: "
                                              "it holds objects a safe load refuses"):
        safe_torch_load(evil)


def test_missing_and_corrupt_files(tmp_path: Path):
    with pytest.raises(CheckpointError, match="does not exist"):
        safe_torch_load(tmp_path / "nope.pth")
    bad = tmp_path / "trunc.pth"
    atomic_torch_save({"w": torch.ones(100)}, bad)
    bad.write_bytes(bad.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="trunc.pth"):
        safe_torch_load(bad)


def _config(*over: str):
    return load_config(None, ["model.backbone=efficientnet_b0", *over])


def _scores(**over):
    fields = dict(train_loss=1.0, val_loss=0.9, precision=0.8, recall=0.7, f1=0.75, mean_iou=0.6, composite=0.7,
                  tp=7, fp=2, fn=3, selection_threshold=0.5, operating_threshold=0.42, composite_at_operating=0.71,
                  ap50=0.66, ap50_95=0.3, lr=1e-4)
    fields.update(over)
    return ValidationScores(**fields)


def test_best_payload_stores_each_field_once_and_loads_typed(tmp_path: Path):
    cfg = _config()
    payload = build_best_payload(epoch=3, model_state_dict={"w": torch.ones(2)}, optimizer_state_dict={},
                                 scores=_scores(), config=cfg)
    assert payload["format"] == "dfudet-best-v2"
    # identity fields at the top level only (the spec's checkpoint fields), never a second copy in the config
    assert (payload["model_name"], payload["backbone"], payload["img_size"], payload["num_classes"]) == (
        "fasterrcnn_efficientnet", "efficientnet_b0", 512, 2)
    assert {"name", "backbone", "num_classes"}.isdisjoint(payload["config"]["model"])
    assert "img_size" not in payload["config"]["data"]
    assert "score_threshold" not in payload and "f1_score" not in payload  # the v1 names
    path = tmp_path / "best_model.pth"
    atomic_torch_save(payload, path)
    ckpt = load_for_inference(path)
    assert ckpt.config == cfg  # the whole typed config comes back, identity fields included
    assert ckpt.scores == _scores() and ckpt.operating_threshold == 0.42 and ckpt.epoch == 3
    assert (ckpt.model_name, ckpt.backbone, ckpt.img_size) == ("fasterrcnn_efficientnet", "efficientnet_b0", 512)


def test_the_digest_covers_the_top_level_identity_fields_and_origin_is_recorded(tmp_path: Path):
    path = tmp_path / "best_model.pth"
    payload = build_best_payload(epoch=3, model_state_dict={"w": torch.ones(2)}, optimizer_state_dict={},
                                 scores=_scores(), config=_config())
    assert payload["origin"] == "train"
    payload["img_size"] = 640  # stored once, at the top level: an edit must not load silently
    atomic_torch_save(payload, path)
    with pytest.raises(CheckpointError, match="best_model.pth: the checkpoint is damaged: its config .or model_name"):
        load_for_inference(path)
    save_model_checkpoint(tmp_path / "ext.pth", {"w": torch.ones(2)}, _config())
    ext = load_for_inference(tmp_path / "ext.pth")
    assert ext.origin == "external"


def test_a_torchvision_model_keeps_its_config_backbone(tmp_path: Path):
    cfg = load_config(None, ["model.name=fasterrcnn_mobilenet_v3_large_fpn", "model.backbone=efficientnet_b3"])
    path = tmp_path / "m.pth"
    payload = save_model_checkpoint(path, {"w": torch.ones(1)}, cfg)
    assert payload["backbone"] == "fasterrcnn_mobilenet_v3_large_fpn"  # the model's own name: another fact
    assert payload["config"]["model"]["backbone"] == "efficientnet_b3"
    ckpt = load_for_inference(path)
    assert ckpt.config == cfg and math.isnan(ckpt.scores.f1) and ckpt.scores.tp == -1  # unknown, not invented


def _v1_payload(cfg_dict, **over):
    """A best_model.pth as dfudet wrote it before the v2 schema (names and duplicated fields of that version)."""
    state = {"w": torch.ones(2)}
    payload = {"format": "dfudet-best-v1", "dfudet_version": "0.9", "epoch": 4, "model_state_dict": state,
               "optimizer_state_dict": {}, "train_loss": 1.0, "val_loss": 0.8, "f1_score": 0.61, "mean_iou": 0.5,
               "precision": 0.7, "recall": 0.55, "composite_score": 0.59, "backbone": "efficientnet_b0",
               "model_name": "fasterrcnn_efficientnet", "img_size": 512, "num_classes": 2, "score_threshold": 0.5,
               "operating_threshold": 0.37, "config": cfg_dict, "weights_sha256": state_digest(state)}
    payload.update(over)
    payload["config_sha256"] = config_digest(payload["config"])
    return payload


def test_old_v1_checkpoints_still_load(tmp_path: Path):
    cfg_dict = config_to_dict(_config())
    atomic_torch_save(_v1_payload(cfg_dict), tmp_path / "v1.pth")
    ckpt = load_for_inference(tmp_path / "v1.pth")
    assert ckpt.format == "dfudet-best-v1"
    assert ckpt.config.train.selection_threshold == 0.5 and ckpt.operating_threshold == 0.37
    s = ckpt.scores
    assert (s.f1, s.composite, s.selection_threshold, s.precision) == (0.61, 0.59, 0.5, 0.7)
    assert math.isnan(s.ap50)  # not recorded by v1
    # v1 stored the identity fields twice; two different values mean the file was edited
    atomic_torch_save(_v1_payload(cfg_dict, img_size=640), tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"odd.pth: the checkpoint's \['img_size'\] differ from its config's"):
        load_for_inference(tmp_path / "odd.pth")


def test_compatibility_is_checked(tmp_path: Path):
    path = tmp_path / "best_model.pth"
    save_model_checkpoint(path, {"w": torch.ones(1)}, _config())
    ckpt = load_for_inference(path)
    have = {"model_name": ckpt.model_name, "backbone": ckpt.backbone, "img_size": ckpt.img_size,
            "num_classes": ckpt.num_classes}
    check_compatible(have, path, "fasterrcnn_efficientnet", "efficientnet_b0", 512, 2)
    with pytest.raises(CheckpointError,
                       match="backbone: checkpoint has 'efficientnet_b0', config asks for 'efficientnet_b5'"):
        check_compatible(have, path, "fasterrcnn_efficientnet", "efficientnet_b5", 512, 2)
    atomic_torch_save({"weights": torch.ones(1)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a dfudet checkpoint"):
        load_for_inference(tmp_path / "other.pth")


def test_load_errors_keep_the_reason_and_never_advise_an_unsafe_load(tmp_path: Path):
    text = tmp_path / "README.md"
    text.write_text("# dfudet\nnot a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"README.md: not a dfudet checkpoint, or a damaged one: not a PyTorch "
                                              r"file at all") as exc:
        safe_torch_load(text)
    assert "weights_only" not in str(exc.value)

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": Evil()}, evil)
    with pytest.raises(CheckpointError) as exc:
        safe_torch_load(evil)
    msg = str(exc.value)
    assert "posix.system" in msg or "os.system" in msg or "system" in msg  # the real reason is kept
    assert "weights_only" not in msg and "will likely succeed" not in msg


def _small_payload():
    torch.manual_seed(0)
    state = {"w": torch.randn(4096), "b": torch.randn(16), "n": torch.tensor(3)}
    return build_best_payload(epoch=2, model_state_dict=state, optimizer_state_dict={}, scores=_scores(),
                              config=_config("model.name=fcos_timm", "model.backbone=resnet10t"))


def test_damage_inside_the_weights_is_caught_by_the_digest(tmp_path: Path):
    path = tmp_path / "best_model.pth"
    payload = _small_payload()
    atomic_torch_save(payload, path)
    assert load_for_inference(path).epoch == 2
    raw = bytearray(path.read_bytes())
    start = bytes(raw).find(payload["model_state_dict"]["w"][:8].numpy().tobytes())
    assert start > 0, "tensor bytes not found in the file"
    raw[start + 1000:start + 5096] = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(raw))
    assert torch.load(path, weights_only=True)["epoch"] == 2  # torch itself does not notice
    with pytest.raises(CheckpointError, match=r"best_model.pth: the checkpoint is damaged: its weights do not match"):
        load_for_inference(path)


def test_non_finite_weights_and_a_changed_config_are_refused_and_old_files_still_load(tmp_path: Path, caplog):
    bad = _small_payload()
    bad["model_state_dict"]["b"][3] = float("nan")
    bad["weights_sha256"] = state_digest(bad["model_state_dict"])
    atomic_torch_save(bad, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match=r"nan.pth: the checkpoint holds non-finite weights \(NaN or inf in b\)"):
        load_for_inference(tmp_path / "nan.pth")
    changed = _small_payload()
    changed["config"]["train"]["lr"] = 0.5
    atomic_torch_save(changed, tmp_path / "cfg.pth")
    with pytest.raises(CheckpointError, match="cfg.pth: the checkpoint is damaged: its config"):
        load_for_inference(tmp_path / "cfg.pth")
    old = _small_payload()
    del old["weights_sha256"], old["config_sha256"]
    atomic_torch_save(old, tmp_path / "old.pth")
    with caplog.at_level("INFO", logger="dfudet"):
        assert load_for_inference(tmp_path / "old.pth").epoch == 2
    assert "without an integrity check" in caplog.text


def test_a_damaged_last_ckpt_is_refused_on_resume(tmp_path: Path):
    state = {"model.w": torch.randn(4096)}
    io_ = AtomicCheckpointIO()
    io_.save_checkpoint({"state_dict": state, "dfudet": {"weights_sha256": state_digest(state)}},
                        tmp_path / "last.ckpt")
    assert io_.load_checkpoint(tmp_path / "last.ckpt")["dfudet"]["weights_sha256"]
    raw = bytearray((tmp_path / "last.ckpt").read_bytes())
    start = bytes(raw).find(state["model.w"][:8].numpy().tobytes())
    raw[start + 64:start + 4160] = bytes(4096)
    (tmp_path / "last.ckpt").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="last.ckpt: the checkpoint is damaged"):
        io_.load_checkpoint(tmp_path / "last.ckpt")
