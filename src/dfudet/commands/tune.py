"""`dfudet tune`: choose the inference input size, and the operating threshold at that size, on the val split.

A detector trained at 512 px can find small ulcers better when the photo is fed larger (a 10 px ulcer at 640 px
spans 12.5 px: a cell more of the stride-8 map), at about the square of the side in time. Which size helps is a
property of the trained model and the data, so it is chosen after training, on val, never on test: every size in
`train.tune_img_sizes` (and the training size itself) predicts val, the operating threshold is swept at each size by
the rule training uses (`train.operating_min_recall`, `train.composite_weights`), and the size with the best val
composite at its own threshold is kept (ties: the smaller, cheaper size). A size other than the training size
competes only if it beats the training size in at least `train.tune_confidence` (default 0.95) of paired bootstrap
replicates over the val images (each size at its own threshold, fixed in the resamples; several sizes are tested
without a multiple-testing correction). On ~120 val photos a size kept for a small val gain can lose on test
(measured: Faster R-CNN + Lite0 on FUSeg, +0.021 val composite winning 91% of the resamples, docs/experiments.md).

The result is a new checkpoint (`tuned_model.pth` by default; the kept `best_model.pth` is never changed) with
`data.infer_img_size` and that threshold in it, and the val scores at that size: evaluate, predict, serve and
export then use both. Weights, anchors and everything else are the trained model's own.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from dfudet.checkpoint import atomic_torch_save, build_best_payload, load_for_inference
from dfudet.commands.split_predictions import predict_split, preds_and_gts
from dfudet.data.dataset import DetectionDataset
from dfudet.errors import ConfigError, DataError
from dfudet.inference.predictor import Predictor
from dfudet.metrics.bootstrap import paired_composite_gains, per_image_counts
from dfudet.metrics.calibration import (
    ECE_BINS,
    Calibration,
    box_outcomes,
    choose_review_threshold,
    expected_calibration_error,
    fit_calibration,
    triage_table,
)
from dfudet.metrics.scores import Scores, ValidationScores
from dfudet.metrics.validation import score_validation
from dfudet.utils import atomic_write_bytes

log = logging.getLogger("dfudet")
TUNED_NAME = "tuned_model.pth"
RESAMPLES, RESAMPLE_SEED = 1000, 0  # paired bootstrap of the val images behind `train.tune_confidence`


@dataclass(frozen=True)
class SizeTrial:
    """The val figures of one input size at its own operating threshold."""

    img_size: int
    operating: Scores  # at the threshold swept on val (what predict/serve use)
    at_selection: Scores  # at the training's selection threshold (= operating with select_at: operating)
    ap50: float
    ap50_95: float
    seconds: float
    per_image: np.ndarray = field(repr=False, compare=False)  # per_image_counts at the operating threshold
    p_better: float | None = None  # share of paired val resamples where it beats the training size (None: it is it)
    preds: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list, repr=False, compare=False)
    gts: list[np.ndarray] = field(default_factory=list, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready row of the tuning table."""
        o = self.operating
        return {"img_size": self.img_size, "operating_threshold": o.score_threshold, "composite": o.composite,
                "precision": o.precision, "recall": o.recall, "f1": o.f1, "mean_iou": o.mean_iou,
                "ap50": self.ap50, "ap50_95": self.ap50_95, "seconds": round(self.seconds, 2),
                "p_better_than_train_size": self.p_better}


def candidate_sizes(train_size: int, sizes: list[int] | None, configured: list[int]) -> list[int]:
    """The sizes to try: the given ones (else the config's), always with the training size, ascending."""
    chosen = list(sizes) if sizes else list(configured)
    bad = [s for s in chosen if not 64 <= int(s) <= 4096]
    if bad:
        raise ConfigError(f"--sizes must be input sides in 64..4096 pixels, got {bad}")
    return sorted({int(train_size), *(int(s) for s in chosen)})


def with_confidence(trials: list[SizeTrial], train_size: int, weights: Any = None, n_boot: int = RESAMPLES,
                    seed: int = RESAMPLE_SEED) -> list[SizeTrial]:
    """The trials with `p_better` filled in: the share of paired bootstrap replicates (the same resampled val images
    for both) in which each size's composite beats the training size's."""
    base = next((t for t in trials if t.img_size == train_size), None)
    if base is None:
        raise ConfigError(f"the training size {train_size} px must be among the sizes tried")
    return [t if t is base else replace(
        t, p_better=float(np.mean(paired_composite_gains(base.per_image, t.per_image, weights, n_boot, seed) > 0)))
        for t in trials]


