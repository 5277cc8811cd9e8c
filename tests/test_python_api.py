"""The Python API (`dfudet.load`): paths, PIL images and arrays give the same typed results as `dfudet predict`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dfudet
from dfudet.api import Detector, Result
from dfudet.cli import main
from dfudet.data.demo import render_sample
from dfudet.errors import CheckpointError, ConfigError, DataError


@pytest.fixture(scope="module")
def ckpt(mask_checkpoint: Path) -> Path:
    return mask_checkpoint


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "foot.png"
    Image.fromarray(render_sample(5, 1, 160, healthy=False).image).save(path)
    return path


def test_path_pil_and_array_give_the_same_result(ckpt: Path, photo: Path) -> None:
    det = dfudet.load(ckpt, threshold=0.05)
    assert isinstance(det, Detector) and det.info.outlines and det.threshold == 0.05
    by_path = det.predict(photo, mm_per_px=0.5)
    assert isinstance(by_path, Result) and by_path.source == str(photo)
    assert by_path.ulcers, "the few-step model finds something above its 0.05 threshold"
    u = by_path.ulcers[0]
    assert u.outline and u.area_px and u.area_px > 0
    assert u.area_mm2 == pytest.approx(u.area_px * 0.25, rel=1e-5)
    assert by_path.area_source == "user" and by_path.mm_per_px == 0.5
    scores = [x.score for x in by_path.ulcers]
    assert scores == sorted(scores, reverse=True) and min(scores) >= det.threshold
    with Image.open(photo) as im:
        by_pil = det.predict(im, mm_per_px=0.5)
    by_array = det.predict(np.asarray(Image.open(photo).convert("RGB")), mm_per_px=0.5)
    for other in (by_pil, by_array):
        assert [x.box for x in other.ulcers] == [x.box for x in by_path.ulcers]
        assert [x.area_px for x in other.ulcers] == [x.area_px for x in by_path.ulcers]
    without_scale = det.predict(photo)
    assert without_scale.area_source is None and without_scale.area_note
    assert all(x.area_mm2 is None for x in without_scale.ulcers)


def test_result_equals_the_cli_predictions(ckpt: Path, photo: Path, tmp_path: Path) -> None:
    assert main(["predict", str(photo), "--checkpoint", str(ckpt), "--out", str(tmp_path)]) == 0
    cli = json.loads((tmp_path / "predictions.json").read_text())["images"][0]
    api = dfudet.load(ckpt).predict(photo)
    np.testing.assert_allclose([x.box for x in api.ulcers], cli["boxes"], atol=0.01)
    np.testing.assert_allclose([x.score for x in api.ulcers], cli["scores"], atol=1e-4)
    assert [x.area_px for x in api.ulcers] == [d["area_px"] for d in cli["detections"]]


def test_exif_orientation_is_applied_to_paths_and_pil_images(ckpt: Path, photo: Path, tmp_path: Path) -> None:
    rotated = tmp_path / "rotated.jpg"
    img = Image.open(photo).convert("RGB").transpose(Image.Transpose.ROTATE_90)  # stored sideways...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... and tagged "rotate 90 CW to display"
    img.save(rotated, exif=exif, quality=95)
    det = dfudet.load(ckpt)
    r = det.predict(rotated)
    assert (r.width, r.height) == Image.open(photo).size  # displayed as the original, not as stored
    with Image.open(rotated) as im:
        assert (det.predict(im).width, det.predict(im).height) == (r.width, r.height)


def test_predict_many_keeps_the_order(ckpt: Path, photo: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.png"
    Image.fromarray(render_sample(9, 2, 200, healthy=False).image).save(other)
    det = dfudet.load(ckpt)
    many = det.predict_many([photo, other, photo], batch_size=2)
    assert [r.source for r in many] == [str(photo), str(other), str(photo)]
    assert (many[1].width, many[1].height) == (200, 200)
    assert [u.box for u in many[0].ulcers] == [u.box for u in det.predict(photo).ulcers]


def test_bad_inputs_are_clear_errors(ckpt: Path, tmp_path: Path) -> None:
    det = dfudet.load(ckpt)
    with pytest.raises(DataError, match="HxWx3 uint8"):
        det.predict(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(DataError, match="cannot read an image from a int"):
        det.predict(3)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="missing.jpg"):
        det.predict(tmp_path / "missing.jpg")
    with pytest.raises(ConfigError, match="mm_per_px"):
        det.predict(np.zeros((32, 32, 3), np.uint8), mm_per_px=-1)
    with pytest.raises(CheckpointError, match="missing.pth: checkpoint file does not exist"):
        dfudet.load(tmp_path / "missing.pth")
