"""Rebuild the FUSeg 2021 box folder (`../shared/data/fuseg`) from a checkout of the public FUSeg source.

`dfudet data fuseg SOURCE --out DIR` reads `SOURCE/data/Foot Ulcer Segmentation Challenge/` of
https://github.com/uwm-bigdata/wound-segmentation (snapshot commit 42a272dfe0679f20675e826385925cb7562934b6; SOURCE may
also be that folder itself) and writes `images/{train,val,test}/fuseg_NNNN.jpg`, `masks/{split}/fuseg_NNNN.png`,
`annotations/{split}.json` and `SHA256SUMS`, following the rules of the folder's README:

- Source: `train/images/NNNN.png` + `train/labels/NNNN.png` (810 ids) and `validation/images|labels` (200 ids); the
  ids of the two folders together are 0001-1010. The unlabelled source `test/` folder is not used. The id lists must be
  exactly those of the snapshot (`VALIDATION_IDS`, the rest of 1-1010 is train): the split depends on the full list,
  so a missing or extra file would silently change it; both are refused, naming the files.
- Split (seed 20210312): ONE `random.Random(seed)` shuffles the sorted source-train ids, then the sorted
  source-validation ids (the same generator, continuing). In each shuffled list the smaller part is the head:
  val = the first 810 - 810*85//100 = 122 ids, train the other 688; holdout = the first 40 of validation, test the
  other 160. (Reverse-engineered from the shared annotations: of the orders tried, only this one gives every
  shared image its split; separate generators or the larger part first do not.)
- Exact duplicates: photos whose decoded RGB pixels are identical form a group; one copy is kept, the one in the
  highest-priority split (holdout > test > val > train), then the lowest id. The split is assigned before this
  step, so removed copies leave their split smaller (train 668, val 118, test 159 at the snapshot).
- Masks: read as grayscale (maximum over colour channels; the source masks are RGB with equal channels),
  foreground = `value > 127`; written as 0/255 8-bit PNG (Pillow, `optimize=True`). Boxes: 8-connected components
  (`scipy.ndimage.label`, 3x3 structure) in scipy's label order (raster order of each component's first pixel);
  components with fewer than 0.01 % of the image's pixels (26.2 at 512x512) are dropped, except the largest
  component of a non-empty mask (the first of equal largest ones), which is always kept. bbox = tight
  `[x, y, w, h]`, `area = w*h`, `mask_area` = the component's pixel count, `iscrowd = 0`.
- Images: the decoded source RGB pixels re-encoded by Pillow as JPEG quality 90 (its defaults otherwise: baseline,
  4:2:0, no metadata), at their size (no resizing).
- COCO files: images sorted by id (COCO image id = source id), annotations by image then component, ids from 1 in
  each split; `json.dumps` with its default separators and no trailing newline. `SHA256SUMS`: `hash  path` lines
  sorted by path for every written file (the shared folder's also lists its README.md, which is not written here).
- The holdout part (40 images) is not written, as in the shared folder; `FusegBuild.holdout_ids` names it.

Where the README leaves a rule open, it was read off the shared files: the generator, the order of the parts and
the annotation order from the COCO entries; the JPEG settings from the shared JPEGs' markers (quantisation tables,
sampling, default Huffman tables); the PNG settings by re-encoding the shared masks byte for byte. The 42 ids that
the shared folder does not name (40 holdout, and two train ids removed as copies of holdout photos) are the ids of
1-1010 it does not name. Which two are train: the seeded split reproduces every shared image's split only with 0121
and one of 0566/0569/0571 in train (all three give the same train/val/test); the public repository's file list has
0569 under train/ and 0566, 0571 under validation/. tests/data/test_fuseg_source.py checks what the shared folder
can show.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from dfudet.data.checks import open_image
from dfudet.errors import DataError

SOURCE_URL = "https://github.com/uwm-bigdata/wound-segmentation"
SNAPSHOT_COMMIT = "42a272dfe0679f20675e826385925cb7562934b6"
CHALLENGE_DIR = "data/Foot Ulcer Segmentation Challenge"
SEED = 20210312
SPLITS = ("train", "val", "test")
# Which copy of a duplicate group is kept: the lowest rank wins, then the lowest id.
PRIORITY = {"holdout": 0, "test": 1, "val": 2, "train": 3}
JPEG_QUALITY = 90
MIN_AREA_FRACTION = 1e-4  # 0.01 % of the image's pixels

# The 200 ids of the snapshot's `validation/` folder; `train/` holds the other ids of 1-1010.
VALIDATION_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 25, 30, 33, 46, 47, 57, 58, 62, 68, 78, 79, 82, 85, 89, 96, 107, 108, 122, 124,
    126, 128, 133, 134, 136, 143, 146, 164, 177, 180, 190, 192, 201, 203, 208, 211, 213, 217, 233, 235, 245, 251,
    256, 259, 262, 276, 278, 284, 289, 291, 300, 301, 303, 322, 326, 334, 337, 339, 341, 349, 355, 356, 363, 365,
    369, 375, 376, 382, 390, 398, 405, 407, 412, 416, 417, 429, 437, 438, 439, 447, 450, 451, 456, 466, 470, 475,
    483, 485, 494, 496, 503, 504, 511, 516, 517, 525, 528, 533, 541, 543, 545, 548, 549, 557, 559, 565, 566, 571,
    577, 580, 582, 588, 591, 603, 604, 607, 612, 615, 616, 627, 638, 642, 644, 647, 651, 652, 657, 674, 679, 682,
    706, 712, 715, 717, 721, 728, 729, 730, 738, 745, 757, 763, 781, 796, 798, 802, 806, 809, 813, 816, 820, 824,
    830, 833, 834, 835, 842, 847, 849, 865, 867, 869, 874, 880, 881, 887, 900, 901, 904, 905, 906, 922, 937, 940,
    946, 947, 948, 949, 954, 955, 958, 961, 964, 971, 973, 974, 976, 979, 985, 1003, 1009,
)
ALL_IDS = range(1, 1011)
TRAIN_IDS: tuple[int, ...] = tuple(sorted(set(ALL_IDS) - set(VALIDATION_IDS)))

# The shared COCO files' constant fields, word for word (the rebuilt files must equal them byte for byte).
_INFO_TERMS = (
    'FUSeg challenge design document (data/Foot Ulcer Segmentation Challenge/FootUlcerSegmentationChallenge2021.pdf, '
    'page 5, section "Data usage agreement"): "CC BY NC."  Repository README: "With their permission, we are sharing '
    'this dataset (./data/wound_dataset/) publicly."  No LICENSE file in the repository.'
)
_INFO_BOXES = (
    "8-connected components of (mask > 127); components with fewer than 0.01% of image pixels dropped, except that "
    "the largest component of a non-empty mask is always kept; bbox = tight [x, y, w, h] of each remaining component "
    "in pixel units; area = w*h; mask_area = component pixel count"
)
_LICENSES = [{"id": 1, "name": "CC BY NC (as stated in the FUSeg 2021 challenge design document)", "url": ""}]
_CATEGORIES = [{"id": 1, "name": "ulcer"}]
_ID_NAME = re.compile(r"^(\d{4})\.png$")


@dataclass
class _Item:
    """One source id after reading: where it goes, its pixels' hash and what will be written for it."""

    id: int
    source_split: str  # "train" or "validation" (the source folder)
    split: str  # train / val / test / holdout, before de-duplication
    pixel_hash: str = ""
    width: int = 0
    height: int = 0
    jpeg: bytes = b""
    mask_png: bytes = b""
    boxes: list[tuple[list[int], int]] = field(default_factory=list)  # ([x, y, w, h], pixel count)
    mask_empty: bool = False
    dropped: int = 0


