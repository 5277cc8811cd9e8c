"""Seeded random detection cases shared by the metrics tests (GT boxes, some predictions jittered onto them)."""

from __future__ import annotations

import numpy as np


def random_detections(seed: int, n: int = 40, max_gt: int = 2, max_pred: int = 5, extent: float = 100.0,
                      side: tuple[float, float] = (10.0, 40.0), pred_side: tuple[float, float] | None = None,
                      noise: float = 3.0, healthy_every: int = 3, score_decimals: int | None = None,
                      dtype: type = np.float64) -> tuple[list, list]:
    """preds = [(boxes, scores)], gts = [boxes]; every `healthy_every`-th image has no GT; first predictions hit GTs."""
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for i in range(n):
        m = int(rng.integers(0, max_gt + 1)) if i % healthy_every else 0
        g = rng.uniform(0, extent, (m, 2))
        g = np.hstack([g, g + rng.uniform(*side, (m, 2))]).astype(dtype)
        k = int(rng.integers(0, max_pred + 1))
        c = rng.uniform(0, extent, (k, 2))
        b = np.hstack([c, c + rng.uniform(*(pred_side or side), (k, 2))]).astype(dtype)
        j = min(m, k)
        b[:j] = g[:j] + rng.normal(0, noise, (j, 4)).astype(dtype)
        b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 1)
        s = rng.uniform(0, 1, k)
        preds.append((b, (np.round(s, score_decimals) if score_decimals is not None else s).astype(dtype)))
        gts.append(g)
    return preds, gts
