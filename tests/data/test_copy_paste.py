"""Copy-paste of wounds (dfudet.data.copy_paste) and its use as a training augmentation (DetectionDataset)."""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from dfudet.config import AugmentConfig
from dfudet.data import instance_masks
from dfudet.data.cache import prepare_cache
from dfudet.data.copy_paste import (
    absolute_scale,
    choose_position,
    cut_wound,
    paste,
    paste_wounds,
    skin_mask,
)
from dfudet.data.dataset import DetectionDataset
from dfudet.data.instance_masks import tight_boxes
from dfudet.data.records import ImageRecord, write_dataset
from dfudet.data.transforms import DetectionTransform, build_train_transform
from dfudet.errors import ConfigError

SKIN = (198, 134, 96)
GREY = (90, 90, 90)
RED = (180, 30, 40)
BLUE = (60, 90, 160)


def source_photo(size: int = 64, radius: int = 10, centre: tuple[int, int] = (30, 34)) -> tuple[np.ndarray, np.ndarray]:
    """A skin-coloured photo with one red round wound, and the wound's mask."""
    image = np.full((size, size, 3), SKIN, np.uint8)
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, centre, radius, 1, -1)
    image[mask.astype(bool)] = RED
    return image, mask.astype(bool)


def target_photo(w: int = 160, h: int = 120, skin: tuple[int, int, int, int] | None = (90, 10, 150, 70),
                 background: tuple[int, int, int] = GREY) -> np.ndarray:
    """A photo of one colour with a skin-coloured rectangle (x0, y0, x1, y1), or none."""
    image = np.full((h, w, 3), background, np.uint8)
    if skin is not None:
        x0, y0, x1, y1 = skin
        image[y0:y1, x0:x1] = SKIN
    return image


def test_skin_rule_tells_skin_tones_from_background() -> None:
    for colour, is_skin in [((232, 190, 160), True), (SKIN, True), ((120, 72, 48), True), (GREY, False),
                            ((60, 90, 160), False), ((0, 0, 0), False), ((60, 140, 60), False), (RED, False)]:
        assert skin_mask(np.full((12, 12, 3), colour, np.uint8)).all() == is_skin, colour


@pytest.mark.parametrize("scale", [0.5, 1.0, 1.5])
def test_paste_geometry(scale: float) -> None:
    src, mask = source_photo()
    wound = cut_wound(src, mask, scale)
    side = 21  # the source wound's box: a radius-10 disc
    assert abs(wound.size[0] - side * scale) <= 1.5 and abs(wound.size[1] - side * scale) <= 1.5
    target = target_photo()
    r = paste(target, wound, 20, 30)
    assert r.masks.shape == (1, 120, 160) and r.kept == []
    # the box is the pasted mask's tight box, starts where asked and lies inside the image
    assert r.boxes.tolist() == tight_boxes(r.masks).tolist()
    x0, y0, x1, y1 = r.boxes[0]
    assert (x0, y0) == (20, 30) and (x1 - x0, y1 - y0) == wound.size and x1 <= 160 and y1 <= 120
    # the wound's pixels are the source's red; far from it the target is untouched
    inside = cv2.erode(r.masks[0], np.ones((3, 3), np.uint8)).astype(bool)  # the rim mixes red and skin
    assert inside.any() and np.abs(r.image[inside].astype(int) - RED).max() <= 40
    assert (r.image[:, 100:] == target[:, 100:]).all()
    assert (target == target_photo()).all()  # the target itself is not modified