def pick_size(trials: list[SizeTrial], train_size: int, confidence: float = 0.0) -> SizeTrial:
    """The best val composite at its operating threshold among the training size and the sizes whose `p_better`
    reaches `confidence` (0: every size); ties (1e-12) go to the smaller size."""
    if not trials:
        raise ConfigError("no input size was tried")
    if confidence > 0 and any(t.p_better is None for t in trials if t.img_size != train_size):
        raise ConfigError("pick_size with a confidence needs p_better of every other size (see with_confidence)")
    eligible = [t for t in trials if t.img_size == train_size or confidence <= 0 or (t.p_better or 0.0) >= confidence]
    if not eligible:
        raise ConfigError(f"the training size {train_size} px must be among the sizes tried")
    best = max(t.operating.composite for t in eligible)
    return min((t for t in eligible if t.operating.composite >= best - 1e-12), key=lambda t: t.img_size)


def _trial(base: Predictor, dataset: DetectionDataset, size: int, batch_size: int, progress: bool) -> SizeTrial:
    """Val scores of the loaded model fed at `size` (one model for every size: only its input side changes)."""
    start = time.perf_counter()
    predictor = Predictor(base.model, base.spec, size, base.operating_threshold, base.info, device=str(base.device))
    cfg = base.info.config
    assert cfg is not None  # PyTorch checkpoints always carry their config
    t = cfg.train
    preds, gts = preds_and_gts(predict_split(predictor, dataset, batch_size, progress))
    v = score_validation(preds, gts, t)
    per_image = per_image_counts(preds, gts, v.operating.score_threshold, t.iou_threshold)
    return SizeTrial(size, v.operating, v.at_selection, v.ap50, v.ap50_95, time.perf_counter() - start, per_image,
                     preds=preds, gts=gts)


def calibrate_on_val(trial: SizeTrial, train: Any) -> tuple[Calibration | None, float | None, dict[str, Any]]:
    """(calibration or None, review threshold or None, table entry) from the kept size's val detections.

    The review threshold is the highest score at which `train.review_sensitivity` of the val ulcer photos have a
    box. The calibration maps every val box's score to the chance that it is a true ulcer (`train.calibration`); one
    that cannot be fitted (too few boxes, or none true / none false) is left out with the reason, and the model's
    outputs then carry no confidence."""
    best_scores = [float(s.max()) if len(s) else 0.0 for _, s in trial.preds]
    has_ulcer = [len(g) > 0 for g in trial.gts]
    info: dict[str, Any] = {"review_sensitivity_target": train.review_sensitivity}
    review: float | None = None
    if any(has_ulcer):
        review = choose_review_threshold(best_scores, has_ulcer, train.review_sensitivity,
                                         trial.operating.score_threshold)
        info["triage_val"] = triage_table(best_scores, has_ulcer, trial.operating.score_threshold, review)
    else:
        log.warning("no review threshold stored: the val split has no ulcer photo to reach a sensitivity on")
        info["review_refused"] = "the val split has no ulcer photo"
    info["review_threshold"] = review
    if train.calibration == "none":
        info["calibration"] = None
        return None, review, info
    scores, truth, photo = box_outcomes(trial.preds, trial.gts, train.iou_threshold)
    try:
        cal, losses = fit_calibration(scores, truth, photo, method=train.calibration,
                                      iou_threshold=train.iou_threshold)
    except DataError as exc:
        log.warning("no calibration stored: %s", exc)
        info.update({"calibration": None, "calibration_refused": str(exc)})
        return None, review, info
    info["calibration"] = {**cal.as_dict(), "cv_log_loss": losses,
                           "ece_val_raw": expected_calibration_error(scores, truth),
                           "ece_val_calibrated_in_sample": expected_calibration_error(cal.apply(scores), truth),
                           "ece_bins": f"{ECE_BINS} equal-mass"}
    return cal, review, info


