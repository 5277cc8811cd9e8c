"""DFUC2020 CSV (`name,xmin,ymin,xmax,ymax`, several rows per image) -> raw items.

- The header is optional (detected when the first row's coordinates are not numbers). With a header, columns are
  found by name (`name`/`filename`/`image`, `xmin`, `ymin`, `xmax`, `ymax`) and `--patient-column` may name one more.
- `name` is relative to --images; coordinates are xyxy pixels of the image after EXIF orientation. A row with a name
  and four empty coordinates lists the image without a box.
- Every image under --images (recursively) is an item; images without rows are ulcer-free (healthy).
- A row whose name is not an image under --images is an error naming the CSV line.
- Splits: one CSV named train/val/test sets the split of every image under --images; with several CSVs each sets
  the split of the images it names, and images without rows take their folder's or the seeded split.
"""

from __future__ import annotations

import csv
from pathlib import Path

from dfudet.data.importers._common import ParseResult, RawBox, RawItem, absolute, ignored_note, scan_images
from dfudet.data.importers.splits import split_from_filename, split_from_relpath

NAME_COLUMNS = ("name", "filename", "file_name", "image")
COORD_COLUMNS = ("xmin", "ymin", "xmax", "ymax")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _columns(header: list[str], csv_path: Path, patient_column: str | None) -> tuple[list[int], int | None] | str:
    """Indices of name + 4 coordinates (and the patient column), or a problem message."""
    lower = [h.strip().lower() for h in header]
    name_idx = next((lower.index(n) for n in NAME_COLUMNS if n in lower), None)
    missing = [c for c in COORD_COLUMNS if c not in lower]
    if name_idx is None or missing:
        need = ["name"] * (name_idx is None) + missing
        return f"{csv_path}:1: header {header} lacks column(s) {', '.join(need)}"
    patient_idx = None
    if patient_column is not None:
        if patient_column.strip().lower() not in lower:
            return f"{csv_path}:1: header {header} has no patient column {patient_column!r}"
        patient_idx = lower.index(patient_column.strip().lower())
    return [name_idx] + [lower.index(c) for c in COORD_COLUMNS], patient_idx


def _parse_csv(images: Path, csv_path: Path, by_name: dict[str, RawItem], patient_column: str | None, out: ParseResult,
               claimed: dict[str, Path]) -> None:
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        out.problems.append(f"{csv_path}: cannot read CSV ({exc})")
        return
    rows = [(ln, r) for ln, r in rows if any(c.strip() for c in r)]
    if not rows:
        out.problems.append(f"{csv_path}: CSV has no rows")
        return
    first = rows[0][1]
    has_header = first[0].strip().lower() in NAME_COLUMNS or any(c.strip() and not _is_number(c) for c in first[1:5])
    if has_header:
        cols = _columns(first, csv_path, patient_column)
        if isinstance(cols, str):
            out.problems.append(cols)
            return
        idx, patient_idx = cols
        rows = rows[1:]
    elif patient_column is not None:
        out.problems.append(f"{csv_path}: --patient-column needs a header row naming the columns")
        return
    else:
        idx, patient_idx = [0, 1, 2, 3, 4], None

    split = split_from_filename(csv_path)
    for ln, row in rows:
        where = f"{csv_path}:{ln}"
        need = max(idx + ([patient_idx] if patient_idx is not None else []))
        if len(row) <= need:
            out.problems.append(f"{where}: expected at least {need + 1} columns, got {len(row)}")
            continue
        name = row[idx[0]].strip().replace("\\", "/")
        item = by_name.get(name)
        if item is None:
            out.problems.append(f"{where}: '{name}' is not an image file under {images}")
            continue
        if claimed.setdefault(name, csv_path) != csv_path:
            item.problems.append(f"{where}: '{name}' is also listed in {claimed[name]} (one CSV per image)")
            continue
        if not item.where:
            item.where, item.source = where, f"dfuc-csv:{absolute(csv_path)}"
            item.split = split or item.split
        if patient_idx is not None:
            pid = row[patient_idx].strip() or None
            if item.patient is not None and pid != item.patient:
                item.problems.append(f"{where}: patient {pid!r} differs from {item.patient!r} on an earlier row")
            item.patient = item.patient or pid
        raw = [row[i].strip() for i in idx[1:]]
        if not any(raw):
            continue
        try:
            coords = tuple(float(v) for v in raw)
        except ValueError:
            item.problems.append(f"{where}: coordinates {raw} must be 4 numbers (xmin, ymin, xmax, ymax)")
            continue
        item.boxes.append(RawBox(coords, where=where))


def parse_dfuc_csv(images: Path, csv_files: list[Path], patient_column: str | None) -> ParseResult:
    """Read DFUC2020-style CSV files naming images under `images`; unnamed images become healthy items."""
    out = ParseResult()
    rels, ignored = scan_images(images)
    out.notes += ignored_note(images, ignored)
    by_name: dict[str, RawItem] = {}
    for rel in rels:
        by_name[rel.as_posix()] = RawItem(
            name=rel.as_posix(), path=absolute(images / rel), where="", source=f"dfuc-csv:{absolute(images)}",
            split=split_from_relpath(rel.as_posix()),
        )
    out.items = list(by_name.values())
    claimed: dict[str, Path] = {}
    for csv_path in csv_files:
        _parse_csv(images, csv_path, by_name, patient_column, out, claimed)
    if len(csv_files) == 1 and (split := split_from_filename(csv_files[0])) is not None:
        for item in out.items:
            item.split = split
    return out
