"""Balanced batch sampler: a fixed share of ulcer images in every batch, deterministic per (seed, epoch), DDP-aware.

Rounding: each batch holds `floor(batch_size * positive_fraction + 0.5)` ulcer images (round half UP, so
batch_size 5 at 0.5 gives 3 ulcer + 2 healthy; Python's round() would give 2 by rounding half to even).
Pools: each pool is walked in a fresh random permutation, and a new permutation is started whenever a pool runs out,
so the smaller pool is drawn with replacement across cycles but never repeats an image before all were used.
`batches_per_epoch` counts batches over ALL ranks (so an epoch holds the same data whatever the number of GPUs); it
is rounded up to a multiple of the number of replicas, and rank r gets batches r, r + R, r + 2R, ... .
The sampler shards itself: under Lightning DDP use `Trainer(use_distributed_sampler=False)` so Lightning does not
try to wrap it in a DistributedSampler.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from dfudet.errors import ConfigError, DataError


def ulcers_per_batch(batch_size: int, positive_fraction: float) -> int:
    """Ulcer images per batch: batch_size * positive_fraction rounded half up."""
    return int(math.floor(batch_size * positive_fraction + 0.5))


def _dist_defaults(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    if num_replicas is None or rank is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            num_replicas = torch.distributed.get_world_size() if num_replicas is None else num_replicas
            rank = torch.distributed.get_rank() if rank is None else rank
        else:
            num_replicas = 1 if num_replicas is None else num_replicas
            rank = 0 if rank is None else rank
    return num_replicas, rank


class _EpochForwarder:
    """Lightning 2.x calls set_epoch on `loader.sampler` and `loader.batch_sampler.sampler`, never on the batch
    sampler itself; exposing this as `.sampler` makes Lightning reach BalancedBatchSampler.set_epoch."""

    def __init__(self, owner: BalancedBatchSampler) -> None:
        self._owner = owner

    def set_epoch(self, epoch: int) -> None:
        self._owner.set_epoch(epoch)


class BalancedBatchSampler(Sampler[list[int]]):
    """Yields index batches with exactly `ulcers_per_batch(batch_size, positive_fraction)` ulcer images each."""

    def __init__(self, healthy: Sequence[bool], batch_size: int, positive_fraction: float = 0.5, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None,
                 batches_per_epoch: int | None = None) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ConfigError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
        self.num_replicas, self.rank = _dist_defaults(num_replicas, rank)
        if self.num_replicas < 1 or not 0 <= self.rank < self.num_replicas:
            raise ConfigError(f"invalid rank {self.rank} for {self.num_replicas} replicas")
        flags = [bool(h) for h in healthy]
        self.ulcer = np.array([i for i, h in enumerate(flags) if not h], dtype=np.int64)
        self.healthy = np.array([i for i, h in enumerate(flags) if h], dtype=np.int64)
        if len(self.ulcer) == 0:
            raise DataError(f"the training split has no ulcer images ({len(self.healthy)} healthy): "
                            "a detector cannot learn without positive examples")
        self.batch_size = batch_size
        self.positive_fraction = positive_fraction
        self.n_pos = ulcers_per_batch(batch_size, positive_fraction)
        if self.n_pos == 0:
            raise ConfigError(f"batch_size {batch_size} x positive_fraction {positive_fraction} rounds to 0 ulcer "
                              "images per batch; raise positive_fraction or batch_size")
        if len(self.healthy) == 0 and self.n_pos < batch_size:
            warnings.warn(f"no healthy images in the training split: batches are all ulcer images instead of "
                          f"{self.n_pos} ulcer + {batch_size - self.n_pos} healthy", stacklevel=2)
            self.n_pos = batch_size
        self.seed = int(seed)
        self.epoch = 0
        self.sampler = _EpochForwarder(self)
        total = batches_per_epoch if batches_per_epoch is not None else math.ceil(len(self.ulcer) / self.n_pos)
        if total < 1:
            raise ConfigError(f"batches_per_epoch must be >= 1, got {total}")
        self.per_rank = math.ceil(total / self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shuffle is produced next (Lightning calls this on batch samplers)."""
        self.epoch = int(epoch)

    @staticmethod
    def _stream(pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """n indices from back-to-back random permutations of the pool."""
        if n == 0:
            return np.empty(0, dtype=np.int64)
        cycles = math.ceil(n / len(pool))
        return np.concatenate([rng.permutation(pool) for _ in range(cycles)])[:n]

    def epoch_batches(self) -> list[list[int]]:
        """All batches of the current epoch over all ranks (every rank computes the same list)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        total = self.per_rank * self.num_replicas
        n_neg = self.batch_size - self.n_pos
        pos = self._stream(self.ulcer, total * self.n_pos, rng).reshape(total, self.n_pos)
        neg = self._stream(self.healthy, total * n_neg, rng).reshape(total, n_neg)
        batches = np.concatenate([pos, neg], axis=1)
        batches = rng.permuted(batches, axis=1)  # mix ulcer and healthy positions inside each batch
        return batches.tolist()

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.epoch_batches()[self.rank :: self.num_replicas]

    def __len__(self) -> int:
        return self.per_rank
