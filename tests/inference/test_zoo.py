"""Shipped models: the index, the digest check, `dfudet models`, the default-model path of predict, float16 storage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from dfudet.checkpoint import load_for_inference, safe_torch_load, state_digest
from dfudet.cli import main
from dfudet.data.demo import render_sample
from dfudet.errors import CheckpointError, ConfigError
from dfudet.export.slim import BOX_HEAD_FC, export_slim, mask_head_convs
from dfudet.inference import zoo
from dfudet.inference.loader import load_backend


@pytest.fixture(scope="module")
def outline_ckpt(mask_checkpoint: Path) -> Path:
    """A few-step Mask R-CNN (tiny resnet10t) checkpoint: boxes, outlines and areas (the session's)."""
    return mask_checkpoint


def _index(folder: Path, ckpt: Path, names: tuple[str, ...] = ("tiny-outlines",)) -> Path:
    """An index.json beside a float16 slim copy of `ckpt` for each name (the first is the default)."""
    entries = []
    for i, name in enumerate(names):
        file = folder / f"{name}.pth"
        export_slim(ckpt, file, half=True)
        entries.append({"name": name, "file": file.name, "sha256": zoo.file_sha256(file),
                        "returns": "boxes, outlines, areas", "architecture": "Mask R-CNN + resnet10t (test)",
                        "training_data": "3 demo images", "licence": "test only", "summary": "a test model",
                        "figures": {"test AP50": "n/a"}, "default": i == 0})
    index = folder / "index.json"
    index.write_text(json.dumps({"models": entries}))
    return index


def test_float16_storage_halves_the_file_and_predicts_like_float32(outline_ckpt: Path, tmp_path: Path) -> None:
    full, half = tmp_path / "full.pth", tmp_path / "half.pth"
    export_slim(outline_ckpt, full)
    info = export_slim(outline_ckpt, half, half=True)
    assert info["storage_dtype"] == "float16"
    stored = load_for_inference(half).model_state_dict
    floats = [t for t in stored.values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float16 for t in floats)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    images = [render_sample(7, i, 128, healthy=False).image for i in range(2)]
    a = load_backend(checkpoint=full).predict_arrays(images)
    b = load_backend(checkpoint=half).predict_arrays(images)
    for da, db in zip(a, b):
        top = min(5, len(da.scores), len(db.scores))
        assert top > 0
        # float32's top boxes paired one to one with float16's by their largest coordinate difference, as the ONNX
        # parity tests do: two boxes of nearly equal score may swap places in the ranking
        cost = np.abs(da.boxes[:top, None] - db.boxes[None]).max(-1)
        rows, cols = linear_sum_assignment(cost)
        assert len(rows) == top and cost[rows, cols].max() <= 2.0
        assert np.abs(da.scores[:top][rows] - db.scores[cols]).max() <= 2e-2


def test_resolve_checks_the_file_digest(outline_ckpt: Path, tmp_path: Path) -> None:
    index = _index(tmp_path, outline_ckpt, ("tiny-outlines", "other"))
    model, path = zoo.resolve(None, index)
    assert model.name == "tiny-outlines" and model.default and path == tmp_path / "tiny-outlines.pth"
    assert zoo.resolve("other", index)[0].name == "other"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of the weights
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"tiny-outlines.pth: the shipped model 'tiny-outlines' is damaged: "
                                              r"SHA-256 [0-9a-f]{16}\.\.\. instead of"):
        zoo.resolve(None, index)
    path.unlink()
    with pytest.raises(CheckpointError, match="tiny-outlines.pth: the shipped model 'tiny-outlines' is missing"):
        zoo.resolve(None, index)


def test_unknown_name_lists_the_known_ones(outline_ckpt: Path, tmp_path: Path) -> None:
    index = _index(tmp_path, outline_ckpt, ("tiny-outlines", "other"))
    with pytest.raises(ConfigError, match=r"unknown shipped model 'nope'; known: tiny-outlines, other"):
        zoo.get("nope", index)
    with pytest.raises(ConfigError, match="lists none"):
        zoo.get(None, tmp_path / "no-index.json")


