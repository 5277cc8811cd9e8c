"""`dfudet tune`: the inference input size and its threshold are chosen on val, the kept model is left alone, and a
tuned checkpoint feeds its size to every backend (PyTorch, ONNX) and report."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from _checkpoints import FCOS_OVERRIDES, train_demo_checkpoint
from _require import import_or_skip
from dfudet.checkpoint import load_for_inference
from dfudet.commands import tune as tune_mod
from dfudet.commands.evaluate import run_evaluation
from dfudet.commands.split_predictions import predict_split, preds_and_gts
from dfudet.commands.tune import SizeTrial, pick_size, run_tune, with_confidence
from dfudet.config import Config
from dfudet.data.dataset import DetectionDataset
from dfudet.data.demo import render_sample
from dfudet.engine.runner import run_training
from dfudet.errors import ConfigError
from dfudet.inference.predictor import Predictor
from dfudet.metrics.bootstrap import paired_composite_gains, per_image_counts
from dfudet.metrics.scores import Scores, best_threshold
from dfudet.models.factory import build_detector, get_spec

TRAIN = 96


@pytest.fixture(scope="module")
def fcos_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few-step FCOS at 96 px (anchor-free: a model built at another size is the same model at that size)."""
    return train_demo_checkpoint(tmp_path_factory.mktemp("tune") / "best_model.pth", img_size=TRAIN, steps=6,
                                 overrides=FCOS_OVERRIDES)


def _native_predictor(ckpt: Path, size: int) -> Predictor:
    """The checkpoint's weights in a model BUILT at `size` (what a run trained at that size would deploy)."""
    loaded = load_for_inference(ckpt)
    model = build_detector(loaded.config.model, size)
    model.load_state_dict(loaded.model_state_dict)
    info = Predictor.from_checkpoint(ckpt).info
    return Predictor(model, get_spec(loaded.identity.model_name), size, loaded.operating_threshold, info)


def _val_preds(predictor: Predictor, cache: Path) -> tuple[list, list]:
    return preds_and_gts(predict_split(predictor, DetectionDataset(cache, "val"), 8, False))


def test_tune_scores_each_size_on_val_keeps_the_best_and_leaves_the_kept_model_alone(fcos_ckpt: Path,
                                                                                   tiny_cache: Path, tmp_path: Path):
    before = fcos_ckpt.read_bytes()
    out = tmp_path / "tuned_model.pth"
    table = run_tune(fcos_ckpt, tiny_cache, out=out, sizes=[160, 128], device="cpu", progress=False)
    assert fcos_ckpt.read_bytes() == before  # best_model.pth is never rewritten
    assert [t["img_size"] for t in table["trials"]] == [TRAIN, 128, 160]  # the training size is always tried
    cfg = load_for_inference(fcos_ckpt).config
    t = cfg.train
    assert table["confidence"] == t.tune_confidence == 0.95
    counts = {}
    for trial in table["trials"]:
        # independent: the model built natively at the size, the threshold swept by the training's own rule
        preds, gts = _val_preds(_native_predictor(fcos_ckpt, trial["img_size"]), tiny_cache)
        thr, op = best_threshold(preds, gts, iou_threshold=t.iou_threshold, weights=t.composite_weights,
                                 min_recall=t.operating_min_recall)
        assert trial["operating_threshold"] == pytest.approx(thr)
        assert trial["composite"] == pytest.approx(op.composite)
        assert trial["recall"] == pytest.approx(op.recall)
        counts[trial["img_size"]] = per_image_counts(preds, gts, thr, t.iou_threshold)
    for trial in table["trials"]:
        if trial["img_size"] == TRAIN:
            assert trial["p_better_than_train_size"] is None
        else:
            gains = paired_composite_gains(counts[TRAIN], counts[trial["img_size"]], t.composite_weights)
            assert trial["p_better_than_train_size"] == pytest.approx(float(np.mean(gains > 0)))
    eligible = [r for r in table["trials"] if r["img_size"] == TRAIN or r["p_better_than_train_size"] >= 0.95]
    best = max(r["composite"] for r in eligible)
    chosen = min(r["img_size"] for r in eligible if r["composite"] >= best - 1e-12)
    assert table["chosen_img_size"] == chosen
    tuned = load_for_inference(out)
    assert tuned.config.data.infer_img_size == (None if chosen == TRAIN else chosen)
    assert tuned.identity.img_size == TRAIN  # the model itself is the trained one
    assert tuned.operating_threshold == pytest.approx(table["operating_threshold"])
    assert tuned.scores is not None and tuned.scores.composite_at_operating == pytest.approx(best)
    ref = load_for_inference(fcos_ckpt).model_state_dict
    assert all(torch.equal(ref[k], v) for k, v in tuned.model_state_dict.items())
    assert json.loads(out.with_suffix(".json").read_text())["chosen_img_size"] == chosen


