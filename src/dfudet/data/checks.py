"""Decode and normalise images (EXIF, RGBA/grayscale/16-bit/CMYK -> RGB uint8) and check boxes against them."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dfudet.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
# photo formats PIL cannot read without extra plugins: named in the reason a file is skipped
UNSUPPORTED_FORMATS = {".heic": "HEIC", ".heif": "HEIF", ".avif": "AVIF", ".dng": "DNG raw", ".cr2": "Canon raw",
                       ".cr3": "Canon raw", ".nef": "Nikon raw", ".arw": "Sony raw", ".raf": "Fujifilm raw",
                       ".orf": "Olympus raw", ".rw2": "Panasonic raw", ".jp2": "JPEG 2000", ".svg": "SVG",
                       ".psd": "Photoshop"}


def unsupported_reason(path: Path) -> str:
    """Why a file found in a folder is not read as an image (its extension is not one of IMAGE_EXTENSIONS)."""
    ext = path.suffix.lower()
    if ext in UNSUPPORTED_FORMATS:
        return (f"{path}: {UNSUPPORTED_FORMATS[ext]} images are not supported; convert the photo to JPEG or PNG "
                "(e.g. with the phone's export or any image viewer)")
    return f"{path}: not an image file this tool reads ({ext or 'no extension'}; reads {', '.join(IMAGE_EXTENSIONS)})"

# One pixel limit for every command that decodes an image (import, prepare, train, evaluate, predict, serve): a
# foot photo is never this large (phones save 12 MP by default), so it stops decompression bombs (a 6 KB PNG can
# declare 50 MP; decoding one costs ~0.4 GB) while 48-50 MP phone photos pass. It is checked from the header,
# before decoding; `--max-pixels` or DFUDET_MAX_PIXELS change it.
DEFAULT_MAX_PIXELS = 50_000_000


def _env_max_pixels() -> int:
    raw = os.environ.get("DFUDET_MAX_PIXELS", "")
    try:
        value = int(float(raw)) if raw else DEFAULT_MAX_PIXELS
    except ValueError:
        raise DataError(f"DFUDET_MAX_PIXELS must be a number of pixels, got {raw!r}") from None
    return value if value > 0 else DEFAULT_MAX_PIXELS


_max_pixels = _env_max_pixels()


def max_pixels() -> int:
    """The pixel limit in force (width x height)."""
    return _max_pixels


def set_max_pixels(limit: int) -> None:
    """Change the pixel limit for this process (the CLI's --max-pixels)."""
    global _max_pixels
    if int(limit) < 1:
        raise DataError(f"the pixel limit must be a positive number of pixels, got {limit}")
    _max_pixels = int(limit)


# PIL's own guard only warns between its limit and twice it (225 MP passed a "200 MP" guard) and raises from inside
# Image.open with a message naming neither file nor option; every image this tool reads goes through open_image,
# which applies the limit itself, so PIL's guard is switched off instead of half-applied.
Image.MAX_IMAGE_PIXELS = None


class TooManyPixels(DataError):
    """An image over the pixel limit (refused from its header, before decoding)."""


def check_pixels(width: int, height: int, name: str | Path, limit: int | None = None) -> None:
    """Refuse an image whose header declares more pixels than the limit, naming it."""
    limit = max_pixels() if limit is None else limit
    if width * height > limit:
        raise TooManyPixels(f"{name}: image is {width}x{height} = {width * height / 1e6:.1f} MP, over the pixel limit "
                            f"of {limit / 1e6:g} MP (raise it with --max-pixels or DFUDET_MAX_PIXELS if the photo is "
                            "genuine)")


@contextmanager
def open_image(source: str | Path | bytes, name: str | Path | None = None, limit: int | None = None
               ) -> Iterator[Image.Image]:
    """PIL's Image.open (lazy: header only) with the pixel limit checked before anything is decoded."""
    label = name if name is not None else source if not isinstance(source, bytes) else "<bytes>"
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
        check_pixels(im.size[0], im.size[1], label, limit)
        yield im


def to_rgb8(img: Image.Image, path: Path) -> Image.Image:
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
        with open_image(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im) or im
            return to_rgb8(im, path)
    except DataError:
        raise
    except UnidentifiedImageError as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from exc
    except Image.DecompressionBombError as exc:
        raise TooManyPixels(f"{path}: image has too many pixels ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: corrupt or truncated image ({exc})") from exc


def load_image(path: str | Path) -> np.ndarray:
    """Decode an image file to an (H, W, 3) uint8 RGB array in display orientation."""
    return np.asarray(load_pil(path), dtype=np.uint8).copy()


def decode_image_bytes(data: bytes, name: str = "<bytes>", exif: bool = False, limit: int | None = None
                       ) -> np.ndarray:
    """Decode encoded image bytes to an (H, W, 3) uint8 RGB array (in display orientation with `exif=True`; the
    cache stores images already turned). `limit`: pixel limit, default the tool-wide one."""
    try:
        with open_image(data, name, limit) as im:
            im.load()
            if exif:
                im = ImageOps.exif_transpose(im) or im
            return np.asarray(to_rgb8(im, Path(name)), dtype=np.uint8).copy()
    except DataError:
        raise
    except Image.DecompressionBombError as exc:
        raise TooManyPixels(f"{name}: image has too many pixels ({exc})") from exc
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
        return BoxCheck(None, problem=f"box {_fmt_box(box)} lies outside the {width}x{height} image "
                                      "(zero area after clipping)")
    clipped = c != [x1, y1, x2, y2]
    return BoxCheck(c, clipped=clipped)


def describe_clip(original: list[float] | tuple[float, ...], clipped: list[float], width: int, height: int) -> str:
    """One report phrase for a clipped box (the CLI and report show it next to the file and line)."""
    return f"box {_fmt_box(original)} extends outside the {width}x{height} image; clipped to {_fmt_box(clipped)}"
