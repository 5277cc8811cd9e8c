"""The model that ships with dfudet (src/dfudet/zoo): its digest, its listing, and what it does on real photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _require import skip_or_fail
from dfudet.cli import main
from dfudet.inference import zoo
from dfudet.metrics.matching import match_image


@pytest.fixture(scope="module")
def shipped() -> tuple[zoo.ShippedModel, Path]:
    if not zoo.available(zoo.INDEX):
        skip_or_fail(f"no shipped model listed in {zoo.INDEX}")
    return zoo.resolve(None, zoo.INDEX)  # checks the file against its SHA-256


def test_the_shipped_model_is_listed_small_and_intact(shipped: tuple[zoo.ShippedModel, Path],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    model, path = shipped
    assert model.default and "outlines" in model.returns
    total = sum(m.path(zoo.INDEX).stat().st_size for m in zoo.available(zoo.INDEX))
    assert total <= zoo.BUDGET_BYTES == 25_000_000  # every shipped model together stays within 25 MB
    assert main(["models", "--check"]) == 0
    out = capsys.readouterr().out
    assert f"sha256       : {model.sha256}" in out and "digest check : OK" in out


@pytest.mark.slow
def test_default_model_finds_boxes_outlines_and_areas_on_a_fuseg_test_photo(
        shipped: tuple[zoo.ShippedModel, Path], fuseg_dir: Path, tmp_path: Path) -> None:
    ann = json.loads((fuseg_dir / "annotations" / "test.json").read_text())
    image = next(i for i in ann["images"] if i["file_name"].endswith("fuseg_0407.jpg"))
    truth = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                      for a in ann["annotations"] if a["image_id"] == image["id"]], float)
    grey = tmp_path / "no_foot.png"
    Image.fromarray(np.full((480, 640, 3), 128, np.uint8)).save(grey)
    assert main(["predict", str(fuseg_dir / "images" / image["file_name"]), str(grey), "--mm-per-px", "0.2",
                 "--out", str(tmp_path / "out")]) == 0
    rows = json.loads((tmp_path / "out" / "predictions.json").read_text())["images"]
    images = {Path(r["file"]).name: r for r in rows}
    found = images["fuseg_0407.jpg"]
    assert found["outlines"] and found["label"] == "ulcer" and found["confidence"] is not None
    assert match_image(np.array(found["boxes"]), np.array(found["scores"]), truth, 0.0).tp == len(truth)
    for d in found["detections"]:
        assert d["area_px"] > 0 and d["area_mm2"] == pytest.approx(d["area_px"] * 0.04, rel=1e-4) and d["outline"]
    assert images["no_foot.png"]["boxes"] == []  # a photo with no foot: an empty result, not an error


@pytest.mark.slow  # exports the shipped model to ONNX (~7 s) and predicts with both runtimes
def test_predict_runs_the_shipped_model_through_onnx_runtime_with_the_pytorch_detections(
        shipped: tuple[zoo.ShippedModel, Path], fuseg_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from _require import import_or_skip

    import_or_skip("onnxruntime")
    monkeypatch.setenv("DFUDET_CACHE_DIR", str(tmp_path / "cache"))
    photos = sorted(str(p) for p in (fuseg_dir / "images" / "test").glob("*.jpg"))[:4]
    cached = zoo.onnx_cache_path(shipped[0])
    assert cached.parent.parent == tmp_path / "cache" and not cached.exists()

    def run(*extra: str) -> tuple[list[dict], str]:
        out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
        assert main(["predict", *photos, "--device", "cpu", "--mm-per-px", "0.2", "--out", str(out), *extra]) == 0
        return json.loads((out / "predictions.json").read_text())["images"], capsys.readouterr().err

    by_onnx, err = run()  # the default: ONNX Runtime, exported once into the cache
    assert "exporting the shipped model" in err and "through ONNX Runtime" in err and cached.is_file()
    stamp = cached.stat().st_mtime_ns
    again, err = run()
    assert "exporting" not in err and "through ONNX Runtime" in err and cached.stat().st_mtime_ns == stamp
    by_torch, err = run("--runtime", "torch")
    assert "ONNX" not in err
    assert sum(len(r["boxes"]) for r in by_torch) > 0
    for a, b, c in zip(by_torch, by_onnx, again):
        assert len(a["boxes"]) == len(b["boxes"]) and b == c and a["label"] == b["label"]
        np.testing.assert_allclose(b["boxes"], a["boxes"], atol=1.0) if a["boxes"] else None
        np.testing.assert_allclose(b["scores"], a["scores"], atol=1e-3) if a["scores"] else None
        for da, db in zip(a["detections"], b["detections"]):
            assert db["area_px"] == pytest.approx(da["area_px"], rel=0.02)
    # what cannot run through ONNX Runtime is a clear error (exit 2), not a silent switch
    assert main(["predict", photos[0], "--runtime", "onnx", "--tta", "--out", str(tmp_path / "tta")]) == 2
    assert "--runtime onnx needs no --tta" in capsys.readouterr().err
    assert main(["predict", photos[0], "--runtime", "onnx", "--checkpoint", str(shipped[1]),
                 "--out", str(tmp_path / "x")]) == 2
    assert "--runtime onnx applies to the shipped models" in capsys.readouterr().err
