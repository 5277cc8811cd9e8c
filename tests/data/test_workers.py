"""DataLoader workers (fork and spawn, persistent) deliver exactly the samples of num_workers=0 over an LMDB cache.

Covers the NOTES.md failure modes: an env opened in the parent before the workers start, spawn pickling the
dataset, and persistent workers seeing the epoch set in the parent (augmentation is seeded per sample).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dfudet.config import AugmentConfig
from dfudet.data.cache import prepare_cache
from dfudet.data.dataset import DetectionDataset, collate_detection
from dfudet.data.records import ImageRecord, write_dataset
from dfudet.data.sampler import BalancedBatchSampler
from dfudet.data.transforms import build_train_transform


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("workers")
    (root / "img").mkdir()
    rng = np.random.default_rng(0)
    records = []
    for k in range(12):
        arr = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        p = root / "img" / f"{k}.jpg"
        Image.fromarray(arr).save(p)
        healthy = k % 3 == 2
        boxes = [] if healthy else [[4 + k, 6, 30 + k, 40], [40, 5, 60, 20]]
        records.append(ImageRecord(str(p), 64, 48, boxes, healthy=healthy))
    write_dataset(root / "ds", records)
    prepare_cache(root / "ds", root / "cache", img_size=0)
    return root / "cache"


def _epochs(ds: DetectionDataset, sampler: BalancedBatchSampler, **loader_kw: object) -> list[list]:
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate_detection, **loader_kw)
    out = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        ds.set_epoch(epoch)
        out.append([(images, targets) for images, targets in loader])
    return out


def _assert_same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for (ia, ta), (ib, tb) in zip(a, b):
        assert len(ia) == len(ib)
        for x, y in zip(ia, ib):
            assert x.dtype == torch.uint8 and torch.equal(x, y)
        for x, y in zip(ta, tb):
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_workers_match_single_process(cache_dir: Path, context: str) -> None:
    aug = AugmentConfig(crop_prob=0.5, blur=0.3)

    def make() -> tuple[DetectionDataset, BalancedBatchSampler]:
        ds = DetectionDataset(cache_dir, "train", build_train_transform(aug, 64), seed=3)
        return ds, BalancedBatchSampler(ds.healthy_flags, batch_size=3, positive_fraction=2 / 3, seed=3)

    ds0, s0 = make()
    reference = _epochs(ds0, s0, num_workers=0)
    assert not all(torch.equal(a, b) for a, b in zip(reference[0][0][0], reference[1][0][0]))  # epochs differ

    ds, sampler = make()
    ds[0]  # the parent opens the env before the workers exist
    got = _epochs(ds, sampler, num_workers=2, multiprocessing_context=context, persistent_workers=True)
    for ref_epoch, got_epoch in zip(reference, got):
        _assert_same(ref_epoch, got_epoch)
    ds[1]  # and the parent still reads after the workers ran
