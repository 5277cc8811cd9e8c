import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dfudet.checkpoint import (
    BEST_KEYS,
    atomic_torch_save,
    build_best_payload,
    check_compatible,
    load_for_inference,
    safe_torch_load,
    state_digest,
)
from dfudet.engine.checkpoint_io import AtomicCheckpointIO
from dfudet.errors import CheckpointError


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


def _payload(**over):
    fields = {k: 0 for k in BEST_KEYS}
    fields.update(model_state_dict={}, optimizer_state_dict={}, config={}, backbone="efficientnet_b0",
                  model_name="fasterrcnn_efficientnet", img_size=512, num_classes=2)
    fields.update(over)
    return build_best_payload(**fields)


def test_schema_is_enforced_and_compatibility_checked(tmp_path: Path):
    with pytest.raises(ValueError, match="misses"):
        build_best_payload(epoch=1)
    path = tmp_path / "best_model.pth"
    atomic_torch_save(_payload(), path)
    ckpt = load_for_inference(path)
    check_compatible(ckpt, path, "fasterrcnn_efficientnet", "efficientnet_b0", 512, 2)
    with pytest.raises(CheckpointError,
                       match="backbone: checkpoint has 'efficientnet_b0', config asks for 'efficientnet_b5'"):
        check_compatible(ckpt, path, "fasterrcnn_efficientnet", "efficientnet_b5", 512, 2)
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


def _small_payload(**over):
    torch.manual_seed(0)
    state = {"w": torch.randn(4096), "b": torch.randn(16), "n": torch.tensor(3)}
    fields = dict(epoch=2, model_state_dict=state, optimizer_state_dict={}, train_loss=1.0, val_loss=1.0,
                  f1_score=0.5, mean_iou=0.5, precision=0.5, recall=0.5, composite_score=0.5, backbone="x",
                  model_name="fcos_timm", img_size=128, num_classes=2, score_threshold=0.5,
                  operating_threshold=0.5, config={"model": {"name": "fcos_timm"}})
    fields.update(over)
    return build_best_payload(**fields)


def test_damage_inside_the_weights_is_caught_by_the_digest(tmp_path: Path):
    path = tmp_path / "best_model.pth"
    payload = _small_payload()
    atomic_torch_save(payload, path)
    assert load_for_inference(path)["weights_sha256"] == payload["weights_sha256"]
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
    changed["config"] = {"model": {"name": "other"}}
    atomic_torch_save(changed, tmp_path / "cfg.pth")
    with pytest.raises(CheckpointError, match="cfg.pth: the checkpoint is damaged: its config"):
        load_for_inference(tmp_path / "cfg.pth")
    old = _small_payload()
    del old["weights_sha256"], old["config_sha256"]
    atomic_torch_save(old, tmp_path / "old.pth")
    with caplog.at_level("INFO", logger="dfudet"):
        assert load_for_inference(tmp_path / "old.pth")["epoch"] == 2
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
