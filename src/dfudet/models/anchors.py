"""Anchor boxes: sensible defaults, data-driven proposals from training boxes, and a validated AnchorGenerator."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy.cluster.vq import kmeans2
from torchvision.models.detection.anchor_utils import AnchorGenerator

from dfudet.config import ModelConfig
from dfudet.errors import ConfigError

# Default anchor sizes (sqrt(w*h), px) at a 512 px model input, smallest FPN level first. torchvision's
# (32..512) suit 800 px COCO images; foot-ulcer boxes at 512 px are much smaller (FUSeg train: median
# sqrt-area 49 px, 5th-95th percentile 15-123 px, a few 6-16 px boxes), so the ladder is halved to 16..256.
# It is scaled linearly with img_size because the same photographs are resized to the model input.
DEFAULT_SIZES_512: tuple[float, ...] = (16.0, 32.0, 64.0, 128.0, 256.0)


def default_anchor_sizes(img_size: int, n_levels: int) -> list[list[float]]:
    """Default sizes per FPN level for this input size: one size per level for 5 levels, the whole ladder on each
    level otherwise.
    """
    scale = img_size / 512.0
    ladder = [round(s * scale, 2) for s in DEFAULT_SIZES_512]
    if n_levels == len(ladder):
        return [[s] for s in ladder]
    # Fewer/more levels (MobileNet FPN has 3): torchvision's convention puts every size on every level.
    return [list(ladder) for _ in range(n_levels)]


def make_anchor_generator(
    sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[float], n_levels: int, model_name: str
) -> AnchorGenerator:
    """Build an AnchorGenerator after checking the level count and the shared per-location anchor count."""
    if len(sizes) != n_levels:
        raise ConfigError(
            f"model.anchors.sizes has {len(sizes)} levels but {model_name} has {n_levels} feature maps "
            f"(FPN levels): give exactly {n_levels} lists of sizes, smallest first"
        )
    counts = {len(level) for level in sizes}
    if len(counts) != 1:
        raise ConfigError(
            f"model.anchors.sizes levels hold different numbers of sizes ({[len(level) for level in sizes]}); "
            f"the RPN head is shared across levels, so every level needs the same number of sizes"
        )
    ratios = tuple(float(r) for r in aspect_ratios)
    return AnchorGenerator(
        sizes=tuple(tuple(float(s) for s in level) for level in sizes),
        aspect_ratios=(ratios,) * n_levels,
    )


def _valid_wh(box_wh: np.ndarray, what: str) -> np.ndarray:
    wh = np.asarray(box_wh, dtype=np.float64)
    if wh.ndim != 2 or wh.shape[1] != 2:
        raise ConfigError(f"{what}: expected box widths/heights of shape (N, 2), got shape {wh.shape}")
    # Degenerate boxes (zero/negative/non-finite side) carry no size information: skip them.
    wh = wh[np.isfinite(wh).all(axis=1) & (wh > 0).all(axis=1)]
    if len(wh) == 0:
        raise ConfigError(
            f"{what}: no training boxes with positive width and height to derive anchors from; "
            "set model.anchors.auto=false or check that the training split has boxes"
        )
    return wh


def _kmeans_1d(values: np.ndarray, k: int) -> np.ndarray:
    """Deterministic 1-D k-means (quantile initialisation), sorted centres."""
    init = np.quantile(values, (np.arange(k) + 0.5) / k)
    if np.unique(values).size <= k:
        return np.sort(init)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an empty cluster keeps its previous centre: fine here
        centres, _ = kmeans2(values.reshape(-1, 1), init.reshape(-1, 1), iter=50, minit="matrix", missing="warn")
    return np.sort(centres.ravel())


def propose_anchor_sizes(
    box_wh: np.ndarray, n_levels: int = 5, method: str = "quantile", per_level: int = 1
) -> list[list[float]]:
    """Anchor sizes fitted to the training boxes (model-input px), `per_level` sizes on each of `n_levels` FPN levels.

    Sizes are sqrt(w*h). "quantile": evenly spaced quantiles of the log size from the 2nd to the 98th percentile, so
    the ladder spans the data but ignores a few outliers. "kmeans": centres of a 1-D k-means on the log size.
    Sizes increase with the level (small objects on the fine, high-resolution maps).
    """
    if n_levels < 1 or per_level < 1:
        raise ConfigError(f"n_levels ({n_levels}) and per_level ({per_level}) must be >= 1")
    wh = _valid_wh(box_wh, "anchor size proposal")
    log_s = 0.5 * np.log(wh[:, 0] * wh[:, 1])
    k = n_levels * per_level
    if method == "quantile":
        qs = np.linspace(0.02, 0.98, k) if k > 1 else np.array([0.5])
        centres = np.quantile(log_s, qs)
    elif method == "kmeans":
        centres = _kmeans_1d(log_s, k)
    else:
        raise ConfigError(f"unknown anchor size method {method!r}; use 'quantile' or 'kmeans'")
    sizes = sorted(round(float(np.exp(c)), 1) for c in centres)
    return [sizes[i * per_level : (i + 1) * per_level] for i in range(n_levels)]


def propose_aspect_ratios(box_wh: np.ndarray, k: int = 3) -> list[float]:
    """`k` anchor aspect ratios (h/w, torchvision's convention) from a 1-D k-means on the log ratio of training
    boxes.
    """
    if k < 1:
        raise ConfigError(f"number of aspect ratios must be >= 1, got {k}")
    wh = _valid_wh(box_wh, "aspect ratio proposal")
    log_r = np.log(wh[:, 1] / wh[:, 0])
    return sorted(round(float(np.exp(c)), 2) for c in _kmeans_1d(log_r, k))


def anchor_generator_for(cfg: ModelConfig, img_size: int, n_levels: int) -> AnchorGenerator:
    """model.anchors.sizes (or the img_size-scaled defaults) x aspect_ratios, checked against the model's levels."""
    anchors = cfg.anchors
    sizes = anchors.sizes if anchors.sizes is not None else default_anchor_sizes(img_size, n_levels)
    return make_anchor_generator(sizes, anchors.aspect_ratios, n_levels, cfg.name)