@dataclass
class FusegBuild:
    """What `build_fuseg` wrote: per-split counts, the removed duplicates and the held-out ids."""

    out: Path
    counts: dict[str, dict[str, int]]  # split -> images, boxes, negatives, dropped_components
    removed: list[tuple[int, str, int, str]]  # (removed id, its split, kept id, kept split)
    holdout_ids: list[int]

    def summary_text(self) -> str:
        """Lines for the CLI: where the folder is and what it holds."""
        lines = [f"FUSeg boxes written to {self.out} (source commit {SNAPSHOT_COMMIT[:12]}, seed {SEED})"]
        for split in SPLITS:
            c = self.counts[split]
            lines.append(f"  {split:<5} {c['images']:>4} images  {c['boxes']:>4} boxes  {c['negatives']:>3} without "
                         f"boxes  {c['dropped_components']:>3} components under 0.01 % dropped")
        lines.append(f"  {len(self.removed)} exact duplicate(s) removed; {len(self.holdout_ids)} holdout images "
                     "not written (as in the shared folder)")
        return "\n".join(lines)


def find_challenge_dir(source: Path) -> Path:
    """The `Foot Ulcer Segmentation Challenge` folder: SOURCE/data/Foot Ulcer Segmentation Challenge or SOURCE."""
    source = Path(source)
    if not source.is_dir():
        raise DataError(f"{source}: no such folder; {_how_to_get()}")
    for candidate in (source / CHALLENGE_DIR, source):
        if (candidate / "train").is_dir() or (candidate / "validation").is_dir():
            return candidate
    raise DataError(f"{source}: not a FUSeg checkout: neither '{source / CHALLENGE_DIR}' nor train/ and validation/ "
                    f"folders are in it; {_how_to_get()}")


