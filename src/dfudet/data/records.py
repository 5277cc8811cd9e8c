"""ImageRecord and the dataset-dir format written by `dfudet data import` and read by `prepare` and the Dataset.

A dataset dir holds:
  dataset.json        {"format": "dfudet-dataset", "version": 1, "records": [ImageRecord...], "summary": {...}}
  import_report.txt   human-readable list of what was clipped / dropped / skipped (always written)
  negatives/          hard-negative crops cut from ulcer-free parts of masked images (only when asked for)
Image paths are absolute (images are not copied); boxes are xyxy pixels in the image *after* EXIF orientation, and
`masks` (when the import had them) one COCO RLE per box in that same image.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dfudet.errors import DataError
from dfudet.utils import atomic_write_bytes

DATASET_FILE = "dataset.json"
REPORT_FILE = "import_report.txt"
FORMAT_NAME = "dfudet-dataset"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")


@dataclass
class ImageRecord:
    """One image: where it is, its ulcer boxes, split and whether it is a healthy (ulcer-free) image."""

    path: str
    width: int
    height: int
    boxes: list[list[float]] = field(default_factory=list)  # xyxy, pixels, oriented image
    split: str = "train"
    healthy: bool = False  # True: no ulcer in the image (hard negative)
    source: str = ""  # where the record came from, e.g. "coco:/data/train.json"
    patient: str | None = None
    kind: str = "photo"  # "photo" | "negative_crop"
    # one wound mask per box, same order, as COCO RLE of this (oriented) image (dfudet.data.instance_masks);
    # None for box-only data
    masks: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        self.boxes = [[float(v) for v in b] for b in self.boxes]
        if self.masks is not None and len(self.masks) != len(self.boxes):
            raise DataError(f"{self.path}: {len(self.masks)} masks for {len(self.boxes)} boxes; a record with masks "
                            "needs one per box")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageRecord:
        return cls(**d)


def summarize(records: Iterable[ImageRecord]) -> dict[str, dict[str, int]]:
    """Counts per split: images, ulcer images, healthy images, boxes."""
    out: dict[str, dict[str, int]] = {}
    for r in records:
        s = out.setdefault(r.split, {"images": 0, "ulcer_images": 0, "healthy_images": 0, "boxes": 0})
        s["images"] += 1
        s["boxes"] += len(r.boxes)
        if r.healthy:
            s["healthy_images"] += 1
        else:
            s["ulcer_images"] += 1
    return dict(sorted(out.items(), key=lambda kv: (SPLITS.index(kv[0]) if kv[0] in SPLITS else 99, kv[0])))


def write_dataset(out_dir: Path, records: list[ImageRecord], extra_summary: dict[str, Any] | None = None) -> Path:
    """Write dataset.json atomically and return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "summary": {"splits": summarize(records), **(extra_summary or {})},
        "records": [r.to_dict() for r in records],
    }
    path = out_dir / DATASET_FILE
    atomic_write_bytes(path, json.dumps(payload, indent=1).encode("utf-8"))
    return path


def read_dataset(dataset_dir: Path) -> list[ImageRecord]:
    """Read the records of a dataset dir, with a clear error when it is not one."""
    dataset_dir = Path(dataset_dir)
    path = dataset_dir / DATASET_FILE if dataset_dir.is_dir() else dataset_dir
    if not path.is_file():
        raise DataError(
            f"{dataset_dir} is not a dfudet dataset dir: {DATASET_FILE} is missing "
            "(create one with `dfudet data import ... --out DIR`)"
        )
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read dataset file ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise DataError(f"{path}: not a dfudet dataset file (format field is {payload.get('format')!r})")
    if payload.get("version") != FORMAT_VERSION:
        raise DataError(f"{path}: dataset version {payload.get('version')} is not supported "
                        f"(expected {FORMAT_VERSION})")
    try:
        return [ImageRecord.from_dict(d) for d in payload["records"]]
    except (KeyError, TypeError) as exc:
        raise DataError(f"{path}: malformed record ({exc})") from exc