def test_a_tuned_checkpoint_feeds_its_size_and_threshold_to_predict_and_evaluate(fcos_ckpt: Path, tiny_cache: Path,
                                                                                tmp_path: Path):
    tuned = train_demo_checkpoint(tmp_path / "tuned.pth", img_size=TRAIN, steps=6,
                                  overrides=(*FCOS_OVERRIDES, "data.infer_img_size=160"))
    pred = Predictor.from_checkpoint(tuned)
    assert pred.img_size == 160 and pred.info.identity.img_size == TRAIN
    assert pred.model.transform.min_size == (160,) and pred.model.transform.max_size == 160
    assert "chosen on val at input size 160" in pred.threshold_source
    images = [render_sample(7, i, 112, healthy=False).image for i in range(3)]
    got = pred.predict_arrays(images)
    native = _native_predictor(tuned, 160).predict_arrays(images)
    at_train = Predictor.from_checkpoint(tuned, img_size=TRAIN).predict_arrays(images)
    for g, n in zip(got, native):
        np.testing.assert_allclose(g.boxes, n.boxes, atol=1e-3)
        np.testing.assert_allclose(g.scores, n.scores, atol=1e-5)
    # without the size change torchvision would resize the input back to 96: the detections would be these
    assert any(len(g.scores) != len(a.scores) or not np.allclose(g.scores, a.scores, atol=1e-3)
               for g, a in zip(got, at_train))
    m = run_evaluation(tuned, tiny_cache, tmp_path / "report", split="val", bootstrap=0, device="cpu",
                       progress=False)
    assert m["checkpoint"]["img_size"] == 160 and m["checkpoint"]["train_img_size"] == TRAIN
    assert "Input 160 px (trained at 96 px)." in (tmp_path / "report" / "report.md").read_text()
    overridden = Predictor.from_checkpoint(tuned, img_size=128)
    assert overridden.img_size == 128 and "this run uses 128" in overridden.threshold_source


SCORE_TOL = 1e-3  # ONNX Runtime vs PyTorch score difference accepted (float rounding of two engines)


@pytest.mark.slow
def test_onnx_export_of_a_tuned_checkpoint_takes_the_tuned_size(tmp_path: Path):
    """The ONNX model of a tuned checkpoint runs at the tuned size and finds the boxes PyTorch finds there."""
    import_or_skip("onnxruntime")
    from scipy.optimize import linear_sum_assignment

    from dfudet.export.onnx import export_onnx
    from dfudet.inference.loader import load_backend

    # a score floor of 0.02 (not the helper's 0.05): ~30 detections to compare instead of 3
    tuned = train_demo_checkpoint(tmp_path / "tuned.pth", img_size=TRAIN, steps=6,
                                  overrides=(*FCOS_OVERRIDES, "data.infer_img_size=128", "model.box_score_thresh=0.02"))
    meta = export_onnx(tuned, tmp_path / "m.onnx")
    assert meta["img_size"] == 128 and meta["identity"]["img_size"] == TRAIN
    assert meta["input"]["shape"] == [1, 3, 128, 128]
    onnx_pred = load_backend(onnx=str(tmp_path / "m.onnx"))
    assert onnx_pred.img_size == 128 and onnx_pred.info.identity.img_size == TRAIN
    torch_pred = Predictor.from_checkpoint(tuned)
    assert torch_pred.img_size == 128  # the reference runs at the tuned size too
    images = [render_sample(7, i, 112, healthy=False).image for i in range(3)]
    at_train_size = Predictor.from_checkpoint(tuned, img_size=TRAIN).predict_arrays(images)
    compared, moved = 0, 0
    for ref, got, small in zip(torch_pred.predict_arrays(images), onnx_pred.predict_arrays(images), at_train_size):
        assert len(got.scores) == len(ref.scores)
        np.testing.assert_allclose(np.sort(got.scores), np.sort(ref.scores), atol=SCORE_TOL)
        if not len(ref.scores):
            continue
        # boxes paired by their largest coordinate difference. When the list is full (detections_per_img), those
        # scored within SCORE_TOL of the lowest kept score are left out: at that cut-off two near-tied candidates
        # can swap between engines (tests/export/test_onnx_masks.py); below it both lists hold every candidate
        full = len(ref.scores) == torch_pred.info.config.model.detections_per_img
        cut = min(float(ref.scores.min()), float(got.scores.min())) + SCORE_TOL if full else -1.0
        above = np.flatnonzero(ref.scores > cut)
        cost = np.abs(ref.boxes[above][:, None] - got.boxes[None]).max(-1)
        rows, cols = linear_sum_assignment(cost)
        assert len(rows) == len(above)
        assert cost[rows, cols].max() <= 1.0, f"ONNX boxes differ from PyTorch's by {cost[rows, cols].max():.2f} px"
        assert np.abs(ref.scores[above][rows] - got.scores[cols]).max() <= SCORE_TOL
        compared += len(rows)
        # the comparison is at the tuned size: the same weights at the training size find other boxes
        moved += int(len(small.boxes) != len(ref.boxes) or not np.allclose(small.boxes, ref.boxes, atol=1.0))
    assert compared > 0, "the check needs detections"
    assert moved > 0, "the tuned size changed no detection: the check would not see a size mix-up"


