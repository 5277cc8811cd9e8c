"""`dfudet data shifted`: a COCO set of photos unlike FUSeg's framing, built from one held-out split only.

Three subsets, each image's subset in its COCO image entry (`"shift"`), every wound with its mask (COCO RLE):

- **pasted**: every healthy-foot photo of the split, once per relative scale in PASTE_SCALES, with 1 or 2 wounds
  (seeded) cut from the FUSeg photos of the same split and pasted on skin (dfudet.data.copy_paste: feathered edge,
  colour matched at COLOR_MATCH; shrunk when too big for any skin region). A relative scale of 1 makes the wound
  cover the same share of the photo (side over sqrt(W * H)) as in its FUSeg photo. Only wounds of at least
  MIN_SOURCE_SIDE px (sqrt of box area, in the 512 px FUSeg photo) are pasted: smaller ones would shrink to a few
  pixels.
- **lowres**: every FUSeg photo of the split downscaled to LOWRES_WIDTH px wide (INTER_AREA; masks resized as float
  maps, > 0.5) and stored at that size; the model upsamples it to its input.
- **color**: every FUSeg photo of the split under one colour cast of COLOR_CASTS (seeded per photo), fixed
  strengths, applied as gains in linear light (sRGB gamma 2.2).

Material: FUSeg `images/<split>`, `masks/<split>` (wounds = 8-connected mask components of at least 26 px, the
largest always kept: the rule of FUSeg's own boxes and of `import --format masks`) and the healthy photos of the
same split (`--healthy DIR/<split>/`, or `--healthy DIR --healthy-split CSV` with each photo's SHA-256 checked). The
val set is built from val material, the test set from test material: nothing crosses.

Layout written (several splits may share one OUT): images/<split>/*.jpg, annotations/<split>.json (what
`dfudet data import --format coco` reads), subsets/<split>-<shift>.json (one subset each, for per-subset
`dfudet evaluate --data JSON --images OUT/images`), README.md (the recipe and the counts).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dfudet.data import instance_masks
from dfudet.data.checks import IMAGE_EXTENSIONS, load_image
from dfudet.data.copy_paste import paste_wounds
from dfudet.data.importers.masks import load_mask, mask_components
from dfudet.data.instance_masks import tight_boxes
from dfudet.errors import DataError
from dfudet.utils import atomic_write_bytes, sha256_file

SPLITS = ("val", "test")
SHIFTS = ("pasted", "lowres", "color")
PASTE_SCALES = (0.5, 1.0, 1.5)
WOUNDS_PER_PHOTO = (1, 2)
MIN_SOURCE_SIDE = 16.0
MIN_COMPONENT_AREA = 26.0
COLOR_MATCH = 0.5
LOWRES_WIDTH = 320
JPEG_QUALITY = 95
# name -> (R, G, B gains in linear light): a white-balance error or an exposure error of a phone photo
COLOR_CASTS: dict[str, tuple[float, float, float]] = {
    "tungsten": (1.25, 1.0, 0.7),  # warm indoor light, uncorrected
    "shade": (0.8, 0.95, 1.25),  # blue daylight shade
    "fluorescent": (0.9, 1.15, 0.9),  # green office tubes
    "dim": (0.45, 0.45, 0.45),  # under-exposed (about -1.2 EV)
    "bright": (1.8, 1.8, 1.8),  # over-exposed (about +0.85 EV, highlights clip)
}
_SUBSET_SEED = {"pasted": 1, "lowres": 2, "color": 3}
README = "README.md"


# ---------------------------------------------------------------------------------------------- material
def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def fuseg_photos(fuseg: Path, split: str) -> list[tuple[Path, Path]]:
    """(photo, mask) pairs of one FUSeg split, sorted by name; a missing folder or mask is a DataError."""
    img_dir, mask_dir = fuseg / "images" / split, fuseg / "masks" / split
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise DataError(f"--fuseg {fuseg}: {d} does not exist (expected FUSeg's images/<split>/ and "
                            "masks/<split>/ folders)")
    pairs = []
    for p in _images_in(img_dir):
        m = mask_dir / f"{p.stem}.png"
        if not m.is_file():
            raise DataError(f"{p}: no mask {m}; the shifted set needs every FUSeg photo's wound mask")
        pairs.append((p, m))
    if not pairs:
        raise DataError(f"--fuseg {fuseg}: no photos in {img_dir}")
    return pairs


def healthy_photos(healthy: Path, split: str, split_csv: Path | None = None) -> list[Path]:
    """The healthy photos of `split`: from the CSV (name, sha256, split; digests checked) or from healthy/<split>/."""
    if split_csv is not None:
        try:
            with Path(split_csv).open(newline="", encoding="utf-8") as f:
                rows = [r for r in csv.DictReader(f)]
        except OSError as exc:
            raise DataError(f"--healthy-split {split_csv}: cannot read it ({exc})") from exc
        if not rows or not {"name", "sha256", "split"} <= set(rows[0]):
            raise DataError(f"--healthy-split {split_csv}: expected the columns name, sha256, split")
        out = []
        for r in rows:
            if r["split"] != split:
                continue
            p = healthy / r["name"]
            if not p.is_file():
                raise DataError(f"{p}: listed in {split_csv} ({split}) but missing; pass the folder of the photos "
                                "as --healthy")
            if sha256_file(p) != r["sha256"]:
                raise DataError(f"{p}: its SHA-256 differs from {split_csv}; the split is fixed for these exact "
                                "photos (restore the file)")
            out.append(p)
        if not out:
            raise DataError(f"--healthy-split {split_csv}: no photo in split {split!r}")
        return sorted(out)
    folder = healthy / split
    if not folder.is_dir():
        raise DataError(f"--healthy {healthy}: no {split}/ subfolder; lay the photos out by split "
                        "(scripts/healthy_feet_split.py layout) or pass --healthy-split CSV")
    out = _images_in(folder)
    if not out:
        raise DataError(f"--healthy {healthy}: no photos in {folder}")
    return out


def _components(mask_path: Path) -> list[np.ndarray]:
    """The wound masks (one per kept component) of a FUSeg mask file."""
    _, rles, _ = mask_components(load_mask(mask_path), MIN_COMPONENT_AREA)
    return [instance_masks.decode(r) for r in rles]


# ---------------------------------------------------------------------------------------------- transforms
def apply_cast(image: np.ndarray, gains: tuple[float, float, float]) -> np.ndarray:
    """The photo under per-channel gains in linear light (sRGB approximated by gamma 2.2), clipped to 8 bits."""
    lin = (image.astype(np.float32) / 255.0) ** 2.2 * np.asarray(gains, np.float32)
    return np.clip(np.rint(255.0 * np.clip(lin, 0.0, 1.0) ** (1 / 2.2)), 0, 255).astype(np.uint8)


def resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """A wound mask resized like its photo (area-averaged, > 0.5); never emptied (its strongest pixel stays)."""
    soft = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
    out = soft > 0.5
    if not out.any():
        out.flat[int(np.argmax(soft))] = True
    return out


# ---------------------------------------------------------------------------------------------- writing
class _Coco:
    """COCO detection file under construction (one category, RLE segmentations)."""

    def __init__(self) -> None:
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def add(self, entry: dict[str, Any], masks: list[np.ndarray]) -> None:
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, **entry})
        for m in masks:
            rle = instance_masks.encode(m)
            x0, y0, x1, y1 = (int(v) for v in tight_boxes(np.asarray(m, np.uint8)[None])[0])
            x, y, w, h = x0, y0, x1 - x0, y1 - y0
            self.annotations.append({"id": len(self.annotations) + 1, "image_id": image_id, "category_id": 1,
                                     "bbox": [x, y, w, h], "area": instance_masks.area(rle), "segmentation": rle,
                                     "iscrowd": 0})

    def payload(self, description: str, keep: Callable[[dict[str, Any]], bool] = lambda e: True) -> dict[str, Any]:
        images = [e for e in self.images if keep(e)]
        ids = {e["id"] for e in images}
        return {"info": {"description": description}, "images": images,
                "annotations": [a for a in self.annotations if a["image_id"] in ids],
                "categories": [{"id": 1, "name": "ulcer"}]}


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise DataError(f"{path}: JPEG encoding failed")
    atomic_write_bytes(path, buf.tobytes())


def build_shifted(fuseg: Path, healthy: Path, split: str, out: Path, seed: int = 0,
                  healthy_split: Path | None = None) -> dict[str, Any]:
    """Write the shifted set of one held-out split (val or test) into `out`; returns counts per subset.

    Args:
        fuseg: FUSeg folder (images/<split>/, masks/<split>/).
        healthy: healthy-foot photos: a folder with <split>/ subfolders, or the photos' folder with `healthy_split`.
        split: "val" or "test"; only that split's material is read.
        out: output folder (images/<split>/, annotations/<split>.json, subsets/, README.md).
        seed: seeds wound choice, wound count, paste positions and colour casts (same seed, same bytes).
        healthy_split: CSV (name, sha256, split) fixing the healthy split, e.g. configs/splits/healthy_feet.csv.

    Returns:
        {"split", "images", "wounds", "subsets": {shift: {"images", "wounds"}}, "pasted_on_skin", "pasted_wounds"}.
    """
    if split not in SPLITS:
        raise DataError(f"--split {split!r}: the shifted set is built from held-out material only: val or test")
    fuseg, healthy, out = Path(fuseg), Path(healthy), Path(out)
    pairs = fuseg_photos(fuseg, split)
    feet = healthy_photos(healthy, split, healthy_split)
    img_dir = out / "images" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    coco = _Coco()
    written: set[str] = set()

    def emit(name: str, image: np.ndarray, masks: list[np.ndarray], entry: dict[str, Any]) -> None:
        _write_jpeg(img_dir / name, image)
        written.add(name)
        coco.add({"file_name": f"{split}/{name}", "width": int(image.shape[1]), "height": int(image.shape[0]),
                  **entry}, masks)

    # the wound pool of the split: (photo, component index, mask), only wounds big enough to paste
    wounds = [(p, k, m) for p, mp in pairs for k, m in enumerate(_components(mp))
              if np.sqrt(np.prod(_box_size(m))) >= MIN_SOURCE_SIDE]
    if not wounds:
        raise DataError(f"{fuseg}: no wound of at least {MIN_SOURCE_SIDE:g} px in split {split}")
    on_skin = n_pasted = 0
    for fi, foot in enumerate(feet):
        target = load_image(foot)
        for si, rel in enumerate(PASTE_SCALES):
            rng = np.random.default_rng([seed, _SUBSET_SEED["pasted"], fi, si])
            n = int(rng.choice(WOUNDS_PER_PHOTO))
            picks = [wounds[int(j)] for j in rng.choice(len(wounds), size=n, replace=False)]
            sources = [(load_image(p), m) for p, _, m in picks]
            r = paste_wounds(rng, target, None, sources, [rel] * n, color_match=COLOR_MATCH, shrink=True)
            info = [{"source": f"fuseg:{split}/{p.name}", "component": k, **d} for (p, k, _), d in zip(picks, r.pasted)]
            on_skin += sum(bool(d["on_skin"]) for d in r.pasted)
            n_pasted += n
            emit(f"pasted_{foot.stem}_x{rel:g}.jpg", r.image, list(r.masks.astype(bool)),
                 {"shift": "pasted", "source": f"healthy:{foot.name}", "relative_scale": rel, "wounds": info})
    casts = list(COLOR_CASTS)
    for pi, (photo, mask_path) in enumerate(pairs):
        image, comps = load_image(photo), _components(mask_path)
        h, w = image.shape[:2]
        lw, lh = LOWRES_WIDTH, max(1, round(h * LOWRES_WIDTH / w))
        small = cv2.resize(image, (lw, lh), interpolation=cv2.INTER_AREA)
        emit(f"lowres_{photo.stem}.jpg", small, [resize_mask(m, lw, lh) for m in comps],
             {"shift": "lowres", "source": f"fuseg:{split}/{photo.name}"})
        cast = casts[int(np.random.default_rng([seed, _SUBSET_SEED["color"], pi]).integers(len(casts)))]
        emit(f"color_{photo.stem}.jpg", apply_cast(image, COLOR_CASTS[cast]), comps,
             {"shift": "color", "source": f"fuseg:{split}/{photo.name}", "cast": cast})
    for stale in img_dir.iterdir():  # files of an earlier build of this split that this recipe no longer writes
        if stale.is_file() and stale.name not in written:
            stale.unlink()

    desc = f"dfudet shifted {split} set (seed {seed}) from FUSeg {split} and healthy feet {split}"
    atomic_write_bytes(out / "annotations" / f"{split}.json", json.dumps(coco.payload(desc)).encode("utf-8"))
    subsets: dict[str, dict[str, int]] = {}
    for shift in SHIFTS:
        part = coco.payload(f"{desc}: {shift} only", keep=lambda e, s=shift: e["shift"] == s)  # type: ignore[misc]
        atomic_write_bytes(out / "subsets" / f"{split}-{shift}.json", json.dumps(part).encode("utf-8"))
        subsets[shift] = {"images": len(part["images"]), "wounds": len(part["annotations"])}
    summary = {"split": split, "seed": seed, "images": len(coco.images), "wounds": len(coco.annotations),
               "subsets": subsets, "pasted_wounds": n_pasted, "pasted_on_skin": on_skin,
               "healthy_photos": len(feet), "fuseg_photos": len(pairs), "wound_pool": len(wounds)}
    atomic_write_bytes(out / "summaries" / f"{split}.json", json.dumps(summary, indent=1).encode("utf-8"))
    _write_readme(out)
    return summary


def _box_size(mask: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def _write_readme(out: Path) -> None:
    """README.md of the output: the recipe and the counts of every split built into it so far."""
    rows = []
    for path in sorted((out / "summaries").glob("*.json")):
        s = json.loads(path.read_text(encoding="utf-8"))
        sub = s["subsets"]
        rows.append(f"| {s['split']} | {s['seed']} | {s['images']} | {s['wounds']} | "
                    + " | ".join(f"{sub[k]['images']} / {sub[k]['wounds']}" for k in SHIFTS)
                    + f" | {s['pasted_on_skin']} of {s['pasted_wounds']} |")
    casts = ", ".join(f"{k} {v}" for k, v in COLOR_CASTS.items())
    text = f"""# Shifted FUSeg set (`dfudet data shifted`)

