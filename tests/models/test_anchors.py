"""Anchor helpers: data-driven sizes/ratios on synthetic box sets, defaults and AnchorGenerator validation."""

from __future__ import annotations

import numpy as np
import pytest

from dfudet.errors import ConfigError
from dfudet.models.anchors import (
    default_anchor_sizes,
    make_anchor_generator,
    propose_anchor_sizes,
    propose_aspect_ratios,
)


def _boxes(rng: np.random.Generator, size: float, ratio: float, n: int, jitter: float = 0.1) -> np.ndarray:
    """n boxes of about sqrt(w*h)=size and h/w=ratio (log-normal jitter), as (w, h)."""
    s = size * np.exp(rng.normal(0, jitter, n))
    r = ratio * np.exp(rng.normal(0, jitter / 2, n))
    return np.stack([s / np.sqrt(r), s * np.sqrt(r)], axis=1)


@pytest.fixture()
def two_clusters() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.concatenate([_boxes(rng, 10, 1.0, 300), _boxes(rng, 150, 1.0, 200)])


@pytest.mark.parametrize("method", ["quantile", "kmeans"])
def test_sizes_increase_and_span_small_and_large_clusters(two_clusters: np.ndarray, method: str) -> None:
    sizes = propose_anchor_sizes(two_clusters, n_levels=5, method=method)
    flat = [s for level in sizes for s in level]
    assert len(sizes) == 5 and all(len(level) == 1 for level in sizes)
    assert all(type(s) is float for s in flat)
    assert flat == sorted(flat) and flat[0] < flat[-1]
    data = np.sqrt(two_clusters.prod(axis=1))
    assert data.min() <= flat[0] <= 12.0, flat  # reaches down to the small cluster
    assert 130.0 <= flat[-1] <= data.max(), flat  # and up to the large one


def test_kmeans_sizes_find_the_clusters(two_clusters: np.ndarray) -> None:
    sizes = [level[0] for level in propose_anchor_sizes(two_clusters, n_levels=2, method="kmeans")]
    assert sizes[0] == pytest.approx(10, rel=0.1) and sizes[1] == pytest.approx(150, rel=0.1)


def test_two_sizes_per_level_are_grouped_in_order(two_clusters: np.ndarray) -> None:
    sizes = propose_anchor_sizes(two_clusters, n_levels=3, per_level=2)
    assert [len(level) for level in sizes] == [2, 2, 2]
    flat = [s for level in sizes for s in level]
    assert flat == sorted(flat)


def test_proposals_are_deterministic_and_order_independent(two_clusters: np.ndarray) -> None:
    shuffled = np.random.default_rng(1).permutation(two_clusters)
    for method in ("quantile", "kmeans"):
        assert propose_anchor_sizes(two_clusters, method=method) == propose_anchor_sizes(shuffled, method=method)
    assert propose_aspect_ratios(two_clusters) == propose_aspect_ratios(shuffled)


def test_aspect_ratios_near_the_true_ones() -> None:
    rng = np.random.default_rng(2)
    wh = np.concatenate([_boxes(rng, 60, r, 150) for r in (0.5, 1.0, 2.0)])
    ratios = propose_aspect_ratios(wh, k=3)
    assert all(type(r) is float for r in ratios)
    assert ratios == sorted(ratios)
    for got, want in zip(ratios, (0.5, 1.0, 2.0)):
        assert got == pytest.approx(want, rel=0.1), ratios
    # ratio is h/w (torchvision's convention): tall boxes give ratios > 1
    tall = _boxes(rng, 60, 3.0, 50)
    assert propose_aspect_ratios(tall, k=1)[0] == pytest.approx(3.0, rel=0.1)


def test_degenerate_boxes_are_skipped_and_identical_boxes_work() -> None:
    wh = np.array([[32.0, 32.0]] * 10 + [[0.0, 5.0], [np.nan, 3.0]])
    assert propose_anchor_sizes(wh, n_levels=3) == [[32.0], [32.0], [32.0]]
    assert propose_aspect_ratios(wh, k=2) == [1.0, 1.0]


@pytest.mark.parametrize(
    "wh, message",
    [
        (np.zeros((0, 2)), "no training boxes"),
        (np.array([[0.0, 4.0], [3.0, -1.0]]), "no training boxes"),
        (np.ones((4, 3)), "shape (N, 2)"),
    ],
)
def test_bad_input_raises_config_error(wh: np.ndarray, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        propose_anchor_sizes(wh)
    assert message in str(err.value)
    with pytest.raises(ConfigError) as err:
        propose_aspect_ratios(wh)
    assert message in str(err.value)


def test_unknown_method_raises(two_clusters: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="unknown anchor size method 'median'"):
        propose_anchor_sizes(two_clusters, method="median")


def test_default_sizes_scale_with_input_size() -> None:
    assert default_anchor_sizes(512, 5) == [[16.0], [32.0], [64.0], [128.0], [256.0]]
    assert default_anchor_sizes(256, 5) == [[8.0], [16.0], [32.0], [64.0], [128.0]]
    # three levels (MobileNet FPN): the whole ladder on every level, as torchvision does
    assert default_anchor_sizes(1024, 3) == [[32.0, 64.0, 128.0, 256.0, 512.0]] * 3


def test_anchor_generator_counts_and_validation() -> None:
    gen = make_anchor_generator([[8.0, 11.0], [16.0, 22.0], [32.0, 45.0]], [0.5, 1.0, 2.0, 3.0], 3, "m")
    assert gen.num_anchors_per_location() == [8, 8, 8]
    assert gen.sizes[0] == (8.0, 11.0) and gen.aspect_ratios[2] == (0.5, 1.0, 2.0, 3.0)
    with pytest.raises(ConfigError) as err:
        make_anchor_generator([[8.0]] * 4, [1.0], 5, "fasterrcnn_efficientnet")
    assert "has 4 levels but fasterrcnn_efficientnet has 5 feature maps" in str(err.value)
    with pytest.raises(ConfigError, match="different numbers of sizes"):
        make_anchor_generator([[8.0], [16.0, 20.0], [32.0]], [1.0], 3, "m")
