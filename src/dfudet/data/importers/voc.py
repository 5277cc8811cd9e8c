"""Pascal VOC XML -> raw items.

- `--annotations` is a folder of `.xml` files (searched recursively; single `.xml` files are accepted too).
- `<filename>` is relative to --images (a `<folder>` tag is ignored).
- Every `<object>` counts as an ulcer, whatever its `<name>` (a detector for one class; filter the XML first
  if other classes are present). An XML without objects is an ulcer-free (healthy) image.
- `<bndbox>` xmin/ymin/xmax/ymax are used as xyxy pixels of the image after EXIF orientation, as albumentations'
  `pascal_voc` format does (no 1-based shift).
- `<size>` width/height, when present and non-zero, must equal the oriented image size.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from dfudet.data.importers._common import ParseResult, RawBox, RawItem, absolute
from dfudet.data.importers.splits import split_from_relpath


def _int_or_none(text: str | None) -> int | None:
    try:
        v = int(float(text)) if text is not None else None
    except ValueError:
        return None
    return v if v and v > 0 else None


def _parse_xml(images: Path, xml_path: Path, out: ParseResult) -> None:
    try:
        root = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError) as exc:
        out.problems.append(f"{xml_path}: cannot read VOC XML ({exc})")
        return
    filename = (root.findtext("filename") or "").strip()
    if root.tag != "annotation" or not filename:
        out.problems.append(f"{xml_path}: not a VOC annotation (needs <annotation> with a <filename>)")
        return
    w, h = _int_or_none(root.findtext("size/width")), _int_or_none(root.findtext("size/height"))
    item = RawItem(
        name=filename.replace("\\", "/"),
        path=absolute(images / filename),
        where=f"{xml_path} ('{filename}')",
        source=f"voc:{absolute(xml_path)}",
        split=split_from_relpath(filename),
        expected_size=(w, h) if w and h else None,
    )
    for k, obj in enumerate(root.findall("object"), start=1):
        where = f"{xml_path}: object {k} ('{(obj.findtext('name') or '').strip()}')"
        coords: list[float] = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            text = obj.findtext(f"bndbox/{tag}")
            try:
                coords.append(float(text or ""))  # missing (None) or empty: ValueError, as for any non-number
            except (TypeError, ValueError):
                item.problems.append(f"{where}: <bndbox><{tag}> is missing or not a number ({text!r})")
                break
        else:
            item.boxes.append(RawBox(tuple(coords), where=where))
    out.items.append(item)


def parse_voc(images: Path, annotation_paths: list[Path]) -> ParseResult:
    """Read every VOC XML file in the given folders (recursively) or files."""
    out = ParseResult()
    for ann in annotation_paths:
        files = sorted(p for p in ann.rglob("*.xml") if p.is_file()) if ann.is_dir() else [ann]
        if not files:
            out.problems.append(f"{ann}: no .xml files found")
        for xml_path in files:
            _parse_xml(images, xml_path, out)
    return out
