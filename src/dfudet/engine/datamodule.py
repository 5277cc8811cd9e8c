"""LightningDataModule: balanced training batches, sharded validation, worker-safe datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

from dfudet.config import Config
from dfudet.data.cache import MANIFEST_FILE, read_manifest
from dfudet.data.dataset import DetectionDataset, collate_detection
from dfudet.data.sampler import BalancedBatchSampler
from dfudet.data.transforms import build_eval_transform, build_train_transform
from dfudet.errors import ConfigError


def data_source(cfg: Config) -> Path:
    """The cache (preferred) or dataset dir named by the config, with a clear error when neither is set."""
    src = cfg.data.cache or cfg.data.dataset
    if not src:
        raise ConfigError("no data: set data.cache (from `dfudet data prepare`) "
                          "or data.dataset (from `dfudet data import`)")
    return Path(src)


def check_cache_size(src: Path, img_size: int) -> None:
    """Refuse a cache prepared at a smaller size than the model input: its photos would be upsampled silently."""
    if not (src / MANIFEST_FILE).is_file():
        return  # a dataset dir: photos are read at full size
    cached = int(read_manifest(src).get("img_size") or 0)  # 0: prepared at the photos' own size
    if cached and cached < img_size:
        raise ConfigError(
            f"{src}: the cache was prepared at {cached} px (long side) but data.img_size is {img_size}: training "
            f"would upsample every photo. Run `dfudet data prepare DATASET_DIR --out NEW_CACHE --img-size {img_size}` "
            f"and train on it, or set data.img_size={cached}"
        )


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


class DetectionDataModule(L.LightningDataModule):
    """Builds the train/val datasets and loaders from the config."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.train_ds: DetectionDataset | None = None
        self.val_ds: DetectionDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        d = self.cfg.data
        src = data_source(self.cfg)
        check_cache_size(src, d.img_size)
        if self.train_ds is None and stage in (None, "fit"):
            self.train_ds = DetectionDataset(src, d.train_split, build_train_transform(d.augment, d.img_size),
                                             seed=self.cfg.train.seed)
        if self.val_ds is None:
            self.val_ds = DetectionDataset(src, d.val_split, build_eval_transform(d.img_size))

    def _loader_kwargs(self) -> dict[str, Any]:
        d = self.cfg.data
        kw: dict[str, Any] = {"num_workers": d.num_workers, "collate_fn": collate_detection,
                              "pin_memory": torch.cuda.is_available()}
        if d.num_workers > 0:
            kw["persistent_workers"] = d.persistent_workers
            if d.multiprocessing_context:
                kw["multiprocessing_context"] = d.multiprocessing_context
        return kw

    def train_dataloader(self) -> DataLoader:
        assert self.train_ds is not None
        d = self.cfg.data
        world, rank = _dist()
        sampler = BalancedBatchSampler(self.train_ds.healthy_flags, batch_size=d.batch_size,
                                       positive_fraction=d.positive_fraction, seed=self.cfg.train.seed,
                                       num_replicas=world, rank=rank, batches_per_epoch=d.batches_per_epoch)
        # On resume Lightning builds the iterator before it calls set_epoch, and workers prefetch at once: start the
        # sampler and the per-sample augmentation seeds at the restored epoch so a resumed epoch is the same epoch.
        self.set_epoch(self.trainer.current_epoch if self.trainer is not None else 0, sampler)
        return DataLoader(self.train_ds, batch_sampler=sampler, **self._loader_kwargs())

    def set_epoch(self, epoch: int, sampler: BalancedBatchSampler | None = None) -> None:
        """Select the epoch of the batch order and of the augmentation seeds (seen by running workers too)."""
        if self.train_ds is not None:
            self.train_ds.set_epoch(epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)

    def val_dataloader(self) -> DataLoader:
        assert self.val_ds is not None
        d = self.cfg.data
        world, rank = _dist()
        sampler: DistributedSampler[int] | None = (
            DistributedSampler(self.val_ds, num_replicas=world, rank=rank, shuffle=False) if world > 1 else None)
        return DataLoader(self.val_ds, batch_size=d.val_batch_size or d.batch_size, shuffle=False, sampler=sampler,
                          **self._loader_kwargs())

    def counts(self) -> dict[str, dict[str, int]]:
        """Per-split image counts for the run header."""
        out = {}
        for name, ds in (("train", self.train_ds), ("val", self.val_ds)):
            if ds is not None:
                flags = ds.healthy_flags
                out[name] = {"images": len(flags), "ulcer": sum(not h for h in flags), "healthy": sum(flags)}
        return out
