"""BalancedBatchSampler: fixed ulcer share per batch, determinism per (seed, epoch), DDP shards, fallbacks."""

from __future__ import annotations

import math
import warnings
from collections import Counter

import pytest

from dfudet.data.sampler import BalancedBatchSampler, ulcers_per_batch
from dfudet.errors import ConfigError, DataError

# 30 ulcer and 12 healthy images, interleaved
HEALTHY = [i % 7 in (1, 4) for i in range(42)]
ULCER = {i for i, h in enumerate(HEALTHY) if not h}


@pytest.mark.parametrize(("batch_size", "fraction", "n_pos"),
                         [(4, 0.5, 2), (5, 0.5, 3), (8, 0.25, 2), (3, 1 / 3, 1), (6, 0.75, 5), (2, 1.0, 2),
                          (7, 0.9, 6)])
def test_exact_ulcer_share_in_every_batch(batch_size: int, fraction: float, n_pos: int) -> None:
    assert ulcers_per_batch(batch_size, fraction) == n_pos
    s = BalancedBatchSampler(HEALTHY, batch_size, fraction, seed=3)
    batches = list(s)
    assert len(batches) == len(s) == math.ceil(len(ULCER) / n_pos)
    for b in batches:
        assert len(b) == batch_size
        assert sum(i in ULCER for i in b) == n_pos
    seen = [i for b in batches for i in b if i in ULCER]
    assert set(seen) == ULCER  # every ulcer image at least once per epoch
    assert max(Counter(seen).values()) <= 2


def test_deterministic_per_seed_and_epoch() -> None:
    a = BalancedBatchSampler(HEALTHY, 4, seed=1)
    b = BalancedBatchSampler(HEALTHY, 4, seed=1)
    assert list(a) == list(b) == list(a)
    a.set_epoch(1)
    e1 = list(a)
    assert e1 != list(b)
    b.set_epoch(1)
    assert e1 == list(b)
    assert list(BalancedBatchSampler(HEALTHY, 4, seed=2)) != list(BalancedBatchSampler(HEALTHY, 4, seed=1))


def test_two_ranks_get_disjoint_equal_shards() -> None:
    kw = {"batch_size": 4, "positive_fraction": 0.5, "seed": 5}
    flags = [False] * 32 + [True] * 10  # 32 ulcer images = 16 batches = 8 per rank: one pass over the pool
    r0 = BalancedBatchSampler(flags, num_replicas=2, rank=0, **kw)
    r1 = BalancedBatchSampler(flags, num_replicas=2, rank=1, **kw)
    for epoch in (0, 3):
        r0.set_epoch(epoch)
        r1.set_epoch(epoch)
        b0, b1 = list(r0), list(r1)
        assert len(b0) == len(b1) == len(r0) == len(r1) == 8
        u0 = [i for b in b0 for i in b if i < 32]
        u1 = [i for b in b1 for i in b if i < 32]
        assert len(u0) == len(u1) == 16 and sorted(u0 + u1) == list(range(32))  # disjoint, all ulcers covered
        interleaved = [b for pair in zip(b0, b1) for b in pair]
        assert interleaved == r0.epoch_batches()
    # explicit batches_per_epoch counts all ranks and is rounded up to equal shards
    assert len(BalancedBatchSampler(HEALTHY, num_replicas=2, rank=1, **kw)) == math.ceil(math.ceil(30 / 2) / 2)
    odd = [BalancedBatchSampler(HEALTHY, num_replicas=2, rank=r, batches_per_epoch=5, **kw) for r in (0, 1)]
    assert [len(s) for s in odd] == [3, 3] == [len(list(s)) for s in odd]


def test_small_healthy_pool_is_reused() -> None:
    flags = [False] * 20 + [True] * 3
    s = BalancedBatchSampler(flags, 4, 0.5, seed=0)
    healthy_draws = [i for b in s for i in b if i >= 20]
    assert len(healthy_draws) == 20 and set(healthy_draws) == {20, 21, 22}
    counts = Counter(healthy_draws)
    assert max(counts.values()) - min(counts.values()) <= 1  # cycles through the pool, not random with gaps


def test_no_healthy_images_gives_all_ulcer_batches_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="no healthy images"):
        s = BalancedBatchSampler([False] * 10, 4, 0.5)
    batches = list(s)
    assert len(batches) == 3 and all(len(b) == 4 for b in batches)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BalancedBatchSampler([False] * 10, 4, 1.0)  # nothing is missing: no warning


def test_errors() -> None:
    with pytest.raises(DataError, match="no ulcer images"):
        BalancedBatchSampler([True] * 5, 4)
    with pytest.raises(ConfigError, match="rounds to 0 ulcer images"):
        BalancedBatchSampler(HEALTHY, 2, 0.2)
    with pytest.raises(ConfigError, match="invalid rank 2 for 2 replicas"):
        BalancedBatchSampler(HEALTHY, 2, num_replicas=2, rank=2)


def test_lightning_reaches_set_epoch_through_the_loader() -> None:
    from lightning.fabric.utilities.data import _set_sampler_epoch
    from torch.utils.data import DataLoader

    s = BalancedBatchSampler(HEALTHY, 4, seed=1)
    expected = BalancedBatchSampler(HEALTHY, 4, seed=1)
    expected.set_epoch(3)
    _set_sampler_epoch(DataLoader(list(range(len(HEALTHY))), batch_sampler=s), 3)  # what Lightning's fit loop calls
    assert s.epoch == 3 and list(s) == list(expected)
