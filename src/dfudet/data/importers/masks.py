"""Binary wound masks -> boxes (one per 8-connected component), plus optional hard-negative crops.

- `--images DIR` of photos, `--annotations DIR` of masks paired by relative path and stem (`a.jpg` <-> `a.png`);
  an image without a mask, a mask without an image, or two masks for one image are errors.
- A mask is read as grayscale (max over colour channels, palette indices as they are) with EXIF orientation applied;
  foreground is `> 127`, or `> 0` for 0/1 masks (maximum value 1). Its size must equal the oriented image size.
- Components with fewer than `min_area` pixels are dropped and reported, except that the largest component of a
  non-empty mask is always kept (the rule used for the FUSeg boxes). Box = tight xyxy of the component
  (x_min, y_min, x_max + 1, y_max + 1); the component itself is kept with the record as its mask (COCO RLE), so
  the outline and area of every ulcer travel to the cache and the model. An empty mask is an ulcer-free image
  ("wound just healed").
- Hard-negative crops: up to N squares of `crop_size` (clamped to the image) whose every pixel is at least
  `crop_margin` px (Euclidean) from every mask pixel, picked at seeded random, overlapping each other by at most
  half, written as PNG under out/negatives/{split}/ with no metadata (dfudet.data.privacy).
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ImageOps, UnidentifiedImageError

from dfudet.data import instance_masks
from dfudet.data.checks import load_pil, open_image
from dfudet.data.importers._common import ParseResult, RawItem, absolute, ignored_note, scan_images, stem_key
from dfudet.data.importers.splits import split_from_relpath
from dfudet.data.privacy import save_image
from dfudet.data.records import ImageRecord
from dfudet.errors import DataError

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
MAX_CROP_TRIES = 5000


def parse_masks(images: Path, masks_dir: Path) -> ParseResult:
    """Pair every image under `images` with its mask under `masks_dir`."""
    out = ParseResult()
    rels, ignored = scan_images(images)
    out.notes += ignored_note(images, ignored)
    mask_rels, mask_ignored = scan_images(masks_dir)
    out.notes += ignored_note(masks_dir, mask_ignored)
    masks: dict[str, list[Path]] = defaultdict(list)
    for m in mask_rels:
        masks[stem_key(m)].append(masks_dir / m)
    image_keys = set()
    for rel in rels:
        key = stem_key(rel)
        image_keys.add(key)
        item = RawItem(
            name=rel.as_posix(), path=absolute(images / rel), where="", source=f"masks:{absolute(masks_dir)}",
            split=split_from_relpath(rel.as_posix()),
        )
        found = masks.get(key, [])
        if not found:
            item.problems.append(f"{item.path}: no mask '{key}.png' under {masks_dir}")
        elif len(found) > 1:
            item.problems.append(f"{item.path}: several masks match it ({', '.join(str(p) for p in found)})")
        else:
            item.mask_path = absolute(found[0])
            item.where = str(item.mask_path)
        out.items.append(item)
    for key, paths in masks.items():
        if key not in image_keys:
            out.problems += [f"{p}: mask has no image '{key}.*' under {images}" for p in paths]
    return out


def load_mask(path: Path) -> np.ndarray:
    """Read a mask file as a boolean (H, W) array in display orientation."""
    try:
        with open_image(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im) or im
            arr = np.asarray(im)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: mask file does not exist") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: corrupt or unreadable mask ({exc})") from exc
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=2) if arr.shape[2] >= 3 else arr[..., 0]
    return arr > (0 if arr.size and arr.max() <= 1 else 127)


def mask_components(mask: np.ndarray, min_area: float
                    ) -> tuple[list[list[float]], list[dict[str, Any]], list[int]]:
    """Boxes (xyxy) and RLE masks of the kept 8-connected components, and the pixel counts of the dropped ones."""
    from scipy import ndimage  # imported here: the CLI loads this module to list the import formats

    labels, n = ndimage.label(mask, structure=EIGHT_CONNECTED)
    if n == 0:
        return [], [], []
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    largest = int(np.argmax(sizes))
    boxes: list[list[float]] = []
    rles: list[dict[str, Any]] = []
    dropped: list[int] = []
    for i, sl in enumerate(ndimage.find_objects(labels)):
        if sizes[i] < min_area and i != largest:
            dropped.append(int(sizes[i]))
            continue
        ys, xs = sl
        boxes.append([float(xs.start), float(ys.start), float(xs.stop), float(ys.stop)])
        rles.append(instance_masks.encode(labels == i + 1))
    return boxes, rles, sorted(dropped)


def apply_mask(item: RawItem, min_area: float) -> None:
    """Fill an item's boxes from its mask (size already known from the decoded image); errors go to item.problems."""
    assert item.mask_path is not None
    try:
        mask = load_mask(item.mask_path)
    except DataError as exc:
        item.problems.append(str(exc))
        return
    if mask.shape != (item.height, item.width):
        item.problems.append(
            f"{item.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but image {item.path} is "
            f"{item.width}x{item.height} (after EXIF orientation); a mask must have its image's size"
        )
        return
    boxes, rles, dropped = mask_components(mask, min_area)
    item.final_boxes = boxes
    item.final_masks = rles  # kept with the record: the outline of each ulcer, not only its box
    item.dropped = len(dropped)
    if dropped:
        item.notes.append(
            f"dropped: {item.mask_path}: {len(dropped)} component(s) below {min_area:g} px "
            f"(sizes {', '.join(map(str, dropped))})"
        )