def _trial(size: int, composite: float, p_better: float | None = None, per_image: np.ndarray | None = None
           ) -> SizeTrial:
    s = Scores(**{**{f: 0 for f in Scores.__dataclass_fields__}, "composite": composite, "score_threshold": 0.5})
    return SizeTrial(size, s, s, 0.0, 0.0, 0.0, np.zeros((0, 6)) if per_image is None else per_image, p_better)


def _counts(hit_every: int, n: int = 30) -> np.ndarray:
    """Per-image counts of a model that finds the one ulcer of every `hit_every`-th photo and misses the others."""
    gt = np.array([[10.0, 10.0, 50.0, 50.0]])
    preds = [(gt if i % hit_every == 0 else gt + 60.0, np.ones(1)) for i in range(n)]
    return per_image_counts(preds, [gt] * n, 0.5, 0.5)


def test_with_confidence_is_the_share_of_paired_resamples_where_a_size_beats_the_training_size():
    weak, strong = _counts(2), _counts(1)  # half the ulcers found vs all of them, on the same 30 photos
    trials = with_confidence([_trial(96, 0.5, per_image=weak), _trial(128, 0.9, per_image=strong),
                              _trial(160, 0.5, per_image=weak.copy())], 96)
    assert [t.p_better for t in trials] == [None, 1.0, 0.0]  # better in every resample; equal is not better
    assert with_confidence([_trial(96, 0.9, per_image=strong), _trial(128, 0.5, per_image=weak)], 96)[1].p_better == 0
    with pytest.raises(ConfigError, match="training size"):
        with_confidence([_trial(128, 0.9, per_image=strong)], 96)


def test_pick_size_takes_the_best_val_composite_and_on_a_tie_the_smaller_size():
    assert pick_size([_trial(512, 0.70), _trial(640, 0.75, 0.6), _trial(704, 0.74, 0.7)], 512).img_size == 640
    assert pick_size([_trial(704, 0.75, 0.9), _trial(512, 0.75), _trial(640, 0.75, 0.9)], 512).img_size == 512
    with pytest.raises(ConfigError):
        pick_size([], 512)


def test_pick_size_keeps_the_training_size_unless_another_wins_the_paired_resamples():
    trials = [_trial(512, 0.70), _trial(640, 0.75, 0.80), _trial(704, 0.74, 0.97)]
    assert pick_size(trials, 512, 0.95).img_size == 704  # the best of the sizes that are surely better
    assert pick_size(trials, 512, 0.0).img_size == 640  # no guard: the best point estimate
    assert pick_size(trials, 512, 0.99).img_size == 512  # none is surely better: the training size, though lower
    with pytest.raises(ConfigError, match="p_better"):
        pick_size([_trial(512, 0.70), _trial(640, 0.75)], 512, 0.95)


