"""The one val scoring rule (dfudet.metrics.validation): training's val epoch and `dfudet tune` call it."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from dfudet.config import load_config
from dfudet.metrics.coco import coco_map
from dfudet.metrics.scores import best_threshold, detection_scores
from dfudet.metrics.validation import score_validation


def _split() -> tuple[list[tuple[np.ndarray, np.ndarray]], list[np.ndarray]]:
    """Ten photos: one found exactly at 0.95, nine with a loose hit and three false alarms at 0.3, one healthy."""
    gt = np.array([[10.0, 10.0, 50.0, 50.0]])
    fps = np.array([[100.0, 100, 140, 140], [150, 150, 190, 190], [200, 10, 240, 50]])
    preds = [(gt.copy(), np.array([0.95]))]
    preds += [(np.vstack([[[10.0, 10, 50, 34]], fps]), np.full(4, 0.3)) for _ in range(8)]
    preds += [(fps[:1].copy(), np.array([0.6]))]
    return preds, [gt] * 9 + [np.zeros((0, 4))]


def test_operating_select_at_reads_every_score_at_the_swept_threshold_with_the_recall_floor():
    preds, gts = _split()
    train = load_config(None, ["train.select_at=operating", "train.operating_min_recall=0.5"]).train
    v = score_validation(preds, gts, train)
    assert v.at_selection is v.operating
    # the floor: 0.95 alone finds 1 of 9 ulcers, so the threshold goes down to the loose hits at 0.3
    assert v.operating.score_threshold <= 0.3 and v.operating.recall >= 0.5
    ref_t, ref = best_threshold(preds, gts, iou_threshold=train.iou_threshold, weights=train.composite_weights,
                                min_recall=0.5)
    assert v.operating == ref and v.operating.score_threshold == ref_t
    ap = coco_map(preds, gts)
    assert (v.ap50, v.ap50_95) == (ap["AP50"], ap["AP50_95"]) and 0 < v.ap50 < 1
    s = v.scores(train_loss=1.0, val_loss=2.0, lr=0.1)
    assert s.selection_threshold == s.operating_threshold == v.operating.score_threshold
    assert (s.train_loss, s.val_loss, s.lr, s.composite, s.ap50) == (1.0, 2.0, 0.1, ref.composite, v.ap50)


def test_fixed_select_at_scores_the_selection_at_the_configured_threshold():
    preds, gts = _split()
    train = load_config(None, ["train.selection_threshold=0.9", "train.operating_min_recall=0.0",
                               "train.composite_weights.iou=0"]).train
    v = score_validation(preds, gts, train)
    assert v.at_selection == detection_scores(preds, gts, 0.9, train.iou_threshold, train.composite_weights)
    assert v.at_selection.tp == 1 and v.at_selection.fp == 0 and v.operating.score_threshold != 0.9
    s = v.scores()
    assert s.selection_threshold == 0.9 and s.composite == v.at_selection.composite
    assert s.composite_at_operating == v.operating.composite and math.isnan(s.val_loss)


def test_module_and_tune_score_val_with_it(monkeypatch: pytest.MonkeyPatch):
    """Training's val epoch goes through score_validation (tune's path: tests/commands/test_tune.py)."""
    from types import SimpleNamespace

    from dfudet.engine import module as module_mod

    calls = []

    def spy(*args, **kwargs):
        calls.append(args)
        return score_validation(*args, **kwargs)

    monkeypatch.setattr(module_mod, "score_validation", spy)  # fails when the module stops importing it
    preds, gts = _split()
    cfg = load_config(None, ["train.select_at=operating"])
    # the method reads the config and the epoch losses only: no detector needs to be built for it
    stand_in = SimpleNamespace(cfg=cfg, epoch_loss={"train": 1.5, "val": 2.5}.__getitem__)
    got = module_mod.DetectorModule.validation_metrics(stand_in, [(i, b, s, g) for i, ((b, s), g)  # type: ignore[arg-type]
                                                                  in enumerate(zip(preds, gts))])
    assert len(calls) == 1
    assert replace(got, lr=0.0) == score_validation(preds, gts, cfg.train).scores(train_loss=1.5, val_loss=2.5, lr=0.0)
