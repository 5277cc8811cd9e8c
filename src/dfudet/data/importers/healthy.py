"""Folders of healthy (ulcer-free) photos -> raw items without boxes.

Every image file under a --healthy dir (recursively) is one healthy image; files without an image extension are
listed in the report as ignored. Top-level subfolders named train/val/test set the split of the images in them;
other images get the seeded split. --patient-regex is applied to the path relative to the dir when it matches;
a healthy image whose name does not match is split on its own.
"""

from __future__ import annotations

from pathlib import Path

from dfudet.data.importers._common import ParseResult, RawItem, absolute, ignored_note, scan_images
from dfudet.data.importers.splits import split_from_relpath
from dfudet.errors import DataError


def parse_healthy(dirs: list[Path]) -> ParseResult:
    """Scan healthy-image folders; a folder that is missing or holds no image is an error."""
    out = ParseResult()
    for d in dirs:
        if not d.is_dir():
            raise DataError(f"--healthy {d}: folder does not exist")
        rels, ignored = scan_images(d)
        out.notes += ignored_note(d, ignored)
        if not rels:
            raise DataError(f"--healthy {d}: no image files found (extensions .jpg .jpeg .png .bmp .tif .tiff .webp)")
        for rel in rels:
            out.items.append(RawItem(
                name=rel.as_posix(), path=absolute(d / rel), where="", source=f"healthy:{absolute(d)}",
                split=split_from_relpath(rel.as_posix()), from_healthy_dir=True,
            ))
    return out