Photos unlike FUSeg's 512 px clinic close-ups, built from **held-out material only**: the val set from FUSeg val and
the healthy-feet val photos, the test set from FUSeg test and the healthy-feet test photos; nothing crosses.
Rebuild: `dfudet data shifted --fuseg FUSEG --healthy HEALTHY/images --healthy-split configs/splits/healthy_feet.csv
--split SPLIT --out OUT --seed SEED` (same seed, same bytes).

Every image entry of `annotations/<split>.json` carries `"shift"` (its subset) and its provenance; every wound has
its mask (COCO RLE). `subsets/<split>-<shift>.json` hold one subset each (file names relative to `images/`).

| subset | what | per split |
|---|---|---|
| pasted | each healthy-foot photo once per relative scale {", ".join(f"{s:g}x" for s in PASTE_SCALES)}, with \
{" or ".join(map(str, WOUNDS_PER_PHOTO))} wounds (seeded) cut from the split's FUSeg photos (8-connected mask \
components of >= {MIN_COMPONENT_AREA:g} px whose box side sqrt(w*h) is >= {MIN_SOURCE_SIDE:g} px) | healthy photos \
x {len(PASTE_SCALES)} |
| lowres | each FUSeg photo downscaled to {LOWRES_WIDTH} px wide (INTER_AREA), stored at that size; masks \
area-resized, > 0.5 | FUSeg photos |
| color | each FUSeg photo under one colour cast (seeded per photo) of fixed strength, RGB gains in linear light \
(gamma 2.2): {casts} | FUSeg photos |