def test_feathered_edge_has_no_hard_seam() -> None:
    src, mask = source_photo()
    wound = cut_wound(src, mask, 2.0)
    assert (wound.alpha[wound.mask] == 1).all()
    ring = cv2.dilate(wound.mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & ~wound.mask
    assert ((wound.alpha[ring] > 0) & (wound.alpha[ring] < 1)).mean() > 0.9  # a soft fade just outside the wound
    corner = wound.alpha[0, 0]
    assert corner < 0.05


def test_paste_refuses_a_wound_off_the_image() -> None:
    src, mask = source_photo()
    wound = cut_wound(src, mask, 1.0)
    with pytest.raises(ValueError, match="not inside"):
        paste(target_photo(), wound, 150, 10)
    with pytest.raises(ValueError, match="not inside"):
        paste(target_photo(), wound, -1, 10)


def test_occluded_target_masks_lose_the_covered_pixels() -> None:
    target = target_photo()
    own = np.zeros((2, 120, 160), np.uint8)
    own[0, 30:60, 20:80] = 1  # partly covered below
    own[1, 38:42, 28:32] = 1  # wholly covered below (the pasted disc's centre is at (30, 40))
    src, mask = source_photo()
    wound = cut_wound(src, mask, 1.0)
    r = paste(target, wound, 20, 30, own)
    assert r.kept == [0] and len(r.masks) == 2
    covered = r.masks[1].astype(bool)
    assert not (r.masks[0].astype(bool) & covered).any()
    assert (r.masks[0].astype(bool) | covered).sum() == (own[0].astype(bool) | covered).sum()
    assert r.boxes.tolist() == tight_boxes(r.masks).tolist()


def test_positions_fall_on_skin_and_the_fallback_stays_inside() -> None:
    src, mask = source_photo()
    target = target_photo()
    skin = skin_mask(target)
    for seed in range(8):
        r = paste_wounds(np.random.default_rng(seed), target, None, [(src, mask)], [0.5])
        assert r.pasted[0]["on_skin"]
        x0, y0, x1, y1 = (int(v) for v in r.boxes[0])
        assert skin[y0:y1, x0:x1].mean() >= 0.8
    bare = target_photo(skin=None, background=BLUE)  # no skin anywhere: placed anywhere, never off the image
    for seed in range(8):
        r = paste_wounds(np.random.default_rng(seed), bare, None, [(src, mask)], [1.5])
        assert not r.pasted[0]["on_skin"]
        x0, y0, x1, y1 = r.boxes[0]
        assert 0 <= x0 < x1 <= 160 and 0 <= y0 < y1 <= 120


def test_choose_position_keeps_off_existing_wounds() -> None:
    skin = np.ones((50, 80), bool)
    avoid = np.zeros((50, 80), bool)
    avoid[:, :40] = True
    for seed in range(10):
        x, y, on_skin = choose_position(np.random.default_rng(seed), skin, (12, 10), avoid)
        assert on_skin and 40 <= x <= 80 - 12 and 0 <= y <= 50 - 10
    with pytest.raises(ValueError, match="does not fit"):
        choose_position(np.random.default_rng(0), skin, (81, 10))


def test_two_wounds_do_not_overlap_when_there_is_room() -> None:
    src, mask = source_photo()
    target = target_photo(skin=(0, 0, 160, 120))
    for seed in range(5):
        r = paste_wounds(np.random.default_rng(seed), target, None, [(src, mask), (src, mask)], [0.5, 0.5])
        assert len(r.masks) == 2 and not (r.masks[0] & r.masks[1]).any()


def test_shrink_finds_skin_for_a_wound_too_big_for_it() -> None:
    src, mask = source_photo(size=64, radius=20, centre=(32, 32))
    target = target_photo(skin=(100, 20, 130, 50))  # a 30 px square of skin; the wound at 0.4x is about 35 px
    r = paste_wounds(np.random.default_rng(0), target, None, [(src, mask)], [0.4], shrink=True)
    assert r.pasted[0]["on_skin"] and r.pasted[0]["relative_scale"] == pytest.approx(0.4 * 0.8)
    r = paste_wounds(np.random.default_rng(0), target, None, [(src, mask)], [0.4])
    assert not r.pasted[0]["on_skin"] and r.pasted[0]["relative_scale"] == pytest.approx(0.4)


def test_shrink_falls_back_to_the_smallest_size_without_skin() -> None:
    src, mask = source_photo()
    bare = target_photo(skin=None, background=BLUE)
    r = paste_wounds(np.random.default_rng(0), bare, None, [(src, mask)], [1.0], shrink=True)
    assert not r.pasted[0]["on_skin"] and r.pasted[0]["relative_scale"] == pytest.approx(0.8 ** 6)


def test_a_black_and_white_photo_gets_a_grey_wound_on_its_bright_side() -> None:
    src, mask = source_photo()
    target = target_photo(skin=None, background=(30, 30, 30))
    target[20:100, 60:150] = 170  # a bright grey foot on a dark backdrop
    assert skin_mask(target)[20:100, 60:150].all() and not skin_mask(target)[:, :50].any()
    for seed in range(4):
        r = paste_wounds(np.random.default_rng(seed), target, None, [(src, mask)], [0.5])
        assert np.abs(np.diff(r.image.astype(int), axis=2)).max() == 0 and (r.image != target).any()
        x0, y0, x1, y1 = (int(v) for v in r.boxes[0])
        assert r.pasted[0]["on_skin"] and (target[y0:y1, x0:x1, 0] == 170).mean() >= 0.8
    coloured = paste_wounds(np.random.default_rng(0), target_photo(), None, [(src, mask)], [1.0])
    assert np.abs(np.diff(coloured.image.astype(int), axis=2)).max() > 50  # the red wound in a colour photo


def test_scale_is_relative_to_the_photo_and_fits() -> None:
    # 1x: the same share of a photo twice as large (per side) is twice as many pixels
    assert absolute_scale(1.0, (100, 100), (200, 200), (10, 10)) == pytest.approx(2.0)
    assert absolute_scale(0.5, (100, 100), (200, 200), (10, 10)) == pytest.approx(1.0)
    # a wound that would exceed 90% of the target's height is made to fit
    assert absolute_scale(1.0, (100, 100), (400, 100), (50, 50)) == pytest.approx(0.9 * 100 / 50)


def test_the_same_seed_gives_the_same_paste() -> None:
    src, mask = source_photo()
    target = target_photo(skin=(0, 0, 160, 120))
    runs = [paste_wounds(np.random.default_rng(s), target, None, [(src, mask)], [0.7], color_match=0.5)
            for s in (3, 3, 4, 5, 6)]
    assert (runs[0].image == runs[1].image).all() and runs[0].pasted == runs[1].pasted
    assert len({(r.pasted[0]["x"], r.pasted[0]["y"]) for r in runs[1:]}) > 1


def test_colour_matching_moves_the_patch_towards_the_target_skin() -> None:
    src, mask = source_photo()
    dark = (120, 72, 48)
    target = np.full((120, 160, 3), dark, np.uint8)
    wound = cut_wound(src, mask, 1.0)
    plain = paste(target, wound, 40, 40).image.astype(float)
    matched = paste(target, wound, 40, 40, color_match=1.0).image.astype(float)
    region = (slice(40, 61), slice(40, 61))
    assert matched[region].mean() < plain[region].mean() - 5  # darker, like the dark skin around it


# ---------------------------------------------------------------------------------------------- augmentation
def _dataset(root: Path, with_masks: bool = True) -> Path:
    """Two 96 px ulcer photos with masks (or box-only) and one healthy photo, cached."""
    (root / "img").mkdir(parents=True)
    records = []
    for k in range(3):
        image = np.full((96, 96, 3), SKIN, np.uint8)
        image[:, 80:] = GREY
        m = np.zeros((96, 96), np.uint8)
        healthy = k == 2
        if not healthy:
            cv2.circle(m, (30 + 10 * k, 40), 12, 1, -1)
            image[m.astype(bool)] = RED
        p = root / "img" / f"{k}.png"
        Image.fromarray(image).save(p)
        boxes = [] if healthy else tight_boxes(m[None]).tolist()
        masks = ([] if healthy else [instance_masks.encode(m.astype(bool))]) if with_masks else None
        records.append(ImageRecord(str(p), 96, 96, boxes, split="train", healthy=healthy, masks=masks))
    write_dataset(root / "ds", records)
    prepare_cache(root / "ds", root / "cache", img_size=96)
    return root / "cache"


STILL = {"hflip": 0.0, "vflip": 0.0, "rotate90": 0.0, "rotate_limit": 0.0, "scale_min": 1.0, "scale_max": 1.0,
         "crop_prob": 0.0, "brightness_contrast": 0.0, "hue_saturation": 0.0, "blur": 0.0}


def test_copy_paste_at_zero_changes_nothing(tmp_path: Path) -> None:
    cache = _dataset(tmp_path)
    new = DetectionDataset(cache, "train", build_train_transform(AugmentConfig(), 96), seed=7)
    # the transform as it was before copy-paste existed: no copy_paste keys at all
    old_aug = {k: v for k, v in AugmentConfig().model_dump().items() if not k.startswith("copy_paste")}
    old = DetectionDataset(cache, "train", DetectionTransform(96, old_aug), seed=7)
    for epoch in (0, 1):
        new.set_epoch(epoch)
        old.set_epoch(epoch)
        for i in range(3):
            (a, ta), (b, tb) = new[i], old[i]
            assert torch.equal(a, b) and ta.keys() == tb.keys()
            assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_copy_paste_at_one_adds_a_wound_with_its_mask(tmp_path: Path) -> None:
    cache = _dataset(tmp_path)
    aug = AugmentConfig(**STILL, copy_paste=1.0, copy_paste_healthy=1.0)
    ds = DetectionDataset(cache, "train", build_train_transform(aug, 96), seed=0)
    plain = DetectionDataset(cache, "train", build_train_transform(AugmentConfig(**STILL), 96), seed=0)
    added = 0
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(3):
            image, t = ds[i]
            _, t0 = plain[i]
            n = len(t["boxes"])
            assert t["masks"].shape == (n, 96, 96) and n >= len(t0["boxes"])
            assert torch.equal(t["boxes"], torch.from_numpy(tight_boxes(t["masks"].numpy())))
            added += n - len(t0["boxes"])
            if i == 2:  # the healthy photo now holds a pasted wound, and says so
                assert n >= 1 and not t["healthy"].item()
    assert added >= 9  # every sample got at least one wound from another photo
    # seeded: the same epoch gives the same sample, also after pickling (DataLoader workers)
    ds.set_epoch(1)
    again = pickle.loads(pickle.dumps(ds))
    (a, ta), (b, tb) = ds[0], again[0]
    assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["masks"], tb["masks"])


def test_copy_paste_needs_masks(tmp_path: Path) -> None:
    cache = _dataset(tmp_path, with_masks=False)
    with pytest.raises(ConfigError, match="copy_paste.*masks"):
        DetectionDataset(cache, "train", build_train_transform(AugmentConfig(copy_paste=0.5), 96), seed=0)
    # off: box-only data is fine
    DetectionDataset(cache, "train", build_train_transform(AugmentConfig(), 96), seed=0)


def test_copy_paste_scale_range_is_checked() -> None:
    with pytest.raises(ValueError, match="copy_paste_scale_min"):
        AugmentConfig(copy_paste_scale_min=2.0, copy_paste_scale_max=1.0)
