"""Crafted image bytes shared by the data, serve and metadata tests (tests/ is on sys.path via tests/conftest.py)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageCms


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels with no pixel data (a decompression-bomb shape)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# what the photos carry, and the byte patterns by which a written file would show it
LEAKS = {
    "EXIF Make": b"LeakMaker",
    "EXIF Model": b"LeakModel X9",
    "EXIF date/time": b"2019:03:14 15:09:26",
    "EXIF GPS map datum": b"LEAKDATUM",
    "EXIF maker note": b"LEAKMAKERNOTE",
    "IPTC city": b"LeakCity",
    "JPEG comment": b"LEAKCOMMENT",
    "trailing multi-picture data": b"LEAKTRAILER",
    "EXIF header": b"Exif\x00\x00",
    "XMP namespace": b"http://ns.adobe.com/xap",
    "IPTC (Photoshop) segment": b"Photoshop 3.0",
    "JPEG ICC segment": b"ICC_PROFILE",
    "PNG EXIF chunk": b"eXIf",
    "PNG ICC chunk": b"iCCP",
    "PNG text chunk with XMP": b"XML:com.adobe.xmp",
}


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "LeakMaker"  # Make
    exif[0x0110] = "LeakModel X9"  # Model
    exif[0x0112] = orientation
    exif[0x0132] = "2019:03:14 15:09:26"  # DateTime
    sub = exif.get_ifd(0x8769)  # Exif IFD
    sub[0x9003] = "2019:03:14 15:09:26"  # DateTimeOriginal
    sub[0x927C] = b"LEAKMAKERNOTE"  # MakerNote
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (52.0, 31.0, 12.0)  # GPSLatitudeRef, GPSLatitude
    gps[3], gps[4] = "E", (13.0, 24.0, 36.0)  # GPSLongitudeRef, GPSLongitude
    gps[0x12] = "LEAKDATUM"  # GPSMapDatum
    return exif


_XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:exif="http://ns.adobe.com/exif/1.0/" '
        b'tiff:Make="LeakMaker" exif:DateTimeOriginal="2019:03:14 15:09:26" exif:GPSMapDatum="LEAKDATUM"/>'
        b"</rdf:RDF></x:xmpmeta>")


def _iptc_app13() -> bytes:
    """An APP13 'Photoshop 3.0' segment holding an IPTC-IIM block (city and date created)."""
    iim = b"".join(b"\x1c\x02" + bytes([tag]) + struct.pack(">H", len(v)) + v
                   for tag, v in ((0x5A, b"LeakCity"), (0x37, b"20190314")))
    if len(iim) % 2:
        iim += b"\x00"
    body = b"Photoshop 3.0\x00" + b"8BIM" + b"\x04\x04" + b"\x00\x00" + struct.pack(">I", len(iim)) + iim
    return b"\xff\xed" + struct.pack(">H", len(body) + 2) + body


def phone_jpeg(pixels: np.ndarray, orientation: int = 1, **save: object) -> bytes:
    """`pixels` (the stored, not displayed, array) as a JPEG carrying everything a phone photo might: EXIF (GPS,
    time, device, maker note, `orientation`), XMP, IPTC, an ICC profile, a comment and trailing bytes after the
    image; `save` goes to Pillow (e.g. progressive=True)."""
    buf = io.BytesIO()
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(pixels).save(buf, format="JPEG", **{"quality": 92, **save}, exif=_exif(orientation), xmp=_XMP,
                                 icc_profile=icc, comment=b"LEAKCOMMENT")
    data = buf.getvalue()
    assert data[:2] == b"\xff\xd8"
    # IPTC right after SOI; a second picture's worth of bytes after EOI, as a phone's multi-picture file has
    return data[:2] + _iptc_app13() + data[2:] + b"LEAKTRAILER" + bytes(64)


def leaks_in(data: bytes) -> list[str]:
    """Which of the LEAKS patterns `data` holds."""
    return [what for what, pattern in LEAKS.items() if pattern in data]
