"""DetectionDataset over a dataset dir and over an LMDB cache: same interface, same targets, clear errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dfudet.config import AugmentConfig
from dfudet.data.cache import prepare_cache
from dfudet.data.dataset import DetectionDataset, collate_detection
from dfudet.data.records import ImageRecord, write_dataset
from dfudet.data.transforms import build_eval_transform, build_train_transform
from dfudet.errors import DataError


def make_dataset(root: Path) -> Path:
    """Three train images (100x80, 120x60 healthy, 90x90) with smooth content, one val image."""
    (root / "img").mkdir(parents=True)
    specs = [(100, 80, [[10, 20, 50, 60], [60, 10, 66, 16]], "train", False),
             (120, 60, [], "train", True),
             (90, 90, [[0, 0, 45, 45]], "train", False),
             (64, 64, [[8, 8, 40, 40]], "val", False)]
    records = []
    for k, (w, h, boxes, split, healthy) in enumerate(specs):
        yy, xx = np.mgrid[0:h, 0:w]
        arr = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 60 * k)], axis=-1).astype(np.uint8)
        p = root / "img" / f"{k}.jpg"
        Image.fromarray(arr).save(p, quality=95)
        records.append(ImageRecord(str(p), w, h, boxes, split=split, healthy=healthy))
    write_dataset(root / "ds", records)
    return root / "ds"


def test_target_format(tmp_path: Path) -> None:
    ds = DetectionDataset(make_dataset(tmp_path), "train")
    assert len(ds) == 3 and ds.kind == "folder" and ds.healthy_flags == [False, True, False]
    image, t = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 80, 100)
    assert t["boxes"].dtype == torch.float32 and t["boxes"].tolist() == [[10, 20, 50, 60], [60, 10, 66, 16]]
    assert t["labels"].dtype == torch.int64 and t["labels"].tolist() == [1, 1]
    assert t["image_id"].dtype == torch.int64 and t["image_id"].item() == 0 and t["image_id"].dim() == 0
    assert t["healthy"].dtype == torch.bool and not t["healthy"].item()
    assert t["scale"].dtype == torch.float32 and t["scale"].item() == 1.0
    _, th = ds[1]
    assert th["boxes"].shape == (0, 4) and th["labels"].shape == (0,) and th["healthy"].item()
    assert ds[-1][1]["image_id"].item() == 2
    with pytest.raises(IndexError):
        ds[3]


def test_folder_and_cache_give_the_same_samples(tmp_path: Path) -> None:
    ds_dir = make_dataset(tmp_path)
    prepare_cache(ds_dir, tmp_path / "cache", img_size=50)
    folder = DetectionDataset(ds_dir, "train", build_eval_transform(64))
    cache = DetectionDataset(tmp_path / "cache", "train", build_eval_transform(64))
    assert cache.kind == "cache" and cache.healthy_flags == folder.healthy_flags
    for i in range(3):
        (fi, ft), (ci, ct) = folder[i], cache[i]
        assert fi.shape == ci.shape == (3, 64, 64)
        assert np.abs(fi.float().numpy() - ci.float().numpy()).mean() < 6  # two resizes + JPEG vs one resize
        torch.testing.assert_close(ct["boxes"], ft["boxes"], atol=0.7, rtol=0)
        torch.testing.assert_close(ct["scale"], ft["scale"], atol=1e-6, rtol=0)
        for k in ("labels", "image_id", "healthy"):
            assert torch.equal(ct[k], ft[k])
        # boxes / scale maps back to original pixels; record() gives them without decoding
        np.testing.assert_allclose(np.reshape(cache.record(i)["boxes"], (-1, 4)),
                                   np.reshape(folder.record(i)["boxes"], (-1, 4)), atol=1e-3)
        if len(ft["boxes"]):
            np.testing.assert_allclose((ct["boxes"] / ct["scale"]).numpy(), cache.record(i)["boxes"], atol=1.5)
    rec = cache.record(0)
    assert rec["path"].endswith("0.jpg") and (rec["width"], rec["height"]) == (100, 80) and rec["healthy"] is False


def test_unknown_and_empty_splits_list_available(tmp_path: Path) -> None:
    ds_dir = make_dataset(tmp_path)
    prepare_cache(ds_dir, tmp_path / "cache", img_size=0)
    for src in (ds_dir, tmp_path / "cache"):
        with pytest.raises(DataError,
                           match=r"unknown split 'tarin'; available splits: train \(3 images\), val \(1 images\)"):
            DetectionDataset(src, "tarin")
        with pytest.raises(DataError, match=r"split 'test' has no images; available splits: train"):
            DetectionDataset(src, "test")


def test_neither_cache_nor_dataset_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="neither a dfudet LMDB cache"):
        DetectionDataset(tmp_path, "train")


def test_deleted_image_is_named(tmp_path: Path) -> None:
    ds = DetectionDataset(make_dataset(tmp_path), "train")
    (tmp_path / "img" / "2.jpg").unlink()
    with pytest.raises(DataError, match=r"2\.jpg: image file does not exist"):
        ds[2]


def test_seeded_augmentation_depends_on_seed_epoch_and_index(tmp_path: Path) -> None:
    ds_dir = make_dataset(tmp_path)
    aug = build_train_transform(AugmentConfig(crop_prob=0.5, blur=0.5), 96)
    a = DetectionDataset(ds_dir, "train", aug, seed=7)
    b = DetectionDataset(ds_dir, "train", build_train_transform(AugmentConfig(crop_prob=0.5, blur=0.5), 96), seed=7)

    def grab(d: DetectionDataset) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(d[i][0], d[i][1]["boxes"]) for i in (0, 2)]

    def same(x: list, y: list) -> bool:
        return all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(x, y))

    first = grab(a)
    assert same(first, grab(b)) and same(first, grab(a))  # reproducible, whatever was drawn in between
    a.set_epoch(1)
    assert a.epoch == 1 and not same(first, grab(a))
    a.set_epoch(0)
    assert same(first, grab(a))
    c = DetectionDataset(ds_dir, "train", aug, seed=8)
    assert not same(first, grab(c))


def test_pickle_after_use_and_collate(tmp_path: Path) -> None:
    ds_dir = make_dataset(tmp_path)
    prepare_cache(ds_dir, tmp_path / "cache", img_size=0)
    ds = DetectionDataset(tmp_path / "cache", "train", build_eval_transform(32), seed=1)
    first = ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[0][0], first[0]) and torch.equal(clone[0][1]["boxes"], first[1]["boxes"])
    images, targets = collate_detection([ds[0], ds[1]])
    assert [im.shape for im in images] == [(3, 32, 32)] * 2 and [t["image_id"].item() for t in targets] == [0, 1]


def test_real_photos_read_identically_from_folder_and_cache(tmp_path: Path, fuseg_dir: Path) -> None:
    import json

    coco = json.loads((fuseg_dir / "annotations" / "train.json").read_text())
    boxes: dict[int, list] = {}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        boxes.setdefault(a["image_id"], []).append([x, y, x + w, y + h])
    records = [ImageRecord(str(fuseg_dir / "images" / im["file_name"]), im["width"], im["height"],
                           boxes.get(im["id"], []), healthy=im["id"] not in boxes) for im in coco["images"][:6]]
    write_dataset(tmp_path / "ds", records)
    prepare_cache(tmp_path / "ds", tmp_path / "cache", img_size=512)  # 512 px photos: stored as they are
    folder, cache = DetectionDataset(tmp_path / "ds", "train"), DetectionDataset(tmp_path / "cache", "train")
    for i in range(len(records)):
        (fi, ft), (ci, ct) = folder[i], cache[i]
        assert torch.equal(fi, ci) and all(torch.equal(ft[k], ct[k]) for k in ft)