def _how_to_get() -> str:
    return (f"get the source with `git clone {SOURCE_URL}` then `git -C wound-segmentation checkout "
            f"{SNAPSHOT_COMMIT}` and pass the clone's folder")


def check_layout(challenge: Path) -> dict[int, str]:
    """Source folder ("train"/"validation") of every id, after checking the file names equal the snapshot's.

    Only names are checked here (nothing is decoded), so a wrong folder fails at once and before anything is written.

    Raises:
        DataError: listing every missing folder or file and every file the snapshot does not have.
    """
    problems: list[str] = []
    expected = {"train": TRAIN_IDS, "validation": VALIDATION_IDS}
    for folder, ids in expected.items():
        for kind in ("images", "labels"):
            d = challenge / folder / kind
            if not d.is_dir():
                problems.append(f"{d}: folder missing (the source has {len(ids)} {kind} in it)")
                continue
            found = {int(m.group(1)) for p in d.iterdir() if (m := _ID_NAME.match(p.name))}
            problems += [f"{d / f'{i:04d}.png'}: missing" for i in sorted(set(ids) - found)]
            problems += [f"{d / f'{i:04d}.png'}: not in the FUSeg snapshot (an extra file changes the seeded split)"
                         for i in sorted(found - set(ids))]
    if problems:
        raise DataError(f"{challenge}: not the FUSeg source layout of commit {SNAPSHOT_COMMIT[:12]} "
                        f"({len(problems)} problem(s)); nothing was written. {_how_to_get()}", problems)
    return {i: "train" for i in TRAIN_IDS} | {i: "validation" for i in VALIDATION_IDS}


def assign_splits(train_ids: list[int], validation_ids: list[int], seed: int = SEED) -> dict[int, str]:
    """Split of every source id before de-duplication: source train -> val/train, source validation -> holdout/test.

    Args:
        train_ids: ids of the source `train/` folder.
        validation_ids: ids of the source `validation/` folder.
        seed: seed of the one generator that shuffles both sorted lists, train first.

    Returns:
        id -> "train", "val", "test" or "holdout". The smaller part is the head of each shuffled list:
        len - len*85//100 ids go to val, len - len*80//100 to holdout.
    """
    rng = random.Random(seed)
    out: dict[int, str] = {}
    for ids, percent, head, tail in ((train_ids, 85, "val", "train"), (validation_ids, 80, "holdout", "test")):
        order = sorted(ids)
        rng.shuffle(order)
        n_head = len(order) - len(order) * percent // 100
        out.update({i: head if k < n_head else tail for k, i in enumerate(order)})
    return out