def test_predict_without_checkpoint_uses_the_default_shipped_model(
        outline_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "zoo").mkdir()
    index = _index(tmp_path / "zoo", outline_ckpt)
    monkeypatch.setenv(zoo.INDEX_ENV, str(index))
    photo = tmp_path / "foot.png"
    from PIL import Image

    Image.fromarray(render_sample(3, 0, 128, healthy=False).image).save(photo)
    assert main(["predict", str(photo), "--runtime", "torch", "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "using the shipped model tiny-outlines" in err
    pred = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert pred["checkpoint"].endswith("tiny-outlines.pth") and pred["onnx"] is None
    image = pred["images"][0]
    assert image["outlines"] is True and len(image["detections"]) == len(image["boxes"]) > 0
    assert all(d["area_px"] > 0 and d["outline"] for d in image["detections"])
    # --model picks by name; an unknown one is a clear error (exit 2), not a traceback
    assert main(["predict", str(photo), "--model", "nope", "--out", str(tmp_path / "o2")]) == 2
    assert "unknown shipped model 'nope'; known: tiny-outlines" in capsys.readouterr().err
    # a damaged shipped file stops predict with the one-line digest error
    file = index.parent / "tiny-outlines.pth"
    file.write_bytes(file.read_bytes()[:-10] + b"0123456789")
    assert main(["predict", str(photo), "--out", str(tmp_path / "o3")]) == 2
    assert "is damaged: SHA-256" in capsys.readouterr().err


def test_models_lists_and_checks(outline_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    index = _index(tmp_path, outline_ckpt, ("tiny-outlines", "other"))
    monkeypatch.setenv(zoo.INDEX_ENV, str(index))
    assert main(["models", "--check"]) == 0
    out = capsys.readouterr().out
    assert out.index("tiny-outlines  (default)") < out.index("other")
    for text in ("returns      : boxes, outlines, areas", "licence      : test only", "test AP50    : n/a",
                 f"sha256       : {zoo.file_sha256(tmp_path / 'other.pth')}", "digest check : OK"):
        assert text in out


def test_export_half_is_refused_for_onnx(outline_ckpt: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--checkpoint", str(outline_ckpt), "--format", "onnx", "--half",
                 "--out", str(tmp_path / "m.onnx")]) == 2
    assert "--half applies to --format pth" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_an_unwritable_cache_falls_back_to_pytorch_with_the_reason(
        outline_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "zoo").mkdir()
    monkeypatch.setenv(zoo.INDEX_ENV, str(_index(tmp_path / "zoo", outline_ckpt)))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv(zoo.CACHE_ENV, str(blocker))
    photo = tmp_path / "foot.png"
    from PIL import Image

    Image.fromarray(render_sample(3, 0, 128, healthy=False).image).save(photo)
    assert main(["predict", str(photo), "--device", "cpu", "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "could not export the model to" in err and "running it in PyTorch" in err
    pred = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert pred["checkpoint"].endswith("tiny-outlines.pth") and pred["onnx"] is None
    # --runtime onnx insists: the same failure is an error naming the file (exit 2), not a silent switch
    assert main(["predict", str(photo), "--runtime", "onnx", "--out", str(tmp_path / "o2")]) == 2
    assert "cannot export the shipped model to ONNX" in capsys.readouterr().err


SHIP = Path(__file__).resolve().parents[2] / "scripts" / "ship_model.py"


def _ship(ckpt: Path, index: Path, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SHIP), "--checkpoint", str(ckpt), "--name", name,
                           "--index", str(index), *extra], capture_output=True, text=True, timeout=300)


def test_ship_model_stores_float32_by_default_and_refuses_a_model_over_the_budget(checkpoint_factory,
                                                                                 tmp_path: Path) -> None:
    """scripts/ship_model.py: float32 unless asked, the new model becomes the default, and one that would take the
    shipped models over 25 MB is refused with nothing written (no model file, no temp file, the index unchanged)."""
    from _checkpoints import MASK_OVERRIDES

    # a Mask R-CNN of 5 M weights (20 MB in float32), as the shipped one is built: narrow box head
    ckpt = checkpoint_factory(tmp_path / "run" / "best_model.pth", 96, 0.5, 0, *MASK_OVERRIDES,
                              "model.rcnn.box_head_size=64")
    folder = tmp_path / "zoo"
    folder.mkdir()
    (folder / "old.pth").write_bytes(b"listed, never loaded here")
    old = {"name": "old", "file": "old.pth", "sha256": zoo.file_sha256(folder / "old.pth"), "returns": "boxes",
           "architecture": "a", "training_data": "t", "licence": "l", "summary": "s", "default": True}
    with (folder / "big.bin").open("wb") as f:  # another shipped model of 25 MB - 1 kB: no real model fits beside it
        f.truncate(25_000_000 - 1000)
    big = {**old, "name": "big", "file": "big.bin", "default": False}
    index = folder / "index.json"
    index.write_text(json.dumps({"models": [old, big]}))
    before = index.read_text()
    refused = _ship(ckpt, index, "new")
    assert refused.returncode != 0
    assert "new: " in refused.stderr and "over the 25 MB budget; nothing written" in refused.stderr
    assert index.read_text() == before and sorted(p.name for p in folder.iterdir()) == [
        "big.bin", "index.json", "old.pth"]

    index.write_text(json.dumps({"models": [old]}))
    shipped = _ship(ckpt, index, "new")
    assert shipped.returncode == 0, shipped.stderr
    loaded = load_for_inference(folder / "new.pth")
    assert all(t.dtype == torch.float32 for t in loaded.model_state_dict.values() if t.is_floating_point())
    # the trained weights, unrounded: the same names, dtypes, shapes and bytes
    assert state_digest(loaded.model_state_dict) == state_digest(load_for_inference(ckpt).model_state_dict)
    models = {m.name: m for m in zoo.available(index)}
    assert models["new"].default and not models["old"].default
    assert models["new"].sha256 == zoo.file_sha256(folder / "new.pth")
    assert "box head 64" in models["new"].architecture and "float32 storage" in models["new"].architecture
    assert zoo.resolve(None, index)[1] == folder / "new.pth"  # the default now, its digest checked
    full_size = (folder / "new.pth").stat().st_size
    half = _ship(ckpt, index, "new", "--storage", "float16")  # shipped again under its name: replaced
    assert half.returncode == 0 and "(float16)" in half.stdout
    assert (folder / "new.pth").stat().st_size < 0.6 * full_size
    assert [m.name for m in zoo.available(index)] == ["new", "old"]
    both = _ship(ckpt, index, "new", "--int8-box-head", "--int8-mask-head")  # the shipped model's storage
    assert both.returncode == 0 and "(float32 + int8 rows)" in both.stdout, both.stderr
    stored = safe_torch_load(folder / "new.pth")
    convs = mask_head_convs(stored["model_state_dict"])
    assert convs and stored["int8_weights"] == [*BOX_HEAD_FC, *convs]
    assert all(stored["model_state_dict"][k].dtype == torch.int8 for k in stored["int8_weights"])
    boxes_only = checkpoint_factory(tmp_path / "boxes" / "best_model.pth", 96, 0.5, 0)
    refused = _ship(boxes_only, index, "boxes", "--int8-mask-head")
    assert refused.returncode != 0 and "--int8-mask-head: this model has no mask head" in refused.stderr
    assert not (folder / "boxes.pth").exists()
