"""Data-set scores at a score threshold: precision, recall, F1, mean IoU, the composite, and healthy-image figures.

Definitions (the one place they live; training, evaluation, bootstrap and curves all call these):

- Per image, predictions are matched as in ``dfudet.metrics.matching``. TP, FP and FN are summed over the data set.
- ``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``, ``F1 = 2PR / (P + R)``. A zero denominator gives 0,
  except when the data set has neither kept predictions nor ground-truth boxes at all: then P = R = F1 = 1
  (nothing to find and nothing falsely found).
- ``mean_iou`` is the mean of the recorded IoU of ALL kept predictions (FPs included, 0 for a prediction that found
  no unmatched box) across the data set, 0 when there are none; ``mean_iou_tp`` is the mean over TPs only (0 if none).
- ``composite = w.f1 * F1 + w.iou * mean_iou + w.recall * R + w.precision * P``; default weights
  f1 0.40, iou 0.25, recall 0.20, precision 0.15. Weights come as a mapping or an object with those attributes
  (``dfudet.config.CompositeWeights``); a mapping may leave keys out (they keep their default).
- Image level: a healthy image has no ground-truth box. ``image_specificity`` = share of healthy images without any
  kept prediction; ``fp_per_healthy_image`` = FPs on healthy images / number of healthy images;
  ``image_sensitivity`` = share of ulcer images with at least one TP. Each is 0 when there is no image of its kind
  (``n_healthy_images`` / ``n_ulcer_images`` tell that case apart).
- ``best_threshold`` maximises the composite over a threshold sweep; ties (within 1e-12) go to the HIGHER threshold,
  which keeps fewer false alarms for the same score. With ``min_recall`` only thresholds reaching that recall
  compete (none does: the highest-recall threshold is taken), so a few confident boxes cannot win.

The sweep ranks every image once and then reads any threshold off cumulative sums of the pooled ranked predictions,
so ``detection_scores`` (a one-threshold sweep) and ``sweep_thresholds`` give bit-identical numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

import numpy as np

from dfudet.errors import ConfigError, DataError
from dfudet.metrics.matching import RankedMatch, check_inputs, match_ranked

DEFAULT_WEIGHTS: dict[str, float] = {"f1": 0.40, "iou": 0.25, "recall": 0.20, "precision": 0.15}
# 0.01 .. 0.99: fine enough to find an operating point, cheap enough to run at every validation epoch.
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.01 * i, 2) for i in range(1, 100))
_TIE_TOL = 1e-12


def resolve_weights(weights: Any = None) -> dict[str, float]:
    """Composite weights from None (defaults), a mapping, or an object with f1/iou/recall/precision attributes."""
    if weights is None:
        return dict(DEFAULT_WEIGHTS)
    if isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(DEFAULT_WEIGHTS))
        if unknown:
            raise ConfigError(f"composite weights: unknown key(s) {unknown}; allowed: {sorted(DEFAULT_WEIGHTS)}")
        out = {k: float(weights.get(k, v)) for k, v in DEFAULT_WEIGHTS.items()}
    else:
        missing = [k for k in DEFAULT_WEIGHTS if not hasattr(weights, k)]
        if missing:
            raise ConfigError(f"composite weights: {type(weights).__name__} has no attribute(s) {missing}")
        out = {k: float(getattr(weights, k)) for k in DEFAULT_WEIGHTS}
    bad = [k for k, v in out.items() if not np.isfinite(v) or v < 0]
    if bad:
        raise ConfigError(f"composite weights: {bad} must be finite and >= 0; got {out}")
    return out


_Num = TypeVar("_Num", float, np.ndarray)


def composite_score(f1: _Num, iou: _Num, recall: _Num, precision: _Num, weights: Any = None) -> _Num:
    """The model-selection score: weighted sum of F1, mean IoU, recall and precision (the one place the formula is
    written; works on floats and, element-wise, on arrays such as a threshold sweep or bootstrap replicates)."""
    w = resolve_weights(weights)
    return w["f1"] * f1 + w["iou"] * iou + w["recall"] * recall + w["precision"] * precision


@dataclass(frozen=True)
class Scores:
    """Data-set scores at one score threshold (definitions in the module docstring)."""

    precision: float
    recall: float
    f1: float
    mean_iou: float       # over every kept prediction (FPs count 0 or their IoU)
    mean_iou_tp: float    # over true positives only
    composite: float
    tp: int
    fp: int
    fn: int
    image_sensitivity: float
    image_specificity: float
    fp_per_healthy_image: float
    n_images: int
    n_ulcer_images: int
    n_healthy_images: int
    n_gt: int
    n_pred: int            # kept predictions (score >= score_threshold)
    score_threshold: float  # the cut these scores were computed at
    iou_threshold: float

    def as_dict(self) -> dict[str, float | int]:
        """Plain dict (JSON reports)."""
        return asdict(self)


def prf(tp: Any, fp: Any, fn: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised precision, recall, F1 with the zero-division rules above (shared by sweep and bootstrap)."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    n_pred, n_gt = tp + fp, tp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(n_pred > 0, tp / n_pred, 0.0)
        r = np.where(n_gt > 0, tp / n_gt, 0.0)
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    empty = (n_pred == 0) & (n_gt == 0)
    return np.where(empty, 1.0, p), np.where(empty, 1.0, r), np.where(empty, 1.0, f1)


def safe_mean(total: Any, count: Any) -> np.ndarray:
    """total / count, 0 where count is 0."""
    total, count = np.asarray(total, dtype=np.float64), np.asarray(count, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def rank_dataset(preds: Sequence[tuple[Any, Any]], gts: Sequence[Any], iou_threshold: float = 0.5
                 ) -> list[RankedMatch]:
    """Validate the inputs and rank-match every image once (the expensive part of any sweep)."""
    p, g = check_inputs(preds, gts)
    if not p:
        raise DataError("no images to score: the prediction and ground-truth lists are empty")
    return [match_ranked(b, s, gt, iou_threshold) for (b, s), gt in zip(p, g)]


@dataclass
class PooledMatches:
    """All ranked predictions of a data set, pooled and sorted by score, with cumulative counts."""

    neg_scores: np.ndarray   # ascending (= scores descending), for searchsorted
    cum_tp: np.ndarray       # length P + 1, leading 0
    cum_iou: np.ndarray
    cum_tp_iou: np.ndarray
    cum_healthy: np.ndarray  # predictions on healthy images (all of them FPs)
    healthy_max: np.ndarray  # best score per healthy image (-inf when it has none)
    ulcer_first_tp: np.ndarray  # score of the first TP per ulcer image (-inf when it has none)
    n_gt: int
    n_images: int


def pool_ranked(ranked: Sequence[RankedMatch]) -> PooledMatches:
    """Pool ranked images into score-sorted cumulative counts so any threshold is one searchsorted away."""
    scores = np.concatenate([r.scores for r in ranked])
    order = np.argsort(-scores, kind="stable")
    healthy_flags = np.concatenate([np.full(len(r.scores), r.n_gt == 0) for r in ranked])

    def cum(x: np.ndarray) -> np.ndarray:
        return np.concatenate([[0.0], np.cumsum(x[order], dtype=np.float64)])

    is_tp = np.concatenate([r.is_tp for r in ranked]).astype(np.float64)
    ious = np.concatenate([r.ious for r in ranked])
    ninf = -np.inf
    return PooledMatches(
        neg_scores=-scores[order], cum_tp=cum(is_tp), cum_iou=cum(ious), cum_tp_iou=cum(ious * is_tp),
        cum_healthy=cum(healthy_flags.astype(np.float64)),
        healthy_max=np.array([r.scores[0] if len(r.scores) else ninf for r in ranked if r.n_gt == 0]),
        ulcer_first_tp=np.array([r.scores[r.is_tp][0] if r.is_tp.any() else ninf for r in ranked if r.n_gt > 0]),
        n_gt=sum(r.n_gt for r in ranked), n_images=len(ranked),
    )


def _scores_at(pool: PooledMatches, thresholds: np.ndarray, iou_threshold: float, weights: Any) -> list[Scores]:
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    k = np.searchsorted(pool.neg_scores, -t, side="right")  # number of predictions with score >= t
    tp = np.rint(pool.cum_tp[k]).astype(np.int64)
    fp = k - tp
    fn = pool.n_gt - tp
    p, r, f1 = prf(tp, fp, fn)
    mean_iou = safe_mean(pool.cum_iou[k], k)
    mean_iou_tp = safe_mean(pool.cum_tp_iou[k], tp)
    comp = composite_score(f1, mean_iou, r, p, weights)
    n_healthy, n_ulcer = len(pool.healthy_max), len(pool.ulcer_first_tp)
    quiet = (pool.healthy_max[None, :] < t[:, None]).sum(axis=1)
    found = (pool.ulcer_first_tp[None, :] >= t[:, None]).sum(axis=1)
    fp_healthy = pool.cum_healthy[k]
    rows = []
    for i in range(len(t)):
        rows.append(Scores(
            precision=float(p[i]), recall=float(r[i]), f1=float(f1[i]),
            mean_iou=float(mean_iou[i]), mean_iou_tp=float(mean_iou_tp[i]), composite=float(comp[i]),
            tp=int(tp[i]), fp=int(fp[i]), fn=int(fn[i]),
            image_sensitivity=float(found[i] / n_ulcer) if n_ulcer else 0.0,
            image_specificity=float(quiet[i] / n_healthy) if n_healthy else 0.0,
            fp_per_healthy_image=float(fp_healthy[i] / n_healthy) if n_healthy else 0.0,
            n_images=pool.n_images, n_ulcer_images=n_ulcer, n_healthy_images=n_healthy,
            n_gt=pool.n_gt, n_pred=int(k[i]),
            score_threshold=float(t[i]), iou_threshold=float(iou_threshold),
        ))
    return rows


def scores_from_ranked(ranked: Sequence[RankedMatch], thresholds: Sequence[float] | np.ndarray,
                       iou_threshold: float = 0.5, weights: Any = None) -> list[Scores]:
    """Scores at several thresholds from already ranked images (lets callers reuse one ranking)."""
    if not ranked:
        raise DataError("no images to score: the prediction and ground-truth lists are empty")
    return _scores_at(pool_ranked(ranked), np.asarray(thresholds, dtype=np.float64), iou_threshold, weights)


def detection_scores(preds: Sequence[tuple[Any, Any]], gts: Sequence[Any], score_threshold: float = 0.5,
                     iou_threshold: float = 0.5, weights: Any = None) -> Scores:
    """All data-set scores at one score threshold (definitions in the module docstring)."""
    ranked = rank_dataset(preds, gts, iou_threshold)
    return scores_from_ranked(ranked, [score_threshold], iou_threshold, weights)[0]


def sweep_thresholds(preds: Sequence[tuple[Any, Any]], gts: Sequence[Any], thresholds: Sequence[float] | None = None,
                     iou_threshold: float = 0.5, weights: Any = None) -> list[Scores]:
    """`detection_scores` at every threshold (default 0.01..0.99), ranking each image only once."""
    ts = DEFAULT_THRESHOLDS if thresholds is None else tuple(float(x) for x in thresholds)
    if not ts:
        raise ConfigError("sweep_thresholds: the threshold list is empty")
    ranked = rank_dataset(preds, gts, iou_threshold)
    return scores_from_ranked(ranked, ts, iou_threshold, weights)


def pick_best(sweep: Sequence[Scores], min_recall: float = 0.0) -> tuple[float, Scores]:
    """Row with the highest composite among those with recall >= min_recall; ties go to the higher threshold.

    The recall floor keeps an early, barely trained model from being "best" at a threshold where it reports a few
    confident boxes and misses nearly every ulcer (composite rewards precision and IoU too). When no threshold
    reaches the floor, the row with the highest recall is taken (ties: higher composite, then higher threshold), so
    such a model scores what it really finds.
    """
    if not 0.0 <= min_recall <= 1.0:
        raise ConfigError(f"min_recall must be in [0, 1], got {min_recall}")
    eligible = [s for s in sweep if s.recall >= min_recall - _TIE_TOL]
    if not eligible:
        top = max(s.recall for s in sweep)
        eligible = [s for s in sweep if s.recall >= top - _TIE_TOL]
    best = max(s.composite for s in eligible)
    tied = [s for s in eligible if s.composite >= best - _TIE_TOL]
    row = max(tied, key=lambda s: s.score_threshold)
    return float(row.score_threshold), row


def best_threshold(preds: Sequence[tuple[Any, Any]], gts: Sequence[Any], thresholds: Sequence[float] | None = None,
                   iou_threshold: float = 0.5, weights: Any = None, min_recall: float = 0.0
                   ) -> tuple[float, Scores]:
    """Operating score threshold that maximises the composite at recall >= min_recall (ties -> higher threshold)."""
    return pick_best(sweep_thresholds(preds, gts, thresholds, iou_threshold, weights), min_recall)


@dataclass(frozen=True)
class ValidationScores:
    """One validation epoch: what the kept model is chosen on. The same object goes from the metrics to the
    LightningModule, the callbacks (selection, metrics.csv) and the checkpoint, whose score fields have these names.

    precision .. fn are computed at `selection_threshold`: the config's fixed threshold, or the operating threshold
    when `train.select_at: operating`. `operating_threshold` is the threshold swept on val (with the recall floor)
    that predict, evaluate and serve use by default.
    """

    train_loss: float
    val_loss: float
    precision: float
    recall: float
    f1: float
    mean_iou: float
    composite: float
    tp: int
    fp: int
    fn: int
    selection_threshold: float
    operating_threshold: float
    composite_at_operating: float
    ap50: float
    ap50_95: float
    lr: float = float("nan")

    @classmethod
    def from_scores(cls, at: Scores, operating: Scores, *, ap50: float, ap50_95: float, train_loss: float,
                    val_loss: float, lr: float = float("nan")) -> ValidationScores:
        """Combine the scores at the selection threshold with the operating point and the threshold-free figures."""
        return cls(train_loss=float(train_loss), val_loss=float(val_loss), precision=at.precision,
                   recall=at.recall, f1=at.f1, mean_iou=at.mean_iou, composite=at.composite, tp=at.tp, fp=at.fp,
                   fn=at.fn, selection_threshold=at.score_threshold, operating_threshold=operating.score_threshold,
                   composite_at_operating=operating.composite, ap50=float(ap50), ap50_95=float(ap50_95),
                   lr=float(lr))

    @classmethod
    def unknown(cls, operating_threshold: float, selection_threshold: float) -> ValidationScores:
        """Scores of a model whose val scores were not recorded (e.g. exported from a Lightning last.ckpt): NaN,
        never invented; the thresholds are known."""
        nan = float("nan")
        return cls(train_loss=nan, val_loss=nan, precision=nan, recall=nan, f1=nan, mean_iou=nan, composite=nan,
                   tp=-1, fp=-1, fn=-1, selection_threshold=float(selection_threshold),
                   operating_threshold=float(operating_threshold), composite_at_operating=nan, ap50=nan, ap50_95=nan)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)