def component_boxes(mask: np.ndarray) -> tuple[list[tuple[list[int], int]], int]:
    """Boxes of a boolean mask by the FUSeg rule: ([x, y, w, h], pixel count) per kept component, and how many dropped.

    Components under 0.01 % of the mask's pixels are dropped, except the largest one (first of equal ones).
    """
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return [], 0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    largest = int(np.argmax(sizes))
    min_area = MIN_AREA_FRACTION * mask.size
    kept: list[tuple[list[int], int]] = []
    for k, (ys, xs) in enumerate(ndimage.find_objects(labels)):
        if sizes[k] < min_area and k != largest:
            continue
        kept.append(([xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start], int(sizes[k])))
    return kept, n - len(kept)


def _read_pixels(path: Path) -> np.ndarray:
    """Decoded pixels of a source PNG (pixel limit checked first)."""
    try:
        with open_image(path) as im:
            im.load()
            return np.asarray(im)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file vanished while reading") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: corrupt or unreadable PNG ({exc}); restore it with `git checkout -- .`") from exc


def _to_rgb(arr: np.ndarray, path: Path) -> np.ndarray:
    """(H, W, 3) uint8 from a grey, grey+alpha, RGB or RGBA array (alpha dropped: the photos are opaque)."""
    if arr.dtype != np.uint8:
        raise DataError(f"{path}: {arr.dtype} pixels, expected 8-bit RGB as in the FUSeg source")
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2)
    if arr.shape[2] >= 3:
        return np.ascontiguousarray(arr[..., :3])
    return np.repeat(arr[..., :1], 3, axis=2)


