"""The Python API: `dfudet.load(...)` gives a detector whose `.predict(image)` returns typed results.

For a notebook or a script, without the command line:

    import dfudet
    det = dfudet.load()                                  # the default shipped model (dfudet models lists them)
    result = det.predict("photo.jpg", mm_per_px=0.2)     # a path, a PIL image or an HxWx3 uint8 RGB array
    for ulcer in result.ulcers:
        print(ulcer.box, ulcer.score, ulcer.area_px, ulcer.area_mm2)

It runs the same backends as `dfudet predict` (`inference.loader.load_backend`: PyTorch for a checkpoint, ONNX
Runtime for an .onnx file), the same operating threshold and the same outline/area code (`inference.area`), so a
result here equals the CLI's predictions.json for the same photo.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from dfudet.data.checks import load_image, to_rgb8
from dfudet.errors import DataError
from dfudet.inference.area import check_mm_per_px, outline_fields
from dfudet.inference.backend import Backend, Detections, ModelInfo
from dfudet.inference.loader import load_backend
from dfudet.inference.zoo import resolve

ImageInput = str | os.PathLike[str] | Image.Image | np.ndarray


@dataclass(frozen=True)
class Ulcer:
    """One detected ulcer, in the photo's own pixels (display orientation)."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    score: float  # the model's score (the operating threshold applies to it)
    outline: tuple[tuple[float, ...], ...] | None = None  # COCO polygons (x1, y1, x2, y2, ...); None: box-only model
    area_px: int | None = None  # wound pixels inside the outline; None: box-only model
    area_mm2: float | None = None  # None when no scale is known (never guessed)


@dataclass(frozen=True)
class Result:
    """The detections of one photo."""

    source: str  # the file, or "<image>" for an in-memory image
    width: int
    height: int
    threshold: float  # the score threshold that was applied
    ulcers: tuple[Ulcer, ...]
    outlines: bool  # the model outlines wounds (areas available)
    mm_per_px: float | None = None  # the scale used for mm² (None: pixels only)
    area_source: str | None = None  # where mm² came from: "user" (a given scale), "card" (one in the photo), or None
    area_note: str | None = None  # why areas are in pixels only, when they are
    label: str = "no ulcer"  # triage: "ulcer", "review" (a doubtful box or a poor photo) or "no ulcer"
    label_reasons: tuple[str, ...] = ()
    confidence: tuple[float, ...] | None = None  # calibrated probability per ulcer (None: no calibration stored)
    quality: dict[str, Any] | None = None  # the photo quality check: {"ok", "reasons", "measures"}


