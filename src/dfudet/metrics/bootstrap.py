"""Bootstrap confidence intervals for the detection scores, resampling whole images.

Each image is matched once (``dfudet.metrics.matching``) and reduced to its counts: TP, FP, FN, kept predictions,
the sum of their IoUs, and whether it is an ulcer image with at least one TP (image-level sensitivity). A bootstrap
replicate draws ``n_images`` images with replacement (a multinomial count per image), sums those counts and applies
the same formulas as ``dfudet.metrics.scores`` (zero-division rules included). The interval is the percentile
interval ``[alpha/2, 1 - alpha/2]`` of the replicates. The random generator is ``numpy.random.default_rng(seed)``,
so a seed always gives the same interval. ``paired_composite_gains`` draws the same replicates for two per-image
tables of the same images (two models, or one model at two input sizes) and returns the composite difference in each,
which is what ``dfudet tune`` uses to keep another input size only when it beats the training size in most of them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from dfudet.errors import ConfigError
from dfudet.metrics.scores import composite_score, prf, rank_dataset, resolve_weights, safe_mean

CI_METRICS: tuple[str, ...] = ("f1", "recall", "precision", "composite", "mean_iou", "image_sensitivity")
_CHUNK = 250  # replicates per batch: bounds memory at _CHUNK x n_images counts


def check_bootstrap_args(n_boot: int, alpha: float, where: str) -> None:
    """Shared argument checks of the bootstrap functions (clear ConfigError naming the function)."""
    if int(n_boot) < 1:
        raise ConfigError(f"{where}: n_boot must be >= 1, got {n_boot}")
    if not 0.0 < float(alpha) < 1.0:
        raise ConfigError(f"{where}: alpha must be between 0 and 1 (exclusive), got {alpha}")


def per_image_counts(preds: Sequence[tuple[Any, Any]], gts: Sequence[Any], score_threshold: float,
                     iou_threshold: float) -> np.ndarray:
    """One row per image: TP, kept predictions, ground-truth boxes, IoU sum of the kept, ulcer image, found (0/1)."""
    ranked = rank_dataset(preds, gts, iou_threshold)
    per_image = np.zeros((len(ranked), 6), dtype=np.float64)
    for i, rm in enumerate(ranked):
        n_kept = rm.n_kept(score_threshold)
        tp_i = rm.is_tp[:n_kept].sum()
        per_image[i] = (tp_i, n_kept, rm.n_gt, rm.ious[:n_kept].sum(), rm.n_gt > 0, rm.n_gt > 0 and tp_i > 0)
    return per_image


def scores_of_sums(tot: np.ndarray, weights: Any = None) -> dict[str, np.ndarray]:
    """CI_METRICS of summed per-image counts (rows: replicates), by the formulas of ``dfudet.metrics.scores``."""
    tp, kept, n_gt, iou_sum, ulcer_images, found = np.atleast_2d(tot).T
    p, r, f1 = prf(tp, kept - tp, n_gt - tp)
    mean_iou = safe_mean(iou_sum, kept)
    return {"f1": f1, "recall": r, "precision": p, "mean_iou": mean_iou,
            "image_sensitivity": safe_mean(found, ulcer_images),
            "composite": composite_score(f1, mean_iou, r, p, resolve_weights(weights))}


def resample_counts(n: int, n_boot: int, seed: int, chunk: int = _CHUNK) -> Iterator[np.ndarray]:
    """The image draws of every bootstrap here: blocks of up to `chunk` replicates, each row how often each of the
    `n` images was drawn (a multinomial count, ``numpy.random.default_rng(seed)``). One generator, so the detection,
    COCO and outline intervals of a report resample the same way."""
    rng = np.random.default_rng(seed)
    for start in range(0, int(n_boot), chunk):
        yield rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, int(n_boot) - start)).astype(np.float64)


def _resample_sums(per_image: list[np.ndarray], n_boot: int, seed: int) -> list[np.ndarray]:
    """Summed counts of each per-image table over the same multinomial image draws (paired when given several)."""
    sums: list[list[np.ndarray]] = [[] for _ in per_image]
    for counts in resample_counts(len(per_image[0]), n_boot, seed):
        for acc, table in zip(sums, per_image):
            acc.append(counts @ table)
    return [np.concatenate(acc) for acc in sums]


def bootstrap_ci(preds: Sequence[tuple[Any, Any]], gts: Sequence[Any], score_threshold: float,
                 iou_threshold: float, weights: Any = None, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> dict[str, tuple[float, float]]:
    """Percentile CIs of CI_METRICS, so reports show how much a score could move (COCO AP: ``coco_bootstrap``)."""
    check_bootstrap_args(n_boot, alpha, "bootstrap_ci")
    w = resolve_weights(weights)
    (tot,) = _resample_sums([per_image_counts(preds, gts, score_threshold, iou_threshold)], n_boot, seed)
    values = scores_of_sums(tot, w)
    q = [alpha / 2, 1 - alpha / 2]
    out: dict[str, tuple[float, float]] = {}
    for k in CI_METRICS:
        lo, hi = np.quantile(values[k], q)
        out[k] = (float(lo), float(hi))
    return out


def paired_composite_gains(base: np.ndarray, other: np.ndarray, weights: Any = None, n_boot: int = 1000,
                           seed: int = 0) -> np.ndarray:
    """Composite(other) - composite(base) in each bootstrap replicate, both scored on the same resampled images.

    ``base`` and ``other`` are ``per_image_counts`` tables of the same images in the same order (two models, or one
    model at two input sizes, each at its own threshold). Pairing removes the image-to-image variance the two share,
    so the share of replicates with a positive gain says how sure a val set of this size is that ``other`` is better.
    """
    check_bootstrap_args(n_boot, 0.05, "paired_composite_gains")
    if base.shape != other.shape or base.ndim != 2 or base.shape[1] != 6:
        raise ConfigError(f"paired_composite_gains: per-image tables of the same images are needed, got shapes "
                          f"{base.shape} and {other.shape}")
    if len(base) == 0:
        raise ConfigError("paired_composite_gains: no images")
    a, b = _resample_sums([base, other], n_boot, seed)
    return np.asarray(scores_of_sums(b, weights)["composite"] - scores_of_sums(a, weights)["composite"])
