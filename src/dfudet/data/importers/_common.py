"""What every format parser hands to the import pipeline: raw items, raw boxes and the problems found while parsing."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfudet.data.checks import IMAGE_EXTENSIONS
from dfudet.errors import DataError


@dataclass
class RawBox:
    """A box as read from an annotation: xyxy pixels, or xyxy in 0-1 of the image size when `normalized`."""

    coords: tuple[float, ...]
    where: str  # "file:line" or "file: annotation id N", for messages
    normalized: bool = False
    segmentation: Any = None  # COCO polygons or RLE of this ulcer, when the annotation has one


@dataclass
class RawItem:
    """One image named by the annotations (or found in a folder), before it is decoded and checked."""

    name: str  # as referenced: path relative to --images (posix), used for messages, patient regex and the split
    path: Path  # absolute image path
    where: str  # where the annotation names this image ("" for images found by scanning a folder)
    source: str
    boxes: list[RawBox] = field(default_factory=list)
    split: str | None = None
    patient: str | None = None
    expected_size: tuple[int, int] | None = None  # (w, h) the annotation declares, checked against the oriented image
    mask_path: Path | None = None
    from_healthy_dir: bool = False
    problems: list[str] = field(default_factory=list)  # errors: the whole image is bad
    notes: list[str] = field(default_factory=list)  # report lines when the image is kept (clipped, dropped)
    # filled in by validation
    width: int = 0
    height: int = 0
    final_boxes: list[list[float]] = field(default_factory=list)
    final_masks: list[dict[str, Any]] | None = None  # one RLE per final box, when the source has masks
    clipped: int = 0
    dropped: int = 0

    def label(self) -> str:
        """Prefix naming where this image comes from, for messages."""
        return f"{self.where}: " if self.where else ""


@dataclass
class ParseResult:
    """Items of one format parser plus problems that belong to no image (e.g. a label file without an image)."""

    items: list[RawItem] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def absolute(path: Path) -> Path:
    """Absolute path without resolving symlinks (records keep the path the user gave)."""
    return Path(os.path.abspath(path))


def scan_images(root: Path) -> tuple[list[Path], list[Path]]:
    """Image files under `root` (recursive, sorted, relative to root) and the non-image files that were ignored."""
    images: list[Path] = []
    ignored: list[Path] = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        (images if p.suffix.lower() in IMAGE_EXTENSIONS else ignored).append(p.relative_to(root))
    return images, ignored


def ignored_note(root: Path, ignored: list[Path]) -> list[str]:
    """A report line naming the non-image files skipped by a folder scan (so nothing is dropped silently)."""
    if not ignored:
        return []
    shown = ", ".join(p.as_posix() for p in ignored[:5]) + (" ..." if len(ignored) > 5 else "")
    return [f"ignored: {root}: {len(ignored)} file(s) without an image extension ({shown})"]


def require_dir(path: Path | None, what: str) -> Path:
    """The folder given on the command line, or a DataError saying which option is wrong."""
    if path is None:
        raise DataError(f"{what} is required for this format")
    if not path.is_dir():
        raise DataError(f"{what} {path}: folder does not exist")
    return path


def stem_key(rel: Path) -> str:
    """Relative path without extension: how a label/mask file is paired with its image."""
    return rel.with_suffix("").as_posix()
