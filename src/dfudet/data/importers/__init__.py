"""`dfudet data import`: read COCO / VOC / YOLO / DFUC CSV / mask annotations plus healthy folders into a dataset dir.

Pipeline: parse (one module per format) -> patient ids -> duplicate check -> splits -> decode every image and
check every box against the image *after* EXIF orientation -> either one DataError listing every problem, or
(skip_bad) skip each bad image whole, so no ulcer image silently loses a box -> negative crops -> write
dataset.json and import_report.txt at the very end (an existing dataset is untouched when the import fails).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dfudet.data import instance_masks
from dfudet.data.checks import check_box, describe_clip, load_pil, open_image
from dfudet.data.importers import masks as masks_mod
from dfudet.data.importers._common import ParseResult, RawItem, require_dir
from dfudet.data.importers.coco import parse_coco
from dfudet.data.importers.dfuc_csv import parse_dfuc_csv
from dfudet.data.importers.healthy import parse_healthy
from dfudet.data.importers.splits import assign_splits, check_fractions, compile_patient_regex, patient_from_name
from dfudet.data.importers.voc import parse_voc
from dfudet.data.importers.yolo import parse_yolo
from dfudet.data.records import REPORT_FILE, ImageRecord, summarize, write_dataset
from dfudet.errors import ConfigError, DataError
from dfudet.utils import atomic_write_bytes

ERRORS_FILE = "import_errors.txt"

__all__ = ["FORMATS", "ImportFormat", "ImportOptions", "ImportResult", "import_dataset"]


@dataclass
class ImportOptions:
    """Knobs of an import (mask components, negative crops, seeded split, patient ids)."""

    min_area: float = 26.0  # masks: components with fewer pixels are dropped (counted in the report)
    negative_crops: int = 0  # masks: hard-negative crops per ulcer image (0 = none)
    crop_size: int = 256
    crop_margin: int = 32  # crop must be at least this many px from every mask pixel
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    patient_regex: str | None = None  # one capture group -> patient id from file name
    patient_column: str | None = None  # dfuc-csv column with patient id


@dataclass(frozen=True)
class ImportFormat:
    """One annotation format: what --annotations must be and the parser that turns it into raw items."""

    name: str
    annotations: str  # "file" (one or more files), "folder" (exactly one folder) or "any"
    parse: Callable[[Path, list[Path], ImportOptions], ParseResult]
    help: str


# The one registry of import formats (the CLI's --format choices and help come from here).
FORMATS: dict[str, ImportFormat] = {f.name: f for f in (
    ImportFormat("coco", "file", lambda images, anns, opts: parse_coco(images, anns),
                 "COCO json file(s) with bbox or segmentation annotations"),
    ImportFormat("voc", "any", lambda images, anns, opts: parse_voc(images, anns),
                 "Pascal VOC xml files or folders of them"),
    ImportFormat("yolo", "folder", lambda images, anns, opts: parse_yolo(images, anns[0]),
                 "one folder of YOLO txt labels (class cx cy w h, normalised)"),
    ImportFormat("dfuc-csv", "file", lambda images, anns, opts: parse_dfuc_csv(images, anns, opts.patient_column),
                 "DFUC2020 CSV (name,xmin,ymin,xmax,ymax; one row per box)"),
    ImportFormat("masks", "folder", lambda images, anns, opts: masks_mod.parse_masks(images, anns[0]),
                 "one folder of wound masks named like the images (boxes from connected components)"),
)}


@dataclass
class ImportResult:
    """What an import produced: the records, every report line and where the dataset was written."""

    records: list[ImageRecord]
    report_lines: list[str]  # everything clipped / dropped / skipped, one line each, naming file (and line)
    dataset_dir: Path
    counts: dict[str, int] = field(default_factory=dict)

    def summary_text(self) -> str:
        """Per-split table plus clipped/dropped/skipped counts and the report path, for the CLI."""
        rows = summarize(self.records)
        crops: dict[str, int] = {}
        for r in self.records:
            if r.kind == "negative_crop":
                crops[r.split] = crops.get(r.split, 0) + 1
        lines = [f"dataset written to {self.dataset_dir}",
                 f"  {'split':<6} {'images':>7} {'boxes':>7} {'ulcer':>7} {'healthy':>8} {'neg.crops':>10}"]
        total = {"images": 0, "boxes": 0, "ulcer_images": 0, "healthy_images": 0}
        for split, s in rows.items():
            lines.append(f"  {split:<6} {s['images']:>7} {s['boxes']:>7} {s['ulcer_images']:>7} "
                         f"{s['healthy_images']:>8} {crops.get(split, 0):>10}")
            total = {k: total[k] + s[k] for k in total}
        lines.append(f"  {'total':<6} {total['images']:>7} {total['boxes']:>7} {total['ulcer_images']:>7} "
                     f"{total['healthy_images']:>8} {sum(crops.values()):>10}")
        c = self.counts
        lines.append(f"  clipped boxes: {c.get('clipped_boxes', 0)}  dropped mask components: "
                     f"{c.get('dropped_components', 0)}  skipped images: {c.get('skipped_images', 0)}  "
                     f"skipped entries: {c.get('skipped_entries', 0)}")
        masked = c.get("masked_ulcers", 0)
        lines.append(f"  ulcers with an outline (mask): {masked} of {total['boxes']}"
                     + ("" if masked else " (box-only data: detection works, outlines and areas need masks)"))
        lines.append(f"  report: {self.dataset_dir / REPORT_FILE}")
        return "\n".join(lines)


def _check_arguments(fmt: str, images: Path | None, annotations: list[Path], opts: ImportOptions) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown import format {fmt!r} (choose one of {', '.join(FORMATS)})")
    spec = FORMATS[fmt]
    check_fractions(opts.val_fraction, opts.test_fraction)
    if opts.min_area < 0 or opts.negative_crops < 0 or opts.crop_size < 1 or opts.crop_margin < 0:
        raise ConfigError("min_area, negative_crops and crop_margin must be >= 0 and crop_size >= 1")
    if opts.negative_crops and fmt != "masks":
        raise ConfigError("--negative-crops needs --format masks (crops are cut away from the mask)")
    if opts.patient_column and fmt != "dfuc-csv":
        raise ConfigError("--patient-column only applies to --format dfuc-csv (use --patient-regex otherwise)")
    require_dir(images, "--images")
    if not annotations:
        raise DataError(f"--annotations is required for --format {fmt}")
    for a in annotations:
        if not a.exists():
            raise DataError(f"--annotations {a}: file or folder does not exist")
    if spec.annotations == "folder":
        if len(annotations) != 1 or not annotations[0].is_dir():
            raise DataError(f"--format {fmt} takes exactly one --annotations folder "
                            f"(got {', '.join(map(str, annotations))})")
    elif spec.annotations == "file":
        for a in annotations:
            if not a.is_file():
                raise DataError(f"--annotations {a}: --format {fmt} needs a file, not a folder")


def _parse(fmt: str, images: Path, annotations: list[Path], opts: ImportOptions) -> ParseResult:
    return FORMATS[fmt].parse(images, annotations, opts)


def _ref(item: RawItem) -> str:
    return item.where or str(item.path)


def _assign_patients(items: list[RawItem], pattern: str | None) -> None:
    rx = compile_patient_regex(pattern)
    if rx is None:
        return
    for item in items:
        if item.patient is None:
            item.patient = patient_from_name(rx, item.name)
            if item.patient is None and not item.from_healthy_dir:
                item.problems.append(f"{_ref(item)}: --patient-regex {pattern!r} does not match '{item.name}'")


def _mark_duplicates(items: list[RawItem]) -> None:
    by_path: dict[str, list[RawItem]] = {}
    for item in items:
        by_path.setdefault(os.path.realpath(item.path), []).append(item)
    for group in by_path.values():
        if len(group) > 1:
            for item in group:
                others = "; ".join(_ref(o) for o in group if o is not item)
                item.problems.append(f"{_ref(item)}: image '{item.name}' is listed more than once in this import "
                                     f"(also: {others})")


def _validate(item: RawItem, min_area: float) -> None:
    """Decode the image, check its declared size and its boxes; fills width/height/final_boxes or item.problems."""
    try:
        width, height = load_pil(item.path).size
    except DataError as exc:
        item.problems.append(f"{item.where}: {exc}" if item.where else str(exc))
        return
    item.width, item.height = width, height
    if item.expected_size is not None and item.expected_size != (width, height):
        with open_image(item.path) as im:
            raw = im.size
        hint = (" - it gives the stored size before EXIF rotation; boxes must be given for the rotated image"
                if raw == item.expected_size else "")
        ew, eh = item.expected_size
        item.problems.append(f"{_ref(item)}: annotation says {ew}x{eh} but the image is {width}x{height} "
                             f"after EXIF orientation{hint}")
        return
    if item.mask_path is not None:
        masks_mod.apply_mask(item, min_area)
        return
    masks: list[dict[str, Any]] = []
    for rb in item.boxes:
        coords = rb.coords
        if rb.normalized:
            coords = (coords[0] * width, coords[1] * height, coords[2] * width, coords[3] * height)
        res = check_box(coords, width, height)
        if res.box is None:
            item.problems.append(f"{rb.where}: {res.problem}")
            continue
        item.final_boxes.append(res.box)
        if res.clipped:
            item.clipped += 1
            item.notes.append(f"clipped: {rb.where}: {describe_clip(coords, res.box, width, height)}")
        if rb.segmentation is not None:
            try:
                masks.append(_segmentation_rle(rb.segmentation, width, height, rb.where))
            except DataError as exc:
                item.problems.append(str(exc))
    with_masks = sum(rb.segmentation is not None for rb in item.boxes)
    if with_masks and with_masks < len(item.boxes):
        item.notes.append(f"masks dropped: {_ref(item)}: {with_masks} of {len(item.boxes)} ulcers have a "
                          "segmentation; the image is kept with boxes only (a mask per ulcer or none)")
    elif with_masks and not item.problems:
        item.final_masks = masks


def _segmentation_rle(seg: Any, width: int, height: int, where: str) -> dict[str, Any]:
    """A COCO segmentation (polygons or RLE) as a checked RLE of the oriented image."""
    if isinstance(seg, list):
        polygons = [p for p in seg if isinstance(p, list)]
        if not polygons or any(len(p) < 6 or len(p) % 2 or not all(isinstance(v, (int, float)) for v in p)
                               for p in polygons):
            raise DataError(f"{where}: segmentation is not a list of polygons [x1, y1, x2, y2, x3, y3, ...]")
        return instance_masks.from_polygons(polygons, width, height)
    return instance_masks.check(seg, width, height, f"{where}: segmentation")


def _to_record(item: RawItem) -> ImageRecord:
    return ImageRecord(
        path=str(item.path), width=item.width, height=item.height, boxes=item.final_boxes,
        split=str(item.split), healthy=not item.final_boxes, source=item.source, patient=item.patient, kind="photo",
        masks=item.final_masks,
    )


def _write_text(path: Path, header: str, lines: list[str]) -> None:
    body = header + "\n" + ("\n".join(lines) if lines else "nothing was clipped, dropped or skipped") + "\n"
    atomic_write_bytes(path, body.encode("utf-8"))


def import_dataset(fmt: str, images: Path | None, annotations: list[Path], healthy: list[Path], out: Path,
                   skip_bad: bool = False, options: ImportOptions | None = None) -> ImportResult:
    """Import annotations + healthy folders into the dataset dir `out`; raise one DataError listing every problem."""
    opts = options or ImportOptions()
    out = Path(out)
    annotations = [Path(a) for a in annotations]
    _check_arguments(fmt, images, annotations, opts)
    assert images is not None
    parsed = _parse(fmt, Path(images), annotations, opts)
    extra = parse_healthy([Path(h) for h in healthy])
    items = parsed.items + extra.items
    entry_problems = parsed.problems + extra.problems

    _assign_patients(items, opts.patient_regex)
    _mark_duplicates(items)
    warnings = assign_splits(items, opts.val_fraction, opts.test_fraction, opts.seed)
    for item in items:
        _validate(item, opts.min_area)

    bad = [i for i in items if i.problems]
    problems = entry_problems + [p for i in bad for p in i.problems]
    if problems and not skip_bad:
        _write_text(out / ERRORS_FILE, f"dfudet import ({fmt}) failed: {len(problems)} problem(s)", problems)
        raise DataError(
            f"import of {fmt} annotations failed with {len(problems)} problem(s) in {len(bad)} image(s) and "
            f"{len(entry_problems)} other entr{'y' if len(entry_problems) == 1 else 'ies'}; {out / 'dataset.json'} "
            f"was not written (full list in {out / ERRORS_FILE}). Fix them, or pass --skip-bad to skip the bad "
            "images and list them in the import report.",
            problems,
        )
    kept = [i for i in items if not i.problems]
    if not kept:
        raise DataError(f"import of {fmt} annotations found no usable image (images: {images})", problems)

    records = [_to_record(i) for i in kept]
    crop_records, crop_notes = masks_mod.cut_negative_crops(
        kept, out, opts.negative_crops, opts.crop_size, opts.crop_margin, opts.seed)
    records += crop_records

    report = [n for i in kept for n in i.notes] + [f"skipped: {p}" for p in problems]
    report += parsed.notes + extra.notes + warnings + crop_notes
    counts = {
        "clipped_boxes": sum(i.clipped for i in kept),
        "dropped_components": sum(i.dropped for i in kept),
        "skipped_images": len(bad),
        "skipped_entries": len(entry_problems),
        "negative_crops": len(crop_records),
        # ulcers kept with their outline (masks importer, COCO segmentations): what area and outline models use
        "masked_ulcers": sum(len(r.masks or []) for r in records),
    }
    extra_summary = {"import": {
        "format": fmt, "images": str(Path(images).resolve()), "annotations": [str(a.resolve()) for a in annotations],
        "healthy": [str(Path(h).resolve()) for h in healthy], "options": asdict(opts), **counts,
    }}
    write_dataset(out, records, extra_summary)
    _write_text(out / REPORT_FILE, f"dfudet import report ({fmt}): {len(records)} records", report)
    (out / ERRORS_FILE).unlink(missing_ok=True)  # a failed earlier attempt's list no longer applies
    return ImportResult(records=records, report_lines=report, dataset_dir=out, counts=counts)

