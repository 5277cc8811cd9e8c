"""Image decoding (EXIF, odd modes, corrupt files) and box checks against the oriented image."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dfudet.data.checks import check_box, decode_image_bytes, describe_clip, load_image, load_pil
from dfudet.errors import DataError


def _jpeg(path: Path, w: int = 64, h: int = 48, exif_orientation: int | None = None) -> Path:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif
    img.save(path, format="JPEG", **kwargs)
    return path


def test_box_inside_is_unchanged() -> None:
    res = check_box([1, 2, 30, 40], 64, 48)
    assert res.box == [1.0, 2.0, 30.0, 40.0] and not res.clipped and res.problem is None


def test_box_partly_outside_is_clipped() -> None:
    res = check_box([-5, 10, 70, 50], 64, 48)
    assert res.box == [0.0, 10.0, 64.0, 48.0] and res.clipped
    assert describe_clip([-5, 10, 70, 50], res.box, 64, 48) == (
        "box [-5, 10, 70, 50] extends outside the 64x48 image; clipped to [0, 10, 64, 48]"
    )


@pytest.mark.parametrize(
    "box, message",
    [
        ([10, 10, 10, 20], "box [10, 10, 10, 20] has zero or negative area (needs x2 > x1 and y2 > y1)"),
        ([10, 20, 30, 5], "box [10, 20, 30, 5] has zero or negative area (needs x2 > x1 and y2 > y1)"),
        ([70, 10, 90, 20], "box [70, 10, 90, 20] lies outside the 64x48 image (zero area after clipping)"),
        ([0, float("nan"), 5, 5], "box [0, nan, 5, 5] has a non-finite coordinate"),
    ],
)
def test_unusable_boxes_are_refused_with_a_reason(box: list[float], message: str) -> None:
    res = check_box(box, 64, 48)
    assert res.box is None and res.problem == message


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    path = _jpeg(tmp_path / "rot.jpg", 64, 48, exif_orientation=6)
    assert Image.open(path).size == (64, 48)
    assert load_pil(path).size == (48, 64)
    assert load_image(path).shape == (64, 48, 3)


@pytest.mark.parametrize("mode", ["RGBA", "L", "CMYK", "I;16"])
def test_odd_modes_become_rgb8(tmp_path: Path, mode: str) -> None:
    if mode == "I;16":
        img = Image.fromarray(np.full((48, 64), 65535, dtype=np.uint16))
        path = tmp_path / "deep.png"
    elif mode == "CMYK":
        img = Image.new("CMYK", (64, 48), (0, 255, 255, 0))
        path = tmp_path / "cmyk.jpg"
    else:
        img = Image.new(mode, (64, 48), 200 if mode == "L" else (10, 20, 30, 0))
        path = tmp_path / f"{mode}.png"
    img.save(path)
    arr = load_image(path)
    assert arr.shape == (48, 64, 3) and arr.dtype == np.uint8
    if mode == "I;16":
        assert arr.min() == 255  # full-scale 16-bit white stays white, not clipped garbage
    if mode == "RGBA":
        assert arr.max() == 0  # fully transparent pixels are composited on black
    if mode == "L":
        assert (arr == 200).all()
    if mode == "CMYK":
        assert arr[0, 0, 0] > 200 and arr[0, 0, 1] < 60  # cyan-free, magenta+yellow = red


def test_truncated_jpeg_names_the_file(tmp_path: Path) -> None:
    good = _jpeg(tmp_path / "good.jpg").read_bytes()
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"cut\.jpg: corrupt or truncated image"):
        load_pil(bad)


def test_garbage_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "noise.jpg"
    bad.write_bytes(b"this is not an image at all")
    with pytest.raises(DataError, match=r"noise\.jpg: not a readable image"):
        load_pil(bad)
    with pytest.raises(DataError, match=r"missing\.jpg: image file does not exist"):
        load_pil(tmp_path / "missing.jpg")


def test_decode_image_bytes_round_trip() -> None:
    buf = io.BytesIO()
    Image.new("L", (8, 4), 77).save(buf, format="PNG")
    arr = decode_image_bytes(buf.getvalue())
    assert arr.shape == (4, 8, 3) and (arr == 77).all()
    with pytest.raises(DataError, match="k1: cannot decode image bytes"):
        decode_image_bytes(b"xx", name="k1")
