"""Wound masks through the data pipeline: RLE helpers, the masks and COCO importers, the demo set, the LMDB cache,
the Dataset and the box-aware transforms (masks move with their boxes and stay in step when a box is dropped)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from dfudet.config import AugmentConfig
from dfudet.data import instance_masks
from dfudet.data.cache import prepare_cache
from dfudet.data.dataset import DetectionDataset
from dfudet.data.demo import generate_demo
from dfudet.data.importers import import_dataset
from dfudet.data.records import ImageRecord, read_dataset
from dfudet.data.transforms import build_eval_transform, build_train_transform, kept_boxes
from dfudet.errors import ConfigError, DataError
from dfudet.inference.area import area_mm2, parse_scale


def _image(path: Path, w: int = 64, h: int = 48) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(path)


def _mask(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8) * 255).save(path)


def test_rle_round_trip_resize_polygons_and_errors() -> None:
    m = np.zeros((30, 40), bool)
    m[3:9, 5:25] = True
    m[20, 30] = True
    rle = instance_masks.encode(m)
    assert isinstance(rle["counts"], str) and rle["size"] == [30, 40]
    json.dumps(rle)  # fits in dataset.json and the cache header
    assert np.array_equal(instance_masks.decode(rle), m) and instance_masks.area(rle) == 121
    half = instance_masks.decode(instance_masks.resize(rle, 20, 15))
    assert half.shape == (15, 20) and half[2:4, 3:12].all()
    square = instance_masks.from_polygons([[10, 10, 20, 10, 20, 20, 10, 20]], 40, 30)
    assert abs(instance_masks.area(square) - 100) <= 21  # COCO rasterises polygon edges
    assert instance_masks.tight_boxes(instance_masks.stack([rle], 40, 30)).tolist() == [[5, 3, 31, 21]]
    with pytest.raises(DataError, match="x.png: the mask is 40x30 but its image is 64x48"):
        instance_masks.check(rle, 64, 48, "x.png")
    with pytest.raises(DataError, match="y.png: a mask must be a COCO RLE"):
        instance_masks.check([1, 2], 64, 48, "y.png")
    with pytest.raises(DataError, match="2 masks for 1 boxes"):
        ImageRecord(path="p.jpg", width=40, height=30, boxes=[[0, 0, 5, 5]], masks=[rle, rle])


def test_masks_importer_keeps_one_mask_per_component(tmp_path: Path) -> None:
    imgs, masks = tmp_path / "images", tmp_path / "masks"
    m = np.zeros((48, 64), bool)
    m[5:15, 10:20] = True  # 100 px
    m[25:40, 30:34] = True  # 60 px
    for name, arr in (("a", m), ("healed", np.zeros((48, 64), bool))):
        _image(imgs / f"{name}.jpg")
        _mask(masks / f"{name}.png", arr)
    res = import_dataset("masks", imgs, [masks], [], tmp_path / "out")
    assert res.counts["masked_ulcers"] == 2 and "ulcers with an outline (mask): 2 of 2" in res.summary_text()
    recs = {Path(r.path).name: r for r in read_dataset(tmp_path / "out")}  # through dataset.json
    a = recs["a.jpg"]
    assert a.masks is not None and len(a.masks) == len(a.boxes) == 2
    for box, rle in zip(a.boxes, a.masks):
        single = instance_masks.decode(rle)
        assert instance_masks.tight_boxes(single[None]).tolist() == [box]
    assert sorted(instance_masks.area(r) for r in a.masks) == [60, 100]
    assert np.array_equal(np.logical_or.reduce([instance_masks.decode(r) for r in a.masks]), m)
    assert recs["healed.jpg"].healthy and recs["healed.jpg"].masks == []  # known: no wound


def test_coco_segmentations_are_read_and_box_only_files_stay_box_only(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "u.jpg")
    _image(tmp_path / "images" / "v.jpg")
    poly = [[10, 10, 30, 10, 30, 20, 10, 20]]
    ann = {"images": [{"id": 1, "file_name": "u.jpg", "width": 64, "height": 48},
                      {"id": 2, "file_name": "v.jpg", "width": 64, "height": 48}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 10], "segmentation": poly},
                           {"id": 2, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5], "segmentation": poly},
                           {"id": 3, "image_id": 2, "category_id": 1, "bbox": [40, 30, 5, 5]}],
           "categories": [{"id": 1, "name": "ulcer"}]}
    (tmp_path / "train.json").write_text(json.dumps(ann))
    res = import_dataset("coco", tmp_path / "images", [tmp_path / "train.json"], [], tmp_path / "out")
    recs = {Path(r.path).name: r for r in res.records}
    assert recs["u.jpg"].masks is not None and 180 <= instance_masks.area(recs["u.jpg"].masks[0]) <= 231
    assert recs["v.jpg"].masks is None  # one of its two ulcers has no outline: boxes only, and the report says so
    assert any(line.startswith("masks dropped:") and "1 of 2 ulcers" in line for line in res.report_lines)
    box_only = import_dataset("coco", tmp_path / "images", [_strip_segmentation(tmp_path / "train.json")], [],
                              tmp_path / "out2")
    assert all(r.masks is None for r in box_only.records)
    ann["annotations"][0]["segmentation"] = [[1, 2, 3]]
    (tmp_path / "bad.json").write_text(json.dumps(ann))
    with pytest.raises(DataError, match=r"bad.json: annotation id 1 \(image 'u.jpg'.*segmentation is not a list of "
                                        r"polygons"):
        import_dataset("coco", tmp_path / "images", [tmp_path / "bad.json"], [], tmp_path / "out3")


def _strip_segmentation(path: Path) -> Path:
    ann = json.loads(path.read_text())
    for a in ann["annotations"]:
        a.pop("segmentation", None)
    out = path.with_name("plain.json")
    out.write_text(json.dumps(ann))
    return out


@pytest.fixture(scope="module")
def demo_masks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo-masks")
    generate_demo(root / "raw", n=24, seed=5, size=160)
    raw = root / "raw"
    import_dataset("coco", raw / "images", sorted((raw / "annotations").glob("*.json")), [raw / "healthy"],
                   root / "dataset")
    prepare_cache(root / "dataset", root / "cache", img_size=128)  # downscaled: masks are resized with the image
    return root


def test_demo_lesions_arrive_with_their_exact_areas(demo_masks: Path) -> None:
    true_area = {}
    for f in (demo_masks / "raw" / "annotations").glob("*.json"):
        coco = json.loads(f.read_text())
        names = {im["id"]: im["file_name"] for im in coco["images"]}
        for a in coco["annotations"]:
            true_area.setdefault(Path(names[a["image_id"]]).name, []).append(a["mask_area"])
    records = read_dataset(demo_masks / "dataset")
    ulcer = [r for r in records if not r.healthy]
    assert ulcer and all(r.masks is not None for r in ulcer)
    for r in ulcer:
        assert sorted(instance_masks.area(m) for m in r.masks) == sorted(true_area[Path(r.path).name])
    assert all(r.masks is None for r in records if r.healthy)  # healthy folders carry no mask files


@pytest.mark.parametrize("source", ["dataset", "cache"])
def test_dataset_returns_masks_in_step_with_boxes(demo_masks: Path, source: str) -> None:
    ds = DetectionDataset(demo_masks / source, "train", build_eval_transform(128))
    seen = 0
    for i in range(len(ds)):
        image, target = ds[i]
        if target["healthy"]:
            assert "masks" not in target or len(target["masks"]) == 0
            continue
        masks = target["masks"].numpy()
        assert masks.dtype == np.uint8 and masks.shape == (len(target["boxes"]), 128, 128)
        tight = instance_masks.tight_boxes(masks)
        # the mask's own box and the (resized) box agree within the resize rounding
        assert np.abs(tight - target["boxes"].numpy()).max() <= 2.0
        seen += 1
    assert seen > 0


def test_training_augmentation_moves_masks_with_their_boxes(demo_masks: Path) -> None:
    aug = AugmentConfig(rotate_limit=30, crop_prob=0.5, scale_min=0.6, scale_max=1.4)
    ds = DetectionDataset(demo_masks / "cache", "train", build_train_transform(aug, 128), seed=3)
    checked = 0
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            _, target = ds[i]
            if "masks" not in target or not len(target["boxes"]):
                continue
            masks, boxes = target["masks"].numpy(), target["boxes"].numpy()
            assert len(masks) == len(boxes)
            assert masks.reshape(len(masks), -1).any(axis=1).all(), "a kept box lost its mask"
            # each box is its moved mask's tight box (exact after rotation, unlike a rotated box)
            assert np.array_equal(instance_masks.tight_boxes(masks), boxes)
            checked += len(boxes)
    assert checked > 10
    # the same (seed, epoch, index) gives the same masks
    ds.set_epoch(1)
    first = ds[0][1]
    again = ds[0][1]
    if "masks" in first:
        assert np.array_equal(first["masks"].numpy(), again["masks"].numpy())


def test_a_dropped_box_drops_its_mask() -> None:
    boxes = np.array([[0, 0, 10, 10], [5, 5, 5, 9], [20, 20, 30, 30]], np.float32)  # the middle one has no width
    kept, idx = kept_boxes(boxes, 40, 40)
    assert idx.tolist() == [0, 2] and kept.tolist() == [[0, 0, 10, 10], [20, 20, 30, 30]]
    masks = np.zeros((3, 40, 40), np.uint8)
    masks[0, 0:10, 0:10] = 1
    masks[2, 20:30, 20:30] = 1
    image = np.zeros((40, 40, 3), np.uint8)
    _, out_boxes, out_masks, _ = build_eval_transform(80).with_masks(image, boxes, masks)
    assert out_masks is not None and len(out_masks) == len(out_boxes) == 2
    assert instance_masks.tight_boxes(out_masks).tolist() == out_boxes.tolist() == [[0, 0, 20, 20], [40, 40, 60, 60]]
    with pytest.raises(DataError, match=r"masks of shape \(2, 40, 40\) for 3 boxes"):
        build_eval_transform(80).with_masks(image, boxes, masks[:2])


def test_polygons_outline_every_part_and_fill_back_to_the_mask() -> None:
    m = np.zeros((40, 50), bool)
    m[5:15, 5:25] = True  # a 20 x 10 rectangle
    m[30, 40:45] = True  # a one-pixel-thin line: a degenerate polygon through its ends
    polys = instance_masks.polygons(instance_masks.encode(m))
    assert len(polys) == 2
    rect = next(p for p in polys if max(p[1::2]) < 20)
    assert sorted(set(zip(rect[0::2], rect[1::2]))) == [(5, 5), (5, 14), (24, 5), (24, 14)]  # pixel centres
    line = next(p for p in polys if min(p[1::2]) > 20)
    assert len(line) >= 6 and set(zip(line[0::2], line[1::2])) == {(40, 30), (44, 30)}
    assert instance_masks.polygons(instance_masks.encode(np.pad(np.ones((1, 1), bool), 3))) == [[3.0, 3.0] * 3]
    refilled = instance_masks.decode(instance_masks.from_polygons([rect], 50, 40))
    # the outline runs through the boundary pixels' centres, so filling it gives the mask less a half-pixel rim
    # (19 x 9 of 20 x 10 pixels here); areas are therefore always counted on the mask, never on the polygon
    assert (refilled & ~m).sum() == 0 and refilled.sum() == 19 * 9
    assert instance_masks.polygons(instance_masks.encode(np.zeros((8, 8), bool))) == []


def test_probabilities_of_the_padded_input_map_back_to_the_photo() -> None:
    # a 200 x 100 photo resized by 0.5 into a 128 x 128 padded input: the photo is the top-left 100 x 50
    probs = np.zeros((1, 128, 128), np.float32)
    probs[0, 10:30, 20:60] = 0.9  # input pixels -> photo pixels x 40..120, y 20..60
    probs[0, 60:, :] = 0.9  # in the padding: not part of the photo
    (rle,) = instance_masks.from_probabilities(probs, 0.5, 200, 100)
    mask = instance_masks.decode(rle)
    assert mask.shape == (100, 200)
    ys, xs = np.nonzero(mask)
    assert abs(xs.min() - 40) <= 1 and abs(xs.max() - 119) <= 1 and abs(ys.min() - 20) <= 1 and abs(ys.max() - 59) <= 1
    assert instance_masks.area(rle) == int(mask.sum()) == pytest.approx(80 * 40, rel=0.05)
    assert instance_masks.from_probabilities(np.zeros((0, 128, 128), np.float32), 0.5, 200, 100) == []


@pytest.mark.parametrize(("text", "expected"), [("0.2", 0.2), (" 0.2 mm/px ", 0.2), ("5 px/mm", 0.2), ("", None)])
def test_scales_parse_in_mm_per_px(text: str, expected: float | None) -> None:
    assert parse_scale(text, "here") == (pytest.approx(expected) if expected else None)
    if expected:
        assert area_mm2(100, parse_scale(text, "here")) == pytest.approx(100 * expected * expected)


@pytest.mark.parametrize(("text", "message"), [("abc", "not a number"), ("0", "positive"), ("-0.1", "positive"),
                                               ("nan", "positive"), ("3 furlongs", "unknown scale unit")])
def test_bad_scales_are_refused_naming_where(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"row 7: .*{message}"):
        parse_scale(text, "visits.csv row 7")
    assert area_mm2(100, None) is None


@pytest.mark.parametrize(("width", "height"), [(1600, 1200), (300, 700), (511, 512), (128, 128)])
def test_outline_mapping_equals_resizing_the_whole_map(width: int, height: int) -> None:
    """Only the region around each mask is resampled; the result is the plain crop + bilinear resize + threshold,
    but for rare pixels right at the threshold (warpAffine and resize round their sample points differently)."""
    rng = np.random.default_rng(width)
    probs = np.zeros((12, 128, 128), np.float32)
    for p in probs[:11]:
        x, y = rng.integers(0, 100, 2)
        w, h = rng.integers(1, 40, 2)
        region = p[y:y + h, x:x + w]
        region[:] = rng.uniform(0.2, 1.0, region.shape)  # varied values: interpolation inside the mask matters
    scale = 128 / max(width, height)
    h_in, w_in = round(height * scale), round(width * scale)
    masks = instance_masks.from_probabilities(probs, scale, width, height)
    assert len(masks) == 12 and instance_masks.area(masks[-1]) == 0
    for p, rle in zip(probs, masks):
        whole = cv2.resize(np.ascontiguousarray(p[:h_in, :w_in]), (width, height), interpolation=cv2.INTER_LINEAR)
        ours = instance_masks.decode(rle)
        assert ours.shape == (height, width)
        assert (ours != (whole > 0.5)).sum() <= max(2, 0.002 * ours.sum())
