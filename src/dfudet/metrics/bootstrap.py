"""Bootstrap confidence intervals for the detection scores, resampling whole images.

Each image is matched once (``dfudet.metrics.matching``) and reduced to its counts: TP, FP, FN, kept predictions,
the sum of their IoUs, and whether it is an ulcer image with at least one TP (image-level sensitivity). A bootstrap
replicate draws ``n_images`` images with replacement (a multinomial count per image), sums those counts and applies
the same formulas as ``dfudet.metrics.scores`` (zero-division rules included). The interval is the percentile
interval ``[alpha/2, 1 - alpha/2]`` of the replicates. The random generator is ``numpy.random.default_rng(seed)``,
so a seed always gives the same interval.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def bootstrap_ci(preds: Sequence[tuple[Any, Any]], gts: Sequence[Any], score_threshold: float,
                 iou_threshold: float, weights: Any = None, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> dict[str, tuple[float, float]]:
    """Percentile CIs of CI_METRICS, so reports show how much a score could move (COCO AP: ``coco_bootstrap``)."""
    check_bootstrap_args(n_boot, alpha, "bootstrap_ci")
    w = resolve_weights(weights)
    ranked = rank_dataset(preds, gts, iou_threshold)
    per_image = np.zeros((len(ranked), 6), dtype=np.float64)  # tp, kept, n_gt, iou sum, ulcer image, found
    for i, rm in enumerate(ranked):
        n_kept = rm.n_kept(score_threshold)
        tp_i = rm.is_tp[:n_kept].sum()
        per_image[i] = (tp_i, n_kept, rm.n_gt, rm.ious[:n_kept].sum(), rm.n_gt > 0, rm.n_gt > 0 and tp_i > 0)
    n = len(ranked)
    rng = np.random.default_rng(seed)
    sums = []
    for start in range(0, int(n_boot), _CHUNK):
        size = min(_CHUNK, int(n_boot) - start)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype(np.float64)
        sums.append(counts @ per_image)
    tot = np.concatenate(sums)
    tp, kept, n_gt, iou_sum, ulcer_images, found = tot.T
    p, r, f1 = prf(tp, kept - tp, n_gt - tp)
    mean_iou = safe_mean(iou_sum, kept)
    values = {
        "f1": f1, "recall": r, "precision": p, "mean_iou": mean_iou,
        "image_sensitivity": safe_mean(found, ulcer_images),
        "composite": composite_score(f1, mean_iou, r, p, w),
    }
    q = [alpha / 2, 1 - alpha / 2]
    out: dict[str, tuple[float, float]] = {}
    for k in CI_METRICS:
        lo, hi = np.quantile(values[k], q)
        out[k] = (float(lo), float(hi))
    return out
