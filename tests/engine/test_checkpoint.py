import pickle
from pathlib import Path

import pytest
import torch

from dfudet.engine.checkpoint import (
    AtomicCheckpointIO, BEST_KEYS, atomic_torch_save, build_best_payload, check_compatible, load_for_inference,
    safe_torch_load,
)
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
    with pytest.raises(CheckpointError, match="evil.pth: not a readable checkpoint"):
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
    with pytest.raises(CheckpointError, match="backbone: checkpoint has 'efficientnet_b0', config asks for 'efficientnet_b5'"):
        check_compatible(ckpt, path, "fasterrcnn_efficientnet", "efficientnet_b5", 512, 2)
    atomic_torch_save({"weights": torch.ones(1)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a dfudet checkpoint"):
        load_for_inference(tmp_path / "other.pth")
