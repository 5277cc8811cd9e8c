"""Every image dfudet writes carries pixels only: no EXIF, XMP, IPTC, ICC profile, comment or embedded thumbnail.

Phone photos carry the patient's GPS position, the time and the device in their metadata. Anything dfudet writes
that holds a photo or a part of it (cache records, evaluation galleries, predict's annotated copies, hard-negative
crops, track's thumbnails) goes through this module:

- `pixels_only` turns a photo into a new image holding only its pixels, with the EXIF orientation applied first
  (so a photo stored sideways is written upright, as every box dfudet reports is given in the upright photo);
- `encode_image` / `save_image` encode such an image (JPEG or PNG; `save_image` writes atomically);
- `strip_jpeg_metadata` removes the metadata segments of a JPEG file *without re-encoding it* (the cache keeps a
  photo's own compressed data when it needs no resize or turn, so cache and folder decode to identical pixels).

The ICC colour profile is dropped too: dfudet decodes pixels without colour management (the model sees the stored
values), the images it re-encodes never carried a profile, and a profile can name the device (its manufacturer and
model tags). Kept in a JPEG: the JFIF header (pixel density) and Adobe's APP14 segment, which says how the three
channels are coded; without it some JPEGs would decode to other colours.

Pillow rewrites a JPEG only by decoding and encoding it again (a second lossy pass), and the tools that rewrite
segments losslessly (jpegtran, exiftool) are programs outside the Python packages, hence the segment walk below.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from dfudet.utils import atomic_write_with

# JPEG segments kept by strip_jpeg_metadata among APP0-APP15 and COM: the ones decoding needs, by their signature
_KEEP_APP = {0xE0: (b"JFIF\x00",), 0xEE: (b"Adobe",)}
_SOS, _EOI = 0xDA, 0xD9


def pixels_only(image: np.ndarray | Image.Image) -> Image.Image:
    """A new image with the pixels of `image` in display orientation (EXIF orientation applied) and no metadata.

    Modes RGB, RGBA and L are kept; any other mode (palette, CMYK, 16-bit) becomes RGB.
    """
    if isinstance(image, Image.Image):
        upright = ImageOps.exif_transpose(image)
        if upright.mode not in ("RGB", "RGBA", "L"):
            upright = upright.convert("RGB")
        arr = np.asarray(upright)
    else:
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            raise ValueError(f"pixels_only: expected uint8 pixels, got {arr.dtype}")
    # a fresh image from the array: no info dict, no cached Exif object, nothing for an encoder to copy
    return Image.fromarray(np.ascontiguousarray(arr))


def encode_image(image: np.ndarray | Image.Image, fmt: str = "JPEG", quality: int = 90, **params: Any) -> bytes:
    """Encode `image` as JPEG or PNG with no metadata (see `pixels_only`); `params` go to Pillow's encoder."""
    fmt = fmt.upper()
    if fmt not in ("JPEG", "PNG"):
        raise ValueError(f"encode_image: format must be JPEG or PNG, got {fmt!r}")
    clean = pixels_only(image)
    if fmt == "JPEG" and clean.mode == "RGBA":
        clean = clean.convert("RGB")
    buf = io.BytesIO()
    if fmt == "JPEG":
        clean.save(buf, format="JPEG", quality=quality, **params)
    else:
        clean.save(buf, format="PNG", **params)
    return buf.getvalue()


def save_image(image: np.ndarray | Image.Image, path: str | Path, fmt: str = "JPEG", quality: int = 90,
               **params: Any) -> None:
    """Write `image` to `path` atomically as JPEG or PNG with no metadata (readers never see a half-written file)."""
    data = encode_image(image, fmt, quality, **params)
    atomic_write_with(Path(path), lambda tmp: tmp.write_bytes(data))


def strip_jpeg_metadata(data: bytes) -> bytes | None:
    """The JPEG `data` without its metadata segments, its compressed image data untouched; None if it is no
    well-formed baseline/progressive JPEG (the caller then decodes and re-encodes it).

    Dropped: APP1-APP15 (EXIF with GPS, time, device and thumbnail; XMP; ICC; MPF; IPTC in APP13) except Adobe's
    APP14, APP0 other than JFIF (JFXX thumbnails), COM comments, and every byte after the end-of-image marker (the
    second pictures of a multi-picture file, e.g. a phone's depth map, live there).
    """
    n = len(data)
    if n < 4 or data[:2] != b"\xff\xd8":
        return None
    out = bytearray(data[:2])
    i = 2
    while i < n:
        if data[i] != 0xFF:
            return None
        while i < n and data[i] == 0xFF:  # a marker may be preceded by any number of 0xFF fill bytes
            i += 1
        if i >= n:
            return None
        marker = data[i]
        i += 1
        if marker == _EOI:
            out += b"\xff\xd9"
            return bytes(out)
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # RSTn / TEM: no length field
            out += bytes((0xFF, marker))
            continue
        if i + 2 > n:
            return None
        length = int.from_bytes(data[i:i + 2], "big")
        end = i + length
        if length < 2 or end > n:
            return None
        if marker == _SOS:
            # the scan's entropy-coded data runs to the next marker: 0xFF followed by neither a stuffed 0x00 nor
            # a restart marker (progressive files have several scans, each found this way)
            j = end
            while True:
                j = data.find(b"\xff", j)
                if j < 0 or j + 1 >= n:
                    return None
                nxt = data[j + 1]
                if nxt == 0x00 or 0xD0 <= nxt <= 0xD7:
                    j += 2
                elif nxt == 0xFF:
                    j += 1
                else:
                    break
            out += bytes((0xFF, marker)) + data[i:j]
            i = j
            continue
        segment = data[i + 2:end]
        metadata = 0xE0 <= marker <= 0xEF or marker == 0xFE
        if not metadata or any(segment.startswith(sig) for sig in _KEEP_APP.get(marker, ())):
            out += bytes((0xFF, marker)) + data[i:end]
        i = end
    return None  # no end-of-image marker: a truncated file
