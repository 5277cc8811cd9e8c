"""COCO detection JSON -> raw items.

- `file_name` is relative to --images; `bbox` is `[x, y, w, h]` in pixels of the image *after* EXIF orientation
  (xyxy = x, y, x+w, y+h). Every category counts as ulcer.
- An image listed without annotations is ulcer-free (healthy).
- The split comes from the JSON file name (train.json, instances_val.json ...), else from the image's folder,
  else from the seeded split.
- `width`/`height` of an image entry, when present, must equal the oriented image size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dfudet.data.importers._common import ParseResult, RawBox, RawItem, absolute
from dfudet.data.importers.splits import split_from_filename, split_from_relpath


def _number_list(value: Any, n: int) -> list[float] | None:
    if not isinstance(value, (list, tuple)) or len(value) != n:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return None
    return [float(v) for v in value]


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _parse_file(images: Path, json_path: Path, out: ParseResult) -> None:
    try:
        payload = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        out.problems.append(f"{json_path}: cannot read COCO JSON ({exc})")
        return
    if not isinstance(payload, dict) or not isinstance(payload.get("images"), list):
        out.problems.append(f"{json_path}: not a COCO detection file (no 'images' list)")
        return
    annotations = payload.get("annotations", [])
    if not isinstance(annotations, list):
        out.problems.append(f"{json_path}: 'annotations' must be a list")
        return
    file_split = split_from_filename(json_path)
    by_id: dict[Any, RawItem] = {}
    for idx, entry in enumerate(payload["images"]):
        if not isinstance(entry, dict):
            out.problems.append(f"{json_path}: images[{idx}] is not an object")
            continue
        image_id, file_name = entry.get("id"), entry.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            out.problems.append(f"{json_path}: images[{idx}] (id {image_id}) has no file_name")
            continue
        if image_id is None or isinstance(image_id, (list, dict)):
            out.problems.append(f"{json_path}: images[{idx}] ('{file_name}') has no usable id")
            continue
        where = f"{json_path}: image id {image_id} ('{file_name}')"
        if image_id in by_id:
            out.problems.append(f"{where}: image id {image_id} is used twice in this file")
            continue
        w, h = _positive_int(entry.get("width")), _positive_int(entry.get("height"))
        item = RawItem(
            name=file_name.replace("\\", "/"),
            path=absolute(images / file_name),
            where=where,
            source=f"coco:{absolute(json_path)}",
            split=file_split or split_from_relpath(file_name),
            expected_size=(w, h) if w and h else None,
        )
        by_id[image_id] = item
        out.items.append(item)

    for idx, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            out.problems.append(f"{json_path}: annotations[{idx}] is not an object")
            continue
        ann_where = f"{json_path}: annotation id {ann.get('id', f'#{idx}')}"
        image_id = ann.get("image_id")
        target = by_id.get(image_id) if not isinstance(image_id, (list, dict)) else None
        if target is None:
            out.problems.append(f"{ann_where}: refers to image id {image_id}, which is not in 'images'")
            continue
        bbox = _number_list(ann.get("bbox"), 4)
        if bbox is None:
            target.problems.append(f"{ann_where} (image '{target.name}'): bbox {ann.get('bbox')!r} is not [x, y, w, h]")
            continue
        x, y, bw, bh = bbox
        given = json.dumps(ann["bbox"])
        seg = ann.get("segmentation")
        target.boxes.append(RawBox((x, y, x + bw, y + bh),
                                   where=f"{ann_where} (image '{target.name}', bbox xywh {given})",
                                   segmentation=seg if seg not in (None, [], {}) else None))


def parse_coco(images: Path, annotation_files: list[Path]) -> ParseResult:
    """Read one or more COCO JSON files whose file_name entries are relative to `images`."""
    out = ParseResult()
    for json_path in annotation_files:
        _parse_file(images, json_path, out)
    return out
