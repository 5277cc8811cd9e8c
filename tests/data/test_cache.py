"""LMDB cache: roundtrip with resize, manifest and hash, atomic replace, refusal of incomplete caches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dfudet.data.cache import (
    MANIFEST_FILE,
    entry_key,
    open_env,
    prepare_cache,
    read_manifest,
    read_split_meta,
    unpack_entry,
)
from dfudet.data.checks import decode_image_bytes, load_image
from dfudet.data.dataset import DetectionDataset
from dfudet.data.records import ImageRecord, write_dataset
from dfudet.errors import DataError


def _photo(path: Path, w: int, h: int, seed: int, fmt: str = "JPEG") -> None:
    rng = np.random.default_rng(seed)
    arr = np.full((h, w, 3), rng.integers(40, 200, 3), np.uint8)
    arr[h // 4 : h // 2, w // 4 : w // 2] = rng.integers(0, 255, 3)
    Image.fromarray(arr).save(path, format=fmt, quality=90)


def make_dataset(root: Path) -> Path:
    """Four train images (one healthy, one PNG, one small) and one val image."""
    img = root / "img"
    img.mkdir(parents=True)
    specs = [  # name, w, h, boxes, split, healthy, fmt
        ("a.jpg", 100, 80, [[10, 20, 50, 60], [60, 10, 64, 14]], "train", False, "JPEG"),
        ("b.png", 120, 60, [[0, 0, 30, 30]], "train", False, "PNG"),
        ("c.jpg", 90, 90, [], "train", True, "JPEG"),
        ("d.jpg", 40, 30, [[5, 5, 20, 25]], "train", False, "JPEG"),
        ("e.jpg", 100, 100, [[30, 30, 70, 70]], "val", False, "JPEG"),
    ]
    records = []
    for k, (name, w, h, boxes, split, healthy, fmt) in enumerate(specs):
        _photo(img / name, w, h, k, fmt)
        records.append(ImageRecord(path=str(img / name), width=w, height=h, boxes=boxes, split=split,
                                   healthy=healthy, source="test"))
    write_dataset(root / "ds", records)
    return root / "ds"


def _entries(cache: Path, split: str) -> list[tuple[dict, bytes]]:
    n = read_split_meta(cache, split)["count"]
    with open_env(cache / split).begin() as txn:
        return [unpack_entry(txn.get(entry_key(i))) for i in range(n)]


def test_roundtrip_resizes_images_and_scales_boxes(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path)
    manifest = prepare_cache(ds, tmp_path / "cache", img_size=50, jpeg_quality=90)
    train = dict(manifest["splits"]["train"])
    assert len(train.pop("index_sha256")) == 64  # the index's digest, checked when the split is opened
    assert train == {"images": 4, "ulcer_images": 3, "healthy_images": 1, "boxes": 4}
    assert manifest["splits"]["val"]["images"] == 1
    assert manifest["img_size"] == 50 and manifest["jpeg_quality"] == 90
    assert manifest["format"] == "dfudet-lmdb" and manifest["version"] == 1
    assert manifest["created_with"]["dataset_dir"] == str(ds.resolve())
    assert json.loads((tmp_path / "cache" / MANIFEST_FILE).read_text()) == manifest

    entries = _entries(tmp_path / "cache", "train")
    (ha, da), (hb, db), (hc, dc), (hd, dd) = entries
    assert decode_image_bytes(da).shape == (40, 50, 3) and ha["scale"] == pytest.approx(0.5)
    np.testing.assert_allclose(ha["boxes"], [[5, 10, 25, 30], [30, 5, 32, 7]])
    assert decode_image_bytes(db).shape == (25, 50, 3) and ha["encoding"] == "jpeg" and db[:3] == b"\xff\xd8\xff"
    np.testing.assert_allclose(hb["boxes"], [[0, 0, 12.5, 12.5]])
    assert hc["healthy"] is True and hc["boxes"] == [] and ha["healthy"] is False
    # small image: never upscaled, original JPEG bytes kept (no second lossy pass)
    assert hd["scale"] == 1.0 and hd["encoding"] == "original"
    assert dd == Path(hd["path"]).read_bytes()
    assert ha["path"] == str(tmp_path / "img" / "a.jpg") and (ha["width"], ha["height"]) == (100, 80)


def test_img_size_zero_keeps_pixels_of_jpeg_sources(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path)
    prepare_cache(ds, tmp_path / "cache", img_size=0)
    (h, data), *_ = _entries(tmp_path / "cache", "train")
    np.testing.assert_array_equal(decode_image_bytes(data), load_image(h["path"]))
    assert h["boxes"] == [[10, 20, 50, 60], [60, 10, 64, 14]]


def test_exif_rotated_photo_is_stored_upright(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    p = tmp_path / "img" / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: stored 60x40, displayed 40x60
    Image.new("RGB", (60, 40), (200, 10, 10)).save(p, exif=exif)
    write_dataset(tmp_path / "ds", [ImageRecord(str(p), 40, 60, [[1, 1, 20, 30]])])
    prepare_cache(tmp_path / "ds", tmp_path / "cache", img_size=0)
    (h, data), = _entries(tmp_path / "cache", "train")
    assert decode_image_bytes(data).shape == (60, 40, 3) and h["encoding"] == "jpeg"


def test_content_hash_is_stable_and_tracks_changes(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path)
    h1 = prepare_cache(ds, tmp_path / "c1", img_size=50)["content_hash"]
    h2 = prepare_cache(ds, tmp_path / "c2", img_size=50)["content_hash"]
    assert h1 == h2 and len(h1) == 64
    assert prepare_cache(ds, tmp_path / "c3", img_size=64)["content_hash"] != h1
    payload = json.loads((ds / "dataset.json").read_text())
    payload["records"][0]["boxes"][0][0] = 11.0
    (ds / "dataset.json").write_text(json.dumps(payload))
    assert prepare_cache(ds, tmp_path / "c4", img_size=50)["content_hash"] != h1


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_crash_midway_leaves_no_output_and_keeps_old_cache(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path)
    out = tmp_path / "cache"
    good = prepare_cache(ds, out, img_size=50)
    (tmp_path / "img" / "d.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(DataError, match=r"d\.jpg"):
        prepare_cache(ds, out, img_size=50)
    assert read_manifest(out) == good and len(DetectionDataset(out, "train")) == 4
    with pytest.raises(DataError, match=r"d\.jpg"):
        prepare_cache(ds, tmp_path / "fresh", img_size=50)
    assert not (tmp_path / "fresh").exists()
    assert _leftovers(tmp_path) == []


def test_rebuild_replaces_a_good_cache(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path)
    out = tmp_path / "cache"
    prepare_cache(ds, out, img_size=50)
    assert DetectionDataset(out, "train")[0][0].shape == (3, 40, 50)  # env now open in this process
    m = prepare_cache(ds, out, img_size=64)
    assert read_manifest(out)["img_size"] == 64 == m["img_size"]
    assert DetectionDataset(out, "train")[0][0].shape == (3, 51, 64)
    assert _leftovers(tmp_path) == []


def test_incomplete_cache_is_refused(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path)
    prepare_cache(ds, tmp_path / "cache", img_size=50)
    half = tmp_path / "half"
    shutil.copytree(tmp_path / "cache", half)
    (half / MANIFEST_FILE).unlink()
    with pytest.raises(DataError, match="manifest.json is missing"):
        DetectionDataset(half, "train")
    m = json.loads((tmp_path / "cache" / MANIFEST_FILE).read_text())
    del m["content_hash"]
    (half / MANIFEST_FILE).write_text(json.dumps(m))
    with pytest.raises(DataError, match="incomplete cache manifest.*content_hash"):
        read_manifest(half)
    shutil.rmtree(half / "val")
    m["content_hash"] = "x"
    (half / MANIFEST_FILE).write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"val.*data\.mdb"):
        read_manifest(half)


def test_refuses_to_overwrite_a_non_cache_dir(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path)
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="precious exists and is not a dfudet LMDB cache"):
        prepare_cache(ds, out)
    assert (out / "notes.txt").read_text() == "keep me"


def test_record_size_mismatch_names_the_file(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path)
    _photo(tmp_path / "img" / "a.jpg", 70, 70, 0)  # file replaced after import
    with pytest.raises(DataError, match=r"a\.jpg: image is 70x70 but the dataset record says 100x80"):
        prepare_cache(ds, tmp_path / "cache", img_size=50)