def _crop_positions(mask: np.ndarray, size: int, margin: float, count: int,
                    rng: np.random.Generator) -> list[tuple[int, int]]:
    """Top-left corners of up to `count` size x size windows whose pixels are all >= margin from the mask."""
    from scipy import ndimage  # imported here: the CLI loads this module to list the import formats

    h, w = mask.shape
    dist = ndimage.distance_transform_edt(~mask)
    unsafe = (dist < margin).astype(np.int64)
    integral = np.pad(unsafe.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    window = integral[size:, size:] - integral[:-size, size:] - integral[size:, :-size] + integral[:-size, :-size]
    ys, xs = np.nonzero(window == 0)
    chosen: list[tuple[int, int]] = []
    # a bounded number of tries keeps huge photos fast; crops overlap each other by at most half a crop
    for k in rng.permutation(len(ys))[:MAX_CROP_TRIES]:
        x, y = int(xs[k]), int(ys[k])
        if all(max(0, size - abs(x - cx)) * max(0, size - abs(y - cy)) <= size * size / 2 for cx, cy in chosen):
            chosen.append((x, y))
            if len(chosen) == count:
                break
    return chosen


def cut_negative_crops(items: list[RawItem], out: Path, count: int, crop_size: int, margin: int,
                       seed: int) -> tuple[list[ImageRecord], list[str]]:
    """Write hard-negative crops of ulcer images to out/negatives/{split}/ and return their records and report lines."""
    records: list[ImageRecord] = []
    notes: list[str] = []
    for item in items:
        if item.mask_path is None or not item.final_boxes or count <= 0:
            continue
        mask = load_mask(item.mask_path)
        size = max(1, min(crop_size, item.width, item.height))
        rng = np.random.default_rng([seed, zlib.crc32(item.name.encode("utf-8"))])
        positions = _crop_positions(mask, size, margin, count, rng)
        if len(positions) < count:
            notes.append(f"negative crops: {item.path}: {len(positions)} of {count} crops of {size} px fit "
                         f"at least {margin} px from the mask")
        if not positions:
            continue
        image = load_pil(item.path)
        target = out / "negatives" / str(item.split)
        target.mkdir(parents=True, exist_ok=True)
        stem = Path(item.name).with_suffix("").as_posix().replace("/", "__")
        for k, (x, y) in enumerate(positions):
            dest = absolute(target / f"{stem}_neg{k}.png")
            save_image(image.crop((x, y, x + size, y + size)), dest, "PNG")  # pixels only, no EXIF/ICC
            records.append(ImageRecord(
                path=str(dest), width=size, height=size, boxes=[], split=str(item.split), healthy=True,
                source=f"negative_crop:{item.path}@{x},{y}", patient=item.patient, kind="negative_crop",
            ))
    return records, notes