def _read_item(item: _Item, challenge: Path) -> None:
    """Decode the item's photo and mask; fill its hash, JPEG, binary mask PNG and boxes."""
    image_path = challenge / item.source_split / "images" / f"{item.id:04d}.png"
    mask_path = challenge / item.source_split / "labels" / f"{item.id:04d}.png"
    rgb = _to_rgb(_read_pixels(image_path), image_path)
    item.height, item.width = rgb.shape[:2]
    item.pixel_hash = hashlib.sha256(f"{rgb.shape}".encode() + rgb.tobytes()).hexdigest()
    if item.split != "holdout":  # the holdout is not written: no need to encode it
        buf = io.BytesIO()
        Image.fromarray(rgb, mode="RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)  # no metadata carried over
        item.jpeg = buf.getvalue()
    raw = _read_pixels(mask_path)
    grey = raw if raw.ndim == 2 else raw[..., :3].max(axis=2) if raw.shape[2] >= 3 else raw[..., 0]
    if grey.shape != (item.height, item.width):
        raise DataError(f"{mask_path}: mask is {grey.shape[1]}x{grey.shape[0]} but its photo {image_path} is "
                        f"{item.width}x{item.height}; restore the file from the repository")
    fg = grey > 127
    item.mask_empty = not bool(fg.any())
    item.boxes, item.dropped = component_boxes(fg)
    buf = io.BytesIO()
    Image.fromarray(fg.astype(np.uint8) * 255, mode="L").save(buf, format="PNG", optimize=True)
    item.mask_png = buf.getvalue()


def _remove_duplicates(items: dict[int, _Item]) -> list[tuple[int, str, int, str]]:
    """Drop all but one copy of every group of pixel-identical photos; return (removed, split, kept, kept split)."""
    groups: dict[str, list[int]] = {}
    for i, item in items.items():
        groups.setdefault(item.pixel_hash, []).append(i)
    removed: list[tuple[int, str, int, str]] = []
    for ids in groups.values():
        if len(ids) < 2:
            continue
        kept = min(ids, key=lambda i: (PRIORITY[items[i].split], i))
        removed += [(i, items[i].split, kept, items[kept].split) for i in sorted(ids) if i != kept]
    for i, *_ in removed:
        del items[i]
    return sorted(removed)


def _coco(split: str, items: list[_Item]) -> dict[str, Any]:
    """The COCO dict of one split, with the shared files' fields in their order."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for item in items:
        src = f"{CHALLENGE_DIR}/{item.source_split}"
        images.append({
            "id": item.id, "file_name": f"{split}/fuseg_{item.id:04d}.jpg", "width": item.width,
            "height": item.height, "license": 1, "source_split": item.source_split,
            "source_file": f"{src}/images/{item.id:04d}.png", "source_mask": f"{src}/labels/{item.id:04d}.png",
            "source_mask_empty": item.mask_empty,
        })
        for bbox, pixels in item.boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": item.id, "category_id": 1, "bbox": bbox,
                                "area": bbox[2] * bbox[3], "mask_area": pixels, "iscrowd": 0})
    info = {
        "description": f'FUSeg 2021 foot-ulcer boxes derived from segmentation masks, split "{split}"',
        "source": SOURCE_URL, "source_commit": SNAPSHOT_COMMIT, "source_terms": _INFO_TERMS,
        "box_derivation": _INFO_BOXES, "split_seed": SEED,
    }
    return {"info": info, "licenses": _LICENSES, "images": images, "annotations": annotations,
            "categories": _CATEGORIES}


def _write_folder(staging: Path, items: dict[int, _Item]) -> dict[str, dict[str, int]]:
    """Write images, masks, annotations and SHA256SUMS of train/val/test under `staging`; return the counts."""
    files: dict[str, bytes] = {}
    counts: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        members = [items[i] for i in sorted(items) if items[i].split == split]
        for item in members:
            files[f"images/{split}/fuseg_{item.id:04d}.jpg"] = item.jpeg
            files[f"masks/{split}/fuseg_{item.id:04d}.png"] = item.mask_png
        files[f"annotations/{split}.json"] = json.dumps(_coco(split, members)).encode()
        counts[split] = {"images": len(members), "boxes": sum(len(m.boxes) for m in members),
                         "negatives": sum(not m.boxes for m in members),
                         "dropped_components": sum(m.dropped for m in members)}
    sums = []
    for rel in sorted(files):
        path = staging / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(files[rel])
        sums.append(f"{hashlib.sha256(files[rel]).hexdigest()}  {rel}\n")
    (staging / "SHA256SUMS").write_text("".join(sums))
    return counts


def build_fuseg(source: Path, out: Path) -> FusegBuild:
    """Rebuild the shared FUSeg box folder (train/val/test images, masks, COCO files) from the public source.

    Args:
        source: a clone of uwm-bigdata/wound-segmentation at the snapshot commit, or its
            `data/Foot Ulcer Segmentation Challenge` folder.
        out: folder to create; it must not exist or be empty. It appears complete or not at all (the files are
            written to a hidden sibling folder that is renamed at the end).

    Returns:
        What was written: counts per split, the removed duplicates and the holdout ids.

    Raises:
        DataError: the source is not the snapshot's layout (every missing or extra file named), a file is unreadable,
            or `out` already holds files; nothing is written then.
    """
    source, out = Path(source), Path(out)
    challenge = find_challenge_dir(source)
    folder_of = check_layout(challenge)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: already exists and is not an empty folder; choose a new --out (nothing is "
                        "overwritten)")
    split_of = assign_splits(list(TRAIN_IDS), list(VALIDATION_IDS))
    items = {i: _Item(id=i, source_split=folder_of[i], split=split_of[i]) for i in ALL_IDS}
    problems: list[str] = []
    for item in items.values():
        try:
            _read_item(item, challenge)
        except DataError as exc:
            problems.append(str(exc))
    if problems:
        raise DataError(f"{challenge}: {len(problems)} unreadable source file(s); nothing was written", problems)
    removed = _remove_duplicates(items)
    holdout = sorted(i for i, item in items.items() if item.split == "holdout")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        counts = _write_folder(staging, items)
        if out.is_dir():
            out.rmdir()  # checked empty above
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return FusegBuild(out=out, counts=counts, removed=removed, holdout_ids=holdout)