Pasting (dfudet.data.copy_paste, Simple Copy-Paste, Ghiasi et al. 2021): relative scale 1 gives the wound the same
size relative to the photo (box side over sqrt(W*H)) as in its FUSeg photo, lowered when its box would exceed 90%
of the photo's width or height. Feathered edge: alpha = max(mask, min(1, 2 * Gaussian(mask))), sigma 4% of the
wound side (0.7-4 px). Colour matched at {COLOR_MATCH:g}: the patch is shifted in CIE Lab by that share of the
difference between the target's mean colour under the patch and the source's skin ring around the wound.
Position: uniform among places where >= 80% of the wound box is skin (YCrCb: Cr 133-173, Cb 77-127, Y >= 40,
HSV saturation >= 50/255, opened 5x5) and which do not touch another pasted wound; a wound that fits nowhere on
skin is retried at 0.8, 0.64, ... 0.26 of its size (a wound bigger than the foot is implausible; each wound's
`relative_scale` in the image entry is the one used), and if none fits, pasted at the smallest where the skin share
is largest. In a black-and-white photo the wound is pasted in grey, and "skin" is the brighter side of an Otsu
split of luma. Skin-coloured cloth, walls or sand pass the colour rule, so some wounds sit beside the foot. Images
are JPEG quality {JPEG_QUALITY}.

| split | seed | images | wounds | pasted (images / wounds) | lowres | color | pasted wounds on skin |
|---|---|---|---|---|---|---|---|
""" + "\n".join(rows) + "\n"
    atomic_write_bytes(out / README, text.encode("utf-8"))
