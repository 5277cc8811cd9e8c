"""Decode and normalise images (EXIF, RGBA/grayscale/16-bit/CMYK -> RGB uint8) and check boxes against them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dfudet.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# A foot photo is never this large; the guard stops decompression bombs without blocking 100 MP camera files.
Image.MAX_IMAGE_PIXELS = 200_000_000


def _to_rgb8(img: Image.Image, path: Path) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (16-bit grey is scaled, alpha is composited on black)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr8 = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr8 = np.zeros(arr.shape, np.uint8) if hi <= lo else ((arr - lo) / (hi - lo) * 255 + 0.5).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: cannot convert image mode {mode} to RGB ({exc})") from exc


def load_pil(path: str | Path) -> Image.Image:
    """Open an image, apply its EXIF orientation and return it as 8-bit RGB; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im) or im
            return _to_rgb8(im, path)
    except UnidentifiedImageError as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from exc
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: image has too many pixels ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: corrupt or truncated image ({exc})") from exc


def load_image(path: str | Path) -> np.ndarray:
    """Decode an image file to an (H, W, 3) uint8 RGB array in display orientation."""
    return np.asarray(load_pil(path), dtype=np.uint8).copy()


def decode_image_bytes(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes (as stored in the cache) to an (H, W, 3) uint8 RGB array."""
    import io

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return np.asarray(_to_rgb8(im, Path(name)), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{name}: cannot decode image bytes ({exc})") from exc


# ---------------------------------------------------------------------------------------------- boxes
@dataclass
class BoxCheck:
    """Outcome of checking one xyxy box against an image: the usable box, whether it was clipped, or a problem."""

    box: list[float] | None  # xyxy after clipping; None when the box is unusable
    clipped: bool = False
    problem: str | None = None


def _fmt_box(box: list[float] | tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


def check_box(box: list[float] | tuple[float, ...], width: int, height: int) -> BoxCheck:
    """Validate an xyxy pixel box against a width x height image: clip what sticks out, refuse what has no area."""
    if len(box) != 4:
        return BoxCheck(None, problem=f"box {list(box)} must have 4 coordinates")
    arr = np.asarray(box, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        return BoxCheck(None, problem=f"box {_fmt_box(box)} has a non-finite coordinate")
    x1, y1, x2, y2 = arr.tolist()
    if x2 <= x1 or y2 <= y1:
        return BoxCheck(None, problem=f"box {_fmt_box(box)} has zero or negative area (needs x2 > x1 and y2 > y1)")
    c = [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height)]
    if c[2] <= c[0] or c[3] <= c[1]:
        return BoxCheck(None, problem=f"box {_fmt_box(box)} lies outside the {width}x{height} image (zero area after clipping)")
    clipped = c != [x1, y1, x2, y2]
    return BoxCheck(c, clipped=clipped)


def describe_clip(original: list[float] | tuple[float, ...], clipped: list[float], width: int, height: int) -> str:
    """One report phrase for a clipped box (the CLI and report show it next to the file and line)."""
    return f"box {_fmt_box(original)} extends outside the {width}x{height} image; clipped to {_fmt_box(clipped)}"
