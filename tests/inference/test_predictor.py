"""Predictor: checkpoint loading, original-coordinate mapping, batching, EXIF orientation and flip TTA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dfudet.checkpoint import atomic_torch_save, safe_torch_load, state_digest
from dfudet.data.checks import load_image
from dfudet.data.transforms import build_eval_transform
from dfudet.errors import CheckpointError, ConfigError
from dfudet.inference import Predictor
from dfudet.inference.backend import to_original as boxes_to_original
from dfudet.inference.tta import fuse_views, unflip_boxes


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    img[h // 4: h // 2, w // 3: w // 2] = (200, 40, 40)  # some structure besides noise
    return img


@pytest.fixture(scope="module")
def predictor(tiny_ckpt: Path) -> Predictor:
    return Predictor.from_checkpoint(tiny_ckpt)


def test_boxes_to_original_divides_by_scale_and_clips() -> None:
    boxes = np.array([[10, 20, 30, 40], [5, 5, 60, 60]], dtype=np.float32)
    out = boxes_to_original(boxes, scale=0.5, width=50, height=70)
    np.testing.assert_allclose(out, [[20, 40, 50, 70], [10, 10, 50, 70]])
    # a box wholly in the padding (beyond the image) collapses to zero width
    pad = boxes_to_original(np.array([[80, 10, 90, 20]], np.float32), scale=1.0, width=50, height=70)
    assert pad[0, 2] - pad[0, 0] == 0


def test_from_checkpoint_uses_operating_threshold_and_model_settings(tiny_ckpt: Path) -> None:
    p = Predictor.from_checkpoint(tiny_ckpt)
    assert p.operating_threshold == 0.5
    assert "operating_threshold" in p.threshold_source
    assert p.img_size == 96 and p.min_score == 0.0
    assert not p.model.training
    q = Predictor.from_checkpoint(tiny_ckpt, operating_threshold=0.8)
    assert q.operating_threshold == 0.8 and q.threshold_source == "--operating-threshold"
    with pytest.raises(ConfigError, match="between 0 and 1"):
        Predictor.from_checkpoint(tiny_ckpt, operating_threshold=1.5)


def test_non_square_boxes_equal_model_output_mapped_back(predictor: Predictor) -> None:
    img = _image(90, 150)
    res = predictor.predict_arrays([img])[0]
    assert (res.width, res.height) == (150, 90)
    # the same computation by hand: eval transform -> model -> divide by the resize factor
    square, _, scale = build_eval_transform(96)(img, np.zeros((0, 4), np.float32))
    assert scale == pytest.approx(96 / 150)
    with torch.inference_mode():
        out = predictor.model([torch.from_numpy(square.transpose(2, 0, 1).copy()).float() / 255])[0]
    expected = out["boxes"].numpy() / scale
    expected[:, 0::2] = expected[:, 0::2].clip(0, 150)
    expected[:, 1::2] = expected[:, 1::2].clip(0, 90)
    keep = (expected[:, 2] > expected[:, 0]) & (expected[:, 3] > expected[:, 1])
    assert len(res.boxes) == keep.sum() > 0
    np.testing.assert_allclose(res.boxes, expected[keep], atol=1e-3)
    np.testing.assert_allclose(res.scores, out["scores"].numpy()[keep], atol=1e-6)
    assert res.boxes[:, 2].max() > 96  # really in original pixels, not in the 96-px model input


def test_batched_equals_one_by_one(predictor: Predictor) -> None:
    imgs = [_image(90, 150, 1), _image(64, 64, 2), _image(200, 120, 3)]
    together = predictor.predict_arrays(imgs, batch_size=3)
    alone = [predictor.predict_arrays([im], batch_size=1)[0] for im in imgs]
    for a, b in zip(together, alone):  # CPU kernels differ with batch size: allow float noise, not other boxes
        assert len(a.boxes) == len(b.boxes) > 0
        np.testing.assert_allclose(a.boxes, b.boxes, atol=0.5)
        np.testing.assert_allclose(a.scores, b.scores, atol=5e-3)


def test_keep_filters_by_threshold(predictor: Predictor) -> None:
    res = predictor.predict_arrays([_image(96, 96)])[0]
    assert res.scores.min() < res.scores.max()  # the fixture model spreads its scores
    t = float(np.median(res.scores))
    kept = predictor.keep(res, t)
    assert kept.threshold == t and (kept.scores >= t).all()
    assert len(kept.boxes) == int((res.scores >= t).sum()) < len(res.boxes)


def test_exif_rotated_file_is_predicted_in_display_orientation(predictor: Predictor, tmp_path: Path) -> None:
    raw = Image.fromarray(_image(60, 120))  # stored landscape 120x60
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": displayed portrait 60x120
    path = tmp_path / "rotated.jpg"
    raw.save(path, quality=95, exif=exif)
    res = predictor.predict_arrays([load_image(path)])[0]  # load_image applies the EXIF orientation
    assert (res.width, res.height) == (60, 120)
    with Image.open(path) as im:
        displayed = np.asarray(im.convert("RGB").transpose(Image.Transpose.ROTATE_270))
    expected = predictor.predict_arrays([displayed])[0]
    np.testing.assert_allclose(res.boxes, expected.boxes, atol=1e-4)
    assert (res.boxes[:, 2] <= 60).all() and (res.boxes[:, 3] <= 120).all()


def test_unflip_and_fusion_of_identical_views() -> None:
    b = np.array([[10, 5, 30, 25]], np.float32)
    np.testing.assert_allclose(unflip_boxes(b, 100), [[70, 5, 90, 25]])
    np.testing.assert_allclose(unflip_boxes(unflip_boxes(b, 100), 100), b)
    boxes = np.array([[10, 10, 40, 30], [60, 50, 90, 80]], np.float32)
    scores = np.array([0.9, 0.6], np.float32)
    fb, fs = fuse_views([(boxes, scores), (boxes, scores)], 100, 90)
    np.testing.assert_allclose(fb, boxes, atol=1e-3)
    np.testing.assert_allclose(fs, scores, atol=1e-5)
    eb, es = fuse_views([(np.zeros((0, 4)), np.zeros(0))] * 2, 100, 90)
    assert eb.shape == (0, 4) and es.shape == (0,)


def test_tta_boxes_inside_image_and_sorted(tiny_ckpt: Path) -> None:
    p = Predictor.from_checkpoint(tiny_ckpt, tta=True)
    for img in (_image(90, 150), _image(130, 70, 5)):
        res = p.predict_arrays([img])[0]
        h, w = img.shape[:2]
        b = res.boxes
        assert len(b) > 0
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert (np.diff(res.scores) <= 0).all()
        assert len(b) <= p.max_detections


def test_checkpoint_errors(tiny_ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        Predictor.from_checkpoint(tmp_path / "nope.pth")
    ckpt = safe_torch_load(tiny_ckpt)
    ckpt["model_state_dict"].pop(next(iter(ckpt["model_state_dict"])))
    broken = tmp_path / "broken.pth"
    atomic_torch_save(ckpt, broken)  # changed after it was written: the digest no longer matches
    with pytest.raises(CheckpointError, match=r"broken\.pth: the checkpoint is damaged"):
        Predictor.from_checkpoint(broken)
    ckpt["weights_sha256"] = state_digest(ckpt["model_state_dict"])  # intact file, weights of another model
    atomic_torch_save(ckpt, broken)
    with pytest.raises(CheckpointError, match=r"broken\.pth: weights do not fit"):
        Predictor.from_checkpoint(broken)
    ckpt["config"]["model"]["name"] = "no_such_model"  # an edit the config digest catches ...
    atomic_torch_save(ckpt, broken)
    with pytest.raises(CheckpointError, match=r"broken\.pth: the checkpoint is damaged: its config"):
        Predictor.from_checkpoint(broken)
    del ckpt["config_sha256"]  # ... and without a digest, the unknown model is named
    atomic_torch_save(ckpt, broken)
    with pytest.raises(CheckpointError, match="broken.pth: the checkpoint's model is unknown.*no_such_model"):
        Predictor.from_checkpoint(broken)


def test_bad_array_is_a_data_error(predictor: Predictor) -> None:
    from dfudet.errors import DataError

    with pytest.raises(DataError, match="HxWx3 uint8"):
        predictor.predict_arrays([np.zeros((10, 10), np.uint8)])