def test_run_tune_applies_the_configured_confidence_and_its_override(fcos_ckpt: Path, tiny_cache: Path,
                                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # the model's predictions replaced by per-image tables with a known answer (the real path: the first test)
    tables = {TRAIN: (0.50, _counts(2)), 128: (0.60, _counts(1)), 160: (0.70, _counts(2))}

    def scripted(base, dataset, size, batch_size, progress):
        composite, counts = tables[size]
        return _trial(size, composite, per_image=counts)

    monkeypatch.setattr(tune_mod, "_trial", scripted)
    table = run_tune(fcos_ckpt, tiny_cache, out=tmp_path / "a.pth", sizes=[128, 160], progress=False)
    assert [t["p_better_than_train_size"] for t in table["trials"]] == [None, 1.0, 0.0]
    assert table["confidence"] == 0.95 and table["chosen_img_size"] == 128  # 160's higher point estimate is noise
    table = run_tune(fcos_ckpt, tiny_cache, out=tmp_path / "b.pth", sizes=[128, 160], progress=False, confidence=0)
    assert table["chosen_img_size"] == 160  # the old rule: the best point estimate
    assert load_for_inference(tmp_path / "b.pth").config.data.infer_img_size == 160
    with pytest.raises(ConfigError, match="--confidence"):
        run_tune(fcos_ckpt, tiny_cache, out=tmp_path / "c.pth", confidence=1.5, progress=False)


def test_tune_refuses_the_test_split_its_own_checkpoint_as_output_and_bad_sizes(fcos_ckpt: Path, tiny_cache: Path,
                                                                              tmp_path: Path):
    with pytest.raises(ConfigError, match="test split"):
        run_tune(fcos_ckpt, tiny_cache, out=tmp_path / "t.pth", split="test", progress=False)
    with pytest.raises(ConfigError, match="kept model stays"):
        run_tune(fcos_ckpt, tiny_cache, out=fcos_ckpt, progress=False)
    with pytest.raises(ConfigError, match="64..4096"):
        run_tune(fcos_ckpt, tiny_cache, out=tmp_path / "t.pth", sizes=[32], progress=False)
    assert not (tmp_path / "t.pth").exists()
    cli = subprocess.run([sys.executable, "-m", "dfudet.cli", "tune", "--checkpoint", str(fcos_ckpt), "--data",
                          str(tiny_cache), "--split", "test"], capture_output=True, text=True)
    assert cli.returncode != 0 and "test split" in cli.stderr and "Traceback" not in cli.stderr


def test_tune_sizes_are_validated_and_infer_img_size_is_refused_for_training(tiny_cache: Path, tmp_path: Path,
                                                                           tiny_config):
    with pytest.raises(ValueError, match="twice"):
        Config.model_validate({"train": {"tune_img_sizes": [640, 640]}})
    with pytest.raises(ValueError, match="64..4096"):
        Config.model_validate({"train": {"tune_img_sizes": [16]}})
    cfg = tiny_config(tiny_cache, tmp_path / "run", "data.infer_img_size=128")
    with pytest.raises(ConfigError, match="dfudet tune"):
        run_training(cfg)
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_tune_scores_a_size_as_training_scores_its_val_epoch(fcos_ckpt: Path, tiny_cache: Path,
                                                             monkeypatch: pytest.MonkeyPatch):
    """The same val predictions give the same ValidationScores through tune and through the LightningModule: both
    call dfudet.metrics.validation.score_validation (a spy fails the test when tune stops calling it)."""
    from types import SimpleNamespace

    from dfudet.engine.module import DetectorModule
    from dfudet.metrics.scores import ValidationScores
    from dfudet.metrics.validation import score_validation

    calls = []

    def spy(*args, **kwargs):
        calls.append(args)
        return score_validation(*args, **kwargs)

    monkeypatch.setattr(tune_mod, "score_validation", spy)
    base = Predictor.from_checkpoint(fcos_ckpt)
    cfg = base.info.config
    assert cfg is not None
    trial = tune_mod._trial(base, DetectionDataset(tiny_cache, "val"), TRAIN, 8, False)
    assert len(calls) == 1 and len(trial.preds) == len(trial.gts) > 0
    tuned = ValidationScores.from_scores(trial.at_selection, trial.operating, ap50=trial.ap50, ap50_95=trial.ap50_95,
                                         train_loss=1.0, val_loss=2.0, lr=0.0)
    # training's val epoch on the same predictions (the method reads only the config and the epoch losses)
    stand_in = SimpleNamespace(cfg=cfg, epoch_loss={"train": 1.0, "val": 2.0}.__getitem__)
    trained = DetectorModule.validation_metrics(stand_in, [(i, b, s, g) for i, ((b, s), g)  # type: ignore[arg-type]
                                                           in enumerate(zip(trial.preds, trial.gts))])
    assert replace(trained, lr=0.0) == tuned  # the module sets lr after scoring
