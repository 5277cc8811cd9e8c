"""Calibrated confidence and the triage label from tune to every output: checkpoint, slim copy, predict, serve."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from _checkpoints import make_checkpoint
from dfudet.checkpoint import load_for_inference
from dfudet.commands.predict import run_predict
from dfudet.commands.tune import SizeTrial, calibrate_on_val
from dfudet.confidence import Calibration, triage_label
from dfudet.config import load_config
from dfudet.data.demo import render_sample
from dfudet.errors import CheckpointError
from dfudet.export.slim import export_slim
from dfudet.inference.predictor import Predictor
from dfudet.inference.quality import assess_quality
from dfudet.metrics.calibration import box_outcomes, choose_review_threshold, fit_calibration
from dfudet.metrics.scores import detection_scores
from dfudet.serve.app import create_app

PLATT = Calibration("platt", a=2.0, b=-1.0, n_boxes=100, n_true=40)


def _with(ckpt: Path, out: Path, calibration: Calibration | None, review: float | None) -> Path:
    """A copy of a checkpoint with a calibration and a review threshold, as `dfudet tune` stores them."""
    payload = torch.load(ckpt, weights_only=True)
    if calibration is not None:
        payload["calibration"] = calibration.as_dict()
    if review is not None:
        payload["review_threshold"] = review
    torch.save(payload, out)
    return out


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("calibrated")
    return _with(make_checkpoint(root / "plain.pth", 96, 0.55), root / "calibrated.pth", PLATT, 0.45)


def _trial(n_photos: int, seed: int) -> SizeTrial:
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for i in range(n_photos):
        g = np.array([[10, 10, 40, 40]], float) if i % 4 else np.zeros((0, 4))
        boxes = np.array([[10, 10, 40, 40], [60, 60, 90, 90], [11, 12, 41, 40]], float)
        preds.append((boxes, np.sort(rng.uniform(0.05, 0.95, 3))[::-1].copy()))
        gts.append(g)
    op = detection_scores(preds, gts, score_threshold=0.6)
    return SizeTrial(96, op, op, 0.5, 0.3, 1.0, np.zeros((n_photos, 4)), preds=preds, gts=gts)


def test_tune_fits_the_calibration_and_review_threshold_of_the_kept_size() -> None:
    trial = _trial(40, 0)
    train = load_config(None, ["train.review_sensitivity=0.9"]).train
    cal, review, info = calibrate_on_val(trial, train)
    best = [float(s.max()) for _, s in trial.preds]
    assert review == pytest.approx(choose_review_threshold(best, [len(g) > 0 for g in trial.gts], 0.9, 0.6))
    scores, truth, photo = box_outcomes(trial.preds, trial.gts)
    independent, _ = fit_calibration(scores, truth, photo, method="auto")
    assert cal is not None and cal.method == independent.method
    np.testing.assert_allclose(cal.apply(scores), independent.apply(scores))
    assert info["calibration"]["n_boxes"] == 120 and info["calibration"]["ece_bins"] == "15 equal-mass"
    assert info["triage_val"]["sensitivity"] >= 0.9


def test_a_calibration_on_too_few_val_boxes_is_left_out_with_the_count() -> None:
    cal, review, info = calibrate_on_val(_trial(6, 1), load_config(None, []).train)  # 18 boxes
    assert cal is None and review is not None and 0 <= review <= 0.6
    assert "on 18 val boxes (at least 30 needed)" in info["calibration_refused"]
    empty = SizeTrial(96, _trial(1, 0).operating, _trial(1, 0).operating, 0.0, 0.0, 0.0, np.zeros((0, 4)))
    cal, review, info = calibrate_on_val(empty, load_config(None, []).train)  # a val split without photos
    assert cal is None and review is None and info["review_refused"] == "the val split has no ulcer photo"


def test_predict_writes_confidence_and_the_triage_label(calibrated: Path, tmp_path: Path) -> None:
    photos = []
    for i in range(4):
        photos.append(tmp_path / f"p{i}.png")
        Image.fromarray(render_sample(11, i, 96, healthy=i == 3).image).save(photos[-1])
    run_predict(photos, calibrated, tmp_path / "out", progress=False)
    data = json.loads((tmp_path / "out" / "predictions.json").read_text())
    predictor = Predictor.from_checkpoint(calibrated)
    assert predictor.calibration == PLATT and predictor.review_threshold == 0.45
    labels = set()
    for im, photo in zip(data["images"], photos):
        raw = predictor.predict_arrays([np.asarray(Image.open(photo).convert("RGB"))])[0]
        expected = 1 / (1 + np.exp(-(2.0 * np.log(np.asarray(im["scores"]) / (1 - np.asarray(im["scores"]))) - 1.0)))
        np.testing.assert_allclose(im["confidence"], expected, atol=2e-4)
        best = float(raw.scores.max()) if len(raw.scores) else 0.0
        quality_ok = assess_quality(np.asarray(Image.open(photo).convert("RGB"))).ok
        assert im["quality"]["ok"] == quality_ok
        assert im["label"] == triage_label(best, 0.55, 0.45, quality_ok) and im["review_threshold"] == 0.45
        labels.add(im["label"])
    rows = list(csv.DictReader((tmp_path / "out" / "predictions.csv").open()))
    assert {r["label"] for r in rows} == labels
    assert all(r["confidence"] for r in rows if r["x1"])


def test_without_a_calibration_confidence_is_null(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "plain.pth", 96, 0.0)
    photo = tmp_path / "p.png"
    Image.fromarray(render_sample(11, 0, 96, healthy=False).image).save(photo)
    run_predict([photo], ckpt, tmp_path / "out", progress=False)
    im = json.loads((tmp_path / "out" / "predictions.json").read_text())["images"][0]
    assert im["boxes"] and im["confidence"] is None and im["label"] == "ulcer" and im["review_threshold"] is None


def test_the_slim_copy_keeps_them_and_damaged_values_are_refused(calibrated: Path, tmp_path: Path) -> None:
    export_slim(calibrated, tmp_path / "slim.pth", half=True)
    slim = load_for_inference(tmp_path / "slim.pth")
    assert slim.calibration == PLATT and slim.review_threshold == 0.45
    bad = _with(calibrated, tmp_path / "bad.pth", None, 1.5)
    with pytest.raises(CheckpointError, match=r"bad.pth: the stored review threshold 1.5 is not a score in \[0, 1\]"):
        load_for_inference(bad)


def test_the_service_returns_confidence_and_label(calibrated: Path) -> None:
    predictor = Predictor.from_checkpoint(calibrated)
    buf = io.BytesIO()
    Image.fromarray(render_sample(11, 1, 96, healthy=False).image).save(buf, format="PNG")
    with TestClient(create_app(predictor)) as client:
        r = client.post("/v1/detect?min_score=0", files={"file": ("f.png", buf.getvalue(), "image/png")})
    body = r.json()
    assert r.status_code == 200 and len(body["confidence"]) == len(body["scores"]) > 0
    np.testing.assert_allclose(body["confidence"], PLATT.apply(body["scores"]), atol=2e-4)
    assert body["label"] == triage_label(max(body["scores"]), 0.55, 0.45, body["quality"]["ok"])
    assert body["label_reasons"]


def test_a_poor_photo_is_sent_to_review_never_cleared(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "plain.pth", 96, 1.0)  # no box reaches 1.0: every good photo is "no ulcer"
    good, dark = tmp_path / "good.png", tmp_path / "dark.png"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((400, 400, 3)) * 255).astype(np.uint8)).save(good)
    Image.fromarray((rng.random((400, 400, 3)) * 25).astype(np.uint8)).save(dark)
    run_predict([good, dark], ckpt, tmp_path / "out", progress=False)
    written = json.loads((tmp_path / "out" / "predictions.json").read_text())["images"]
    images = {Path(im["file"]).name: im for im in written}
    assert images["good.png"]["label"] == "no ulcer" and images["good.png"]["quality"]["ok"]
    assert images["dark.png"]["label"] == "review" and not images["dark.png"]["quality"]["ok"]
    assert any(r.startswith("photo quality: too dark") for r in images["dark.png"]["label_reasons"])