def run_tune(checkpoint: str | Path, data: str | Path, out: str | Path | None = None, sizes: list[int] | None = None,
             split: str | None = None, device: str = "cpu", batch_size: int = 8, progress: bool = True,
             confidence: float | None = None) -> dict[str, Any]:
    """Try each input size on val, write the tuned checkpoint (and its .json table) and return the table."""
    checkpoint = Path(checkpoint)
    out = Path(out) if out is not None else checkpoint.with_name(TUNED_NAME)
    if out.resolve() == checkpoint.resolve():
        raise ConfigError(f"--out {out} is the checkpoint being tuned; write the tuned model to another file "
                          f"(default {TUNED_NAME} next to it) so the kept model stays as training wrote it")
    if out.suffix != ".pth":
        raise ConfigError(f"--out {out}: the tuned checkpoint's name must end in .pth")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if confidence is not None and not 0.0 <= confidence <= 1.0:
        raise ConfigError(f"--confidence must be between 0 and 1, got {confidence}")
    ckpt = load_for_inference(checkpoint)
    cfg = ckpt.config
    split = split or cfg.data.val_split
    if split == cfg.data.test_split:
        raise ConfigError(f"--split {split} is the test split: choosing the input size or threshold on it would make "
                          "every test figure optimistic; tune on val")
    data = Path(data)
    if not data.exists():
        raise DataError(f"{data}: data path does not exist (expected the run's LMDB cache dir or dataset dir)")
    dataset = DetectionDataset(data, split)
    if len(dataset) == 0:
        raise DataError(f"{data}: split {split!r} has no images to tune on")
    tried = candidate_sizes(ckpt.identity.img_size, sizes, cfg.train.tune_img_sizes)
    base = Predictor.from_loaded(ckpt, device=device)  # the checkpoint is read once
    trials = []
    for size in tried:
        trial = _trial(base, dataset, size, batch_size, progress)
        o = trial.operating
        log.info("tune %s px: threshold %.2f composite %.4f (P %.3f R %.3f IoU %.3f) AP50 %.4f, %.0f s", size,
                 o.score_threshold, o.composite, o.precision, o.recall, o.mean_iou, trial.ap50, trial.seconds)
        trials.append(trial)
    trials = with_confidence(trials, ckpt.identity.img_size, cfg.train.composite_weights)
    conf = cfg.train.tune_confidence if confidence is None else float(confidence)
    for trial in trials:
        if trial.p_better is not None:
            log.info("tune %s px beats %s px in %.1f%% of paired val resamples (needed: %.1f%%)", trial.img_size,
                     ckpt.identity.img_size, 100 * trial.p_better, 100 * conf)
    best = pick_size(trials, ckpt.identity.img_size, conf)
    old = ckpt.scores
    nan = math.nan
    scores = ValidationScores.from_scores(
        best.at_selection, best.operating, ap50=best.ap50, ap50_95=best.ap50_95,
        train_loss=old.train_loss if old else nan, val_loss=old.val_loss if old else nan, lr=old.lr if old else nan)
    infer = None if best.img_size == ckpt.identity.img_size else best.img_size
    tuned_cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"infer_img_size": infer})})
    calibration, review, triage = calibrate_on_val(best, cfg.train)
    payload = build_best_payload(epoch=ckpt.epoch if ckpt.epoch is not None else -1,
                                 model_state_dict=ckpt.model_state_dict, optimizer_state_dict={}, scores=scores,
                                 config=tuned_cfg, origin=ckpt.origin if ckpt.origin != "lightning" else "train",
                                 calibration=calibration, review_threshold=review,
                                 weights_source=ckpt.weights_source)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(payload, out)
    table = {"checkpoint": str(checkpoint), "tuned_checkpoint": str(out), "data": str(data), "split": split,
             "train_img_size": ckpt.identity.img_size, "chosen_img_size": best.img_size,
             "operating_threshold": best.operating.score_threshold,
             **triage,
             "confidence": conf,
             "rule": "best val composite at each size's own operating threshold (recall floor "
                     f"{cfg.train.operating_min_recall}) among the training size and the sizes that beat it in at "
                     f"least {100 * conf:g}% of {RESAMPLES} paired bootstrap resamples of the val images (seed "
                     f"{RESAMPLE_SEED}); ties go to the smaller size",
             "note": "val_loss and train_loss in the tuned checkpoint are the training's, at the training size",
             "trials": [t.as_dict() for t in trials]}
    atomic_write_bytes(out.with_suffix(".json"), json.dumps(table, indent=1).encode("utf-8"))
    return table
