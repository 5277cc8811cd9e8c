"""dfudet.data.privacy: images written with pixels only, and JPEG metadata removed without re-encoding."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _images import LEAKS, leaks_in, phone_jpeg
from dfudet.data.checks import decode_image_bytes
from dfudet.data.privacy import encode_image, pixels_only, save_image, strip_jpeg_metadata

JPEG_LEAKS = [w for w in LEAKS if not w.startswith("PNG")]


def _pixels(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("save", [{}, {"progressive": True}, {"restart_marker_blocks": 1},
                                  {"progressive": True, "restart_marker_rows": 1, "subsampling": 0}],
                         ids=["baseline", "progressive", "restart-markers", "progressive-restart-444"])
def test_strip_removes_every_metadata_segment_and_keeps_the_pixels(save: dict) -> None:
    data = phone_jpeg(_pixels(), 1, **save)
    assert set(leaks_in(data)) == set(JPEG_LEAKS)
    clean = strip_jpeg_metadata(data)
    assert clean is not None
    assert leaks_in(clean) == []
    assert clean.endswith(b"\xff\xd9") and b"JFIF\x00" in clean[:32]  # JFIF kept, nothing after the end marker
    # the compressed data is untouched: identical decoded pixels, no second lossy pass
    np.testing.assert_array_equal(decode_image_bytes(clean), decode_image_bytes(data))
    assert strip_jpeg_metadata(clean) == clean  # already clean: unchanged


def test_strip_keeps_the_adobe_segment_that_says_how_channels_are_coded() -> None:
    buf = io.BytesIO()
    Image.fromarray(_pixels()).convert("CMYK").save(buf, format="JPEG", quality=90, comment=b"LEAKCOMMENT")
    data = buf.getvalue()
    clean = strip_jpeg_metadata(data)
    assert clean is not None and b"Adobe" in clean and b"LEAKCOMMENT" not in clean
    with Image.open(io.BytesIO(clean)) as a, Image.open(io.BytesIO(data)) as b:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("bad", [b"", b"\x89PNG\r\n\x1a\n" + bytes(40), b"\xff\xd8\xff\xe1\x00"],
                         ids=["empty", "png", "cut-in-a-segment"])
def test_strip_returns_none_for_what_is_not_a_whole_jpeg(bad: bytes) -> None:
    assert strip_jpeg_metadata(bad) is None


def test_strip_returns_none_for_a_truncated_jpeg() -> None:
    data = phone_jpeg(_pixels())
    end = data.index(b"\xff\xd9LEAKTRAILER")
    assert strip_jpeg_metadata(data[:end - 100]) is None  # no end-of-image marker: the caller re-encodes


def test_pixels_only_turns_the_photo_upright_and_drops_its_metadata() -> None:
    stored = _pixels(48, 64)
    with Image.open(io.BytesIO(phone_jpeg(stored, orientation=6))) as im:
        im.load()
        assert im.info.get("exif") and im.info.get("icc_profile") and im.info.get("xmp")
        clean = pixels_only(im)
    assert clean.size == (48, 64)  # orientation 6: stored 64 x 48, shown 48 wide and 64 tall
    assert clean.info == {} and len(clean.getexif()) == 0
    # turned clockwise: the stored image's left column is the shown top row
    shown = np.asarray(clean).astype(int)
    assert np.abs(shown[0] - stored[::-1, 0].astype(int)).mean() < 12


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_encode_image_writes_no_metadata_even_when_the_image_carries_some(fmt: str) -> None:
    with Image.open(io.BytesIO(phone_jpeg(_pixels(), orientation=1))) as im:
        im.load()
        data = encode_image(im, fmt)
        # what Pillow alone writes from such an image: its ICC profile (PNG) and comment (JPEG) travel along
        buf = io.BytesIO()
        im.save(buf, format=fmt)
    assert leaks_in(buf.getvalue()) != []
    assert leaks_in(data) == []
    with Image.open(io.BytesIO(data)) as out:
        assert out.format == fmt and out.size == (64, 48)


def test_save_image_writes_atomically_and_refuses_other_formats(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "a.png"
    save_image(_pixels(), path, "PNG")
    with Image.open(path) as im:
        np.testing.assert_array_equal(np.asarray(im), _pixels())
    assert [p.name for p in path.parent.iterdir()] == ["a.png"]  # no temp file left beside it
    with pytest.raises(ValueError, match="JPEG or PNG"):
        encode_image(_pixels(), "WEBP")
    with pytest.raises(ValueError, match="uint8"):
        pixels_only(np.zeros((4, 4, 3), np.float32))
