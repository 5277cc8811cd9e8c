"""`dfudet predict`: detections for image files and folders -> predictions.json, predictions.csv, annotated copies.

- Folders are searched recursively for JPEG/PNG/WebP/BMP/TIFF/GIF files (case-insensitive extensions); files named
  directly are always tried, whatever their extension. Every other file found, every broken link and every image
  over the pixel limit (`--max-pixels`, the same limit as import, evaluate and serve) is listed in "skipped" with
  the reason: nothing in a folder is ignored silently.
- Images are decoded with `dfudet.data.checks.load_image`, which applies the EXIF orientation: boxes are in the
  orientation the photo is displayed in (width/height in the outputs are the displayed ones).
- An unreadable or missing file is reported on stderr and in the json's "skipped" list, and the run goes on; the
  run succeeds (exit 0) when at least one image was predicted, and fails (DataError, exit 2) when none was.
- predictions.json: {"checkpoint", "onnx" (the model file; the other is null), "threshold", "threshold_source",
  "tta", "outlines", "images": [{file, width, height, boxes [[x1,y1,x2,y2]], scores, confidence, label,
  review_threshold, threshold, annotated}], "skipped": [{file, error}]};
  only boxes with score >= threshold are listed. `confidence` is each box's calibrated
  probability of being a true ulcer (null when the model carries no calibration: `dfudet tune` fits one on val);
  `label` is the photo's triage label (ulcer / review / no ulcer, dfudet.confidence). predictions.csv: one row per
  box (file,label,x1,y1,x2,y2,score,confidence); an image without boxes gets one row with its label and the box
  fields empty.
- Outline models (e.g. maskrcnn_efficientnet) add, per image, `outlines: true`, `detections` (one {outline: COCO
  polygons in the photo's pixels, area_px, area_mm2 (null without a scale)} per box, in the order of `boxes`) and
  `mm_per_px`, the same fields as the service's response (`inference.area.outline_fields`); the CSV gains the
  columns area_px and area_mm2; the annotated copies show the outlines. The scale comes from `--mm-per-px` (all
  photos) or from a photo list (`--photos LIST.csv`: a `photo` column, paths relative to the list's folder, and an
  optional `scale` or `mm_per_px` column: 0.2, '0.2 mm/px' or '5 px/mm'; column names in any case; a missing photo
  or a bad scale stops the run naming every bad row); there is no guessed scale. Without a given scale each photo is
  searched for the dfudet calibration card (`dfudet marker`): when it is accepted, areas in mm² come from it
  (`area_source` "card", the search in `card`); else areas are in pixels only and `area_note` says why (no scale,
  or the card's refusal reason). The CSV's `area_source` column says which scale each area used.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dfudet.commands.photo_lists import ROW_NOTE, list_rows
from dfudet.data.checks import IMAGE_EXTENSIONS, load_image, unsupported_reason
from dfudet.errors import DataError
from dfudet.inference.area import check_mm_per_px, outline_fields
from dfudet.inference.draw import draw_detections, draw_outlines, save_jpeg
from dfudet.inference.loader import load_backend
from dfudet.utils import atomic_write_bytes


def collect_images(inputs: Sequence[str | Path]) -> tuple[list[tuple[Path, Path]], list[dict[str, str]]]:
    """(file, name under annotated/) for every input file and image in input folders, plus what is not read:
    missing inputs, broken links and folder files of other formats, each with the reason."""
    found: list[tuple[Path, Path]] = []
    skipped: list[dict[str, str]] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_symlink() and not f.exists():
                    skipped.append({"file": str(f), "error": f"{f}: broken link (its target does not exist)"})
                elif not f.is_file():
                    continue
                elif f.suffix.lower() in IMAGE_EXTENSIONS:
                    found.append((f, Path(p.resolve().name or "root") / f.relative_to(p)))
                else:
                    skipped.append({"file": str(f), "error": unsupported_reason(f)})
        elif p.is_file():
            found.append((p, Path(p.name)))
        elif p.is_symlink():
            skipped.append({"file": str(p), "error": f"{p}: broken link (its target does not exist)"})
        else:
            skipped.append({"file": str(p), "error": f"{p}: no such file or folder"})
    return found, skipped


def _unique(name: Path, used: set[str]) -> Path:
    """name with .jpg, made unique within this run (a.png and a.jpg would otherwise collide)."""
    stem, k = name.with_suffix(""), 1
    cand = stem.with_name(stem.name + ".jpg")
    while cand.as_posix() in used:
        k += 1
        cand = stem.with_name(f"{stem.name}_{k}.jpg")
    used.add(cand.as_posix())
    return cand


def _csv_text(images: list[dict[str, Any]], outlines: bool) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "label", "x1", "y1", "x2", "y2", "score", "confidence",
                *(["area_px", "area_mm2", "area_source", "area_note"] if outlines else [])])
    for im in images:
        scale = [im.get("area_source") or "", im.get("area_note", "")] if outlines else []
        if not im["boxes"]:
            w.writerow([im["file"], im["label"], "", "", "", "", "", "", *(["", ""] if outlines else []), *scale])
        for k, (b, s) in enumerate(zip(im["boxes"], im["scores"])):
            extra = []
            if outlines:
                det = im["detections"][k]
                extra = [det["area_px"], "" if det["area_mm2"] is None else det["area_mm2"], *scale]
            conf = "" if im["confidence"] is None else im["confidence"][k]
            w.writerow([im["file"], im["label"], *b, s, conf, *extra])
    return buf.getvalue()


def read_photo_list(path: str | Path) -> tuple[list[Path], dict[str, float]]:
    """Photos and their mm-per-pixel scales from a CSV with a `photo` column and an optional `scale` (or
    `mm_per_px`) column, read as track reads VISITS.csv (`dfudet.commands.photo_lists`: case-insensitive column
    names, paths relative to the list's folder, an empty scale means unknown).

    A missing column, or any bad row (an empty photo, a photo that does not exist or is not a file, a bad scale), is
    a DataError for the whole list naming every bad row (row 1 is the header; blank lines count as rows).
    """
    path = Path(path)
    photos: list[Path] = []
    scales: dict[str, float] = {}
    problems: list[str] = []
    for row in list_rows(path, ("photo",), "photo list"):
        _, resolved, bad_photo = row.photo()
        scale, bad_scale = row.scale()
        problems += [f"{path} row {row.number}: {p}" for p in (bad_photo, bad_scale) if p]
        photos.append(resolved)
        if scale is not None:
            scales[str(resolved)] = scale
    if problems:
        raise DataError(f"{path}: {len(problems)} problem(s) in the photo list ({ROW_NOTE}); nothing was predicted",
                        problems)
    if not photos:
        raise DataError(f"{path}: the photo list has no rows")
    return photos, scales


def run_predict(inputs: Sequence[str | Path], checkpoint: str | Path | None, out: str | Path,
                operating_threshold: float | None = None, tta: bool = False, batch_size: int = 8,
                device: str = "cpu", progress: bool = True, onnx: str | Path | None = None,
                mm_per_px: float | None = None, photo_list: str | Path | None = None,
                card_bar_mm: float | None = None) -> dict[str, Any]:
    """Predict every image found in `inputs` (and in `photo_list`) and write predictions.json/.csv and annotated
    copies to `out`.

    With `onnx`, inference runs through onnxruntime (no torch needed) with the same outputs as the PyTorch path.
    `mm_per_px` (or a photo list's `scale` column, which wins for its photos) gives areas in mm² for outline models;
    without it, the calibration card in the photo does (`card_bar_mm`: its printed bar as measured, checked).
    """
    default_scale = check_mm_per_px(mm_per_px, "--mm-per-px")
    scales: dict[str, float] = {}
    inputs = list(inputs)
    if photo_list is not None:
        listed, scales = read_photo_list(photo_list)
        inputs += listed
    files, skipped = collect_images(inputs)
    predictor = load_backend(checkpoint=checkpoint, onnx=onnx, device=device,
                             operating_threshold=operating_threshold, tta=tta)
    for s in skipped:
        print(f"skipped: {s['error']}", file=sys.stderr)
    if not files:
        raise DataError(f"no images found in {', '.join(str(i) for i in inputs)} "
                        f"(searched for {', '.join(IMAGE_EXTENSIONS)})")
    out = Path(out)
    (out / "annotated").mkdir(parents=True, exist_ok=True)
    thr = predictor.operating_threshold
    outlines = predictor.info.outlines
    if (default_scale is not None or scales) and not outlines:
        print(f"note: a scale was given but {predictor.info.identity.model_name} does not outline ulcers, so no areas "
              "are reported", file=sys.stderr)
    results: list[dict[str, Any]] = []
    used: set[str] = set()
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=None if progress else True)
    try:
        for start in range(0, len(files), batch_size):
            batch = []
            for path, name in files[start:start + batch_size]:
                try:
                    batch.append((path, name, load_image(path)))
                except DataError as exc:
                    skipped.append({"file": str(path), "error": str(exc)})
                    print(f"skipped: {exc}", file=sys.stderr)
            arrays = [a for _, _, a in batch]
            for (path, name, image), res in zip(batch, predictor.predict_arrays(arrays, batch_size)):
                kept = predictor.keep(res, thr)
                rel = _unique(name, used)
                row: dict[str, Any] = {
                    "file": str(path), "width": res.width, "height": res.height,
                    "boxes": [[round(float(v), 2) for v in b] for b in kept.boxes],
                    "scores": [round(float(s), 4) for s in kept.scores],
                    "threshold": thr, "annotated": f"annotated/{rel.as_posix()}",
                    **predictor.photo_fields(res, kept, image),
                }
                drawn = draw_detections(image, kept.boxes, kept.scores, thr)
                if outlines:
                    row.update(outline_fields(kept, scales.get(str(path), default_scale), image, bar_mm=card_bar_mm))
                    drawn = draw_outlines(drawn, [d["outline"] for d in row["detections"]])
                save_jpeg(drawn, out / "annotated" / rel)
                results.append(row)
            bar.update(len(files[start:start + batch_size]))
    finally:
        bar.close()
    payload: dict[str, Any] = {"checkpoint": str(checkpoint) if checkpoint else None,
                               "onnx": str(onnx) if onnx else None, "threshold": thr,
                               "threshold_source": predictor.threshold_source, "tta": bool(tta), "outlines": outlines}
    if outlines and any(r.get("area_source") is None for r in results):
        payload["area_note"] = ("areas are in pixels only for the images whose area_source is null (no scale given "
                                "and no accepted calibration card; each image's area_note says why)")
    payload.update({"images": results, "skipped": skipped})
    atomic_write_bytes(out / "predictions.json", json.dumps(payload, indent=1).encode("utf-8"))
    atomic_write_bytes(out / "predictions.csv", _csv_text(results, outlines).encode("utf-8"))
    if not results:
        raise DataError(f"none of the {len(files)} image file(s) could be read; the reasons are listed under "
                        f"'skipped' in {out / 'predictions.json'}")
    return {"images": len(results), "skipped": len(skipped), "boxes": sum(len(r["boxes"]) for r in results),
            "threshold": thr, "out": str(out)}
