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
    config_digest,
    load_for_inference,
    safe_torch_load,
    save_model_checkpoint,
    state_digest,
)
from dfudet.config import config_to_dict, load_config
from dfudet.engine.checkpoint_io import AtomicCheckpointIO
from dfudet.errors import CheckpointError
from dfudet.identity import check_compatible
from dfudet.metrics.scores import ValidationScores
from dfudet.models.factory import model_identity


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


def test_best_payload_stores_the_whole_config_once_and_its_identity_at_the_top(tmp_path: Path):
    cfg = _config()
    payload = build_best_payload(epoch=3, model_state_dict={"w": torch.ones(2)}, optimizer_state_dict={},
                                 scores=_scores(), config=cfg, weights_source="file: w.pth (12 tensors)")
    assert payload["format"] == "dfudet-best-v3"
    assert payload["config"] == config_to_dict(cfg)  # the whole resolved config, nothing taken out
    # the identity fields DEVELOPERS.md asks for, derived from that config
    assert {k: payload[k] for k in ("model_name", "backbone", "img_size", "num_classes")} == {
        "model_name": "fasterrcnn_efficientnet", "backbone": "efficientnet_b0", "img_size": 512, "num_classes": 2}
    assert payload["config_sha256"] == config_digest(payload["config"])
    assert "score_threshold" not in payload and "f1_score" not in payload  # the v1 names
    path = tmp_path / "best_model.pth"
    atomic_torch_save(payload, path)
    ckpt = load_for_inference(path)
    assert ckpt.config == cfg and ckpt.identity == model_identity(cfg)
    assert ckpt.scores == _scores() and ckpt.operating_threshold == 0.42 and ckpt.epoch == 3
    assert ckpt.weights_source == "file: w.pth (12 tensors)"  # a run output, kept beside the config
    assert "weights_source" not in payload["config"]["model"]


def test_a_checkpoint_whose_top_level_identity_was_edited_is_refused(tmp_path: Path):
    path = tmp_path / "best_model.pth"
    payload = build_best_payload(epoch=3, model_state_dict={"w": torch.ones(2)}, optimizer_state_dict={},
                                 scores=_scores(), config=_config())
    assert payload["origin"] == "train"
    payload["img_size"], payload["backbone"] = 640, "efficientnet_b3"  # the config (and its digest) untouched
    atomic_torch_save(payload, path)
    with pytest.raises(CheckpointError, match=r"(?s)best_model.pth: the checkpoint's top-level model identity "
                                              r"disagrees with its config.*backbone: the top level has "
                                              r"'efficientnet_b3', the config has 'efficientnet_b0'.*img_size: the "
                                              r"top level has 640, the config has 512"):
        load_for_inference(path)
    payload["img_size"] = "512"  # a wrong type is named too
    payload["backbone"] = "efficientnet_b0"
    atomic_torch_save(payload, path)
    with pytest.raises(CheckpointError,
                       match="best_model.pth: the model identity field 'img_size' must be an integer, got '512'"):
        load_for_inference(path)
    save_model_checkpoint(tmp_path / "ext.pth", {"w": torch.ones(2)}, _config())
    ext = load_for_inference(tmp_path / "ext.pth")
    assert ext.origin == "external" and ext.weights_source is None


def test_a_torchvision_model_keeps_its_config_backbone(tmp_path: Path):
    cfg = load_config(None, ["model.name=fasterrcnn_mobilenet_v3_large_fpn", "model.backbone=efficientnet_b3"])
    path = tmp_path / "m.pth"
    payload = save_model_checkpoint(path, {"w": torch.ones(1)}, cfg)
    assert payload["backbone"] == "fasterrcnn_mobilenet_v3_large_fpn"  # the model's own name: another fact
    assert payload["config"]["model"]["backbone"] == "efficientnet_b3"
    ckpt = load_for_inference(path)
    assert ckpt.config == cfg and math.isnan(ckpt.scores.f1) and ckpt.scores.tp == -1  # unknown, not invented


def test_checkpoints_of_other_formats_are_refused_naming_the_file_and_format(tmp_path: Path):
    v3 = build_best_payload(epoch=4, model_state_dict={"w": torch.ones(2)}, optimizer_state_dict={},
                            scores=_scores(), config=_config())
    v2 = {**v3, "format": "dfudet-best-v2"}  # the unreleased v2 (its config without the identity fields)
    for key in ("name", "num_classes", "backbone"):
        del v2["config"]["model"][key]
    atomic_torch_save(v2, tmp_path / "v2.pth")
    with pytest.raises(CheckpointError, match=r"v2.pth: not a checkpoint this dfudet reads \(format "
                                              r"'dfudet-best-v2'\); it reads best_model.pth files of format "
                                              r"'dfudet-best-v3' and Lightning .ckpt files"):
        load_for_inference(tmp_path / "v2.pth")
    atomic_torch_save({"weights": torch.ones(1)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"other.pth: not a checkpoint this dfudet reads \(no 'format' key"):
        load_for_inference(tmp_path / "other.pth")


def test_compatibility_check_lists_every_differing_field(tmp_path: Path):
    path = tmp_path / "best_model.pth"
    save_model_checkpoint(path, {"w": torch.ones(1)}, _config())
    have = load_for_inference(path).identity
    check_compatible(have, model_identity(_config()), path)
    with pytest.raises(CheckpointError) as exc:
        check_compatible(have, model_identity(_config("model.backbone=efficientnet_b5", "model.num_classes=3",
                                                      "data.img_size=640")), path, only=("backbone", "num_classes"))
    assert str(exc.value) == (f"{path}: the model was trained for another model than the config asks for:\n"
                              "  backbone: the model has 'efficientnet_b0', the config has 'efficientnet_b5'\n"
                              "  num_classes: the model has 2, the config has 3")  # img_size was not asked for


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


def test_equal_content_saved_under_any_name_gives_equal_bytes(tmp_path: Path) -> None:
    """A shipped model's file digest must not depend on the temp file it was written through: torch names the
    archive's inner folder after the file it is given."""
    import hashlib

    from dfudet.checkpoint import atomic_torch_save

    payload = {"format": "x", "w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "n": 3}
    atomic_torch_save(payload, tmp_path / "a.pth")
    atomic_torch_save(payload, tmp_path / "sub" / "another name.pth")
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "a.pth", tmp_path / "sub" /
                                                                      "another name.pth")}
    assert len(digests) == 1
    assert torch.equal(torch.load(tmp_path / "a.pth", weights_only=True)["w"], payload["w"])