class Detector:
    """A loaded model: `predict` one image, `predict_many` a list of files.

    Args:
        backend: a loaded inference backend (see `load`).
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @property
    def info(self) -> ModelInfo:
        """What the model is: family, backbone, input size, whether it outlines wounds, where it was loaded from."""
        return self.backend.info

    @property
    def threshold(self) -> float:
        """The operating threshold (chosen on val when the model was trained, unless overridden at load)."""
        return self.backend.operating_threshold

    def predict(self, image: ImageInput, mm_per_px: float | None = None) -> Result:
        """Detect ulcers in one photo.

        Args:
            image: a file path (EXIF orientation applied), a PIL image (EXIF orientation applied) or an HxWx3 uint8
                RGB array (taken as displayed).
            mm_per_px: the photo's scale for areas in mm² (outline models); None keeps areas in pixels.

        Returns:
            A `Result` with one `Ulcer` per box at or above the operating threshold, highest score first.
        """
        array, source = _as_array(image)
        detections = self.backend.predict_arrays([array], batch_size=1)[0]
        return self._result(detections, source, mm_per_px, array)

    def predict_many(self, images: Iterable[ImageInput], batch_size: int = 8,
                     mm_per_px: float | None = None) -> list[Result]:
        """Detect ulcers in several photos, `batch_size` per forward pass; results in the input order.

        Args:
            images: paths, PIL images or arrays, as for `predict`.
            batch_size: images per forward pass.
            mm_per_px: one scale for all photos (None: pixels only).

        Returns:
            One `Result` per image.
        """
        items = list(images)
        out: list[Result] = []
        for start in range(0, len(items), max(1, int(batch_size))):
            loaded = [_as_array(im) for im in items[start:start + batch_size]]
            found = self.backend.predict_arrays([a for a, _ in loaded], batch_size=batch_size)
            out += [self._result(d, src, mm_per_px, a) for d, (a, src) in zip(found, loaded)]
        return out

    def _result(self, detections: Detections, source: str, mm_per_px: float | None, image: np.ndarray) -> Result:
        scale = check_mm_per_px(mm_per_px, "mm_per_px")
        kept = self.backend.keep(detections)
        fields = outline_fields(kept, scale, image)
        trust = self.backend.photo_fields(detections, kept, image)
        per_box: Sequence[dict[str, Any]] = fields.get("detections") or [{} for _ in range(len(kept.scores))]
        ulcers = tuple(
            Ulcer(box=tuple(float(v) for v in box),  # type: ignore[arg-type]
                  score=float(score),
                  outline=(tuple(tuple(float(v) for v in poly) for poly in d["outline"]) if "outline" in d else None),
                  area_px=(int(d["area_px"]) if "area_px" in d else None),
                  area_mm2=d.get("area_mm2"))
            for box, score, d in zip(kept.boxes, kept.scores, per_box))
        return Result(source=source, width=kept.width, height=kept.height, threshold=float(self.threshold),
                      ulcers=ulcers, outlines=bool(fields["outlines"]), mm_per_px=fields.get("mm_per_px"),
                      area_source=fields.get("area_source"),
                      area_note=fields.get("area_note"), label=trust["label"],
                      label_reasons=tuple(trust["label_reasons"]),
                      confidence=None if trust["confidence"] is None else tuple(trust["confidence"]),
                      quality=trust.get("quality"))


def _as_array(image: ImageInput) -> tuple[np.ndarray, str]:
    if isinstance(image, (str, os.PathLike)):
        return load_image(Path(image)), str(image)
    if isinstance(image, Image.Image):
        turned = ImageOps.exif_transpose(image) or image
        return np.asarray(to_rgb8(turned, Path("<image>")), dtype=np.uint8).copy(), "<image>"
    if isinstance(image, np.ndarray):
        a = image
        if a.ndim == 2:
            a = np.repeat(a[:, :, None], 3, axis=2)
        if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
            raise DataError(f"<image>: expected an HxWx3 uint8 RGB array, got shape {image.shape} dtype {image.dtype}")
        return np.ascontiguousarray(a), "<image>"
    raise DataError(f"cannot read an image from a {type(image).__name__}: give a path, a PIL image or a numpy array")


def load(name_or_path: str | os.PathLike[str] | None = None, device: str = "cpu",
         threshold: float | None = None) -> Detector:
    """Load a detector: a shipped model by name, a checkpoint file, or an ONNX export.

    Args:
        name_or_path: None for the default shipped model; a shipped model's name (`dfudet models`); a .pth/.ckpt
            checkpoint from `dfudet train` or `dfudet export --format pth`; or an .onnx file from `dfudet export`
            (run with ONNX Runtime).
        device: "cpu", "cuda", "cuda:N" or "auto" (PyTorch models).
        threshold: score threshold for kept boxes; None uses the model's operating threshold.

    Returns:
        A `Detector`.

    Example:
        >>> det = dfudet.load()
        >>> det.predict("foot.jpg").ulcers
    """
    if name_or_path is None:
        _, path = resolve(None)
        return Detector(load_backend(checkpoint=path, device=device, operating_threshold=threshold))
    p = Path(name_or_path)
    if p.suffix.lower() == ".onnx":
        return Detector(load_backend(onnx=p, operating_threshold=threshold))
    if p.exists() or p.suffix.lower() in {".pth", ".pt", ".ckpt"}:
        return Detector(load_backend(checkpoint=p, device=device, operating_threshold=threshold))
    _, path = resolve(str(name_or_path))
    return Detector(load_backend(checkpoint=path, device=device, operating_threshold=threshold))
