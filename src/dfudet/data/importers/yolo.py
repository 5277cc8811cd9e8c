"""YOLO txt labels -> raw items.

- Every image under --images (recursively) is an item; its label is `--annotations/<same relative folder>/<stem>.txt`
  (`images/train/a.jpg` <-> `labels/train/a.txt`).
- A line is `class cx cy w h`, normalised to the image size *after* EXIF orientation; every class counts as ulcer.
- An image without a label file, or with an empty one, is ulcer-free (healthy).
- A label file without an image is an error; `classes.txt` is YOLO's class-name list and is not a label.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from dfudet.data.importers._common import ParseResult, RawBox, RawItem, absolute, ignored_note, scan_images, stem_key
from dfudet.data.importers.splits import split_from_relpath

CLASS_NAME_FILES = {"classes.txt"}


def _parse_label(label: Path, item: RawItem) -> None:
    try:
        lines = label.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        item.problems.append(f"{label}: cannot read label file ({exc})")
        return
    for ln, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label}:{ln}"
        if len(fields) != 5:
            item.problems.append(f"{where}: expected 5 values 'class cx cy w h', got {len(fields)}")
            continue
        try:
            int(fields[0])
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError:
            item.problems.append(f"{where}: values must be an integer class and 4 numbers, got {line.strip()!r}")
            continue
        item.boxes.append(RawBox((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), where=where, normalized=True))


def parse_yolo(images: Path, labels_dir: Path) -> ParseResult:
    """Pair images and label files by relative path and stem, and read the labels."""
    out = ParseResult()
    rels, ignored = scan_images(images)
    out.notes += ignored_note(images, ignored)
    by_stem: dict[str, list[RawItem]] = defaultdict(list)
    for rel in rels:
        item = RawItem(
            name=rel.as_posix(), path=absolute(images / rel), where="", source=f"yolo:{absolute(labels_dir)}",
            split=split_from_relpath(rel.as_posix()),
        )
        by_stem[stem_key(rel)].append(item)
        out.items.append(item)

    labels = {
        stem_key(p.relative_to(labels_dir)): p
        for p in sorted(labels_dir.rglob("*.txt"))
        if p.is_file() and p.name not in CLASS_NAME_FILES
    }
    for key, items in by_stem.items():
        if len(items) > 1 and key in labels:
            names = ", ".join(i.name for i in items)
            for i in items:
                i.problems.append(f"{labels[key]}: label is ambiguous: several images share its stem ({names})")
        elif key in labels:
            _parse_label(labels[key], items[0])
    for key, label in labels.items():
        if key not in by_stem:
            out.problems.append(f"{label}: label file has no image '{key}.*' under {images}")
    return out
