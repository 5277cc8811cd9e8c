"""One pixel limit, checked from the header before decoding, for every command that reads photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _images import png_header_only
from dfudet.data import checks
from dfudet.data.checks import TooManyPixels, decode_image_bytes, load_image
from dfudet.data.importers import import_dataset
from dfudet.errors import DataError


def test_the_default_limit_is_a_limit_not_a_warning(tmp_path: Path):
    """15000x15000 = 225 MP used to pass PIL's 200 MP guard with a warning; now it is refused from its header."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(15_000, 15_000))
    with pytest.raises(TooManyPixels,
                       match=r"bomb.png: image is 15000x15000 = 225.0 MP, over the pixel limit of 50 MP"):
        load_image(bomb)
    # just over the default limit (50 MP) is refused too, before any pixel is decoded
    with pytest.raises(TooManyPixels, match="over the pixel limit of 50 MP"):
        decode_image_bytes(png_header_only(8_000, 6_251), "upload")


def test_the_limit_is_configurable_and_applies_to_import(tmp_path: Path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(images / "foot.png")
    masks = tmp_path / "masks"
    masks.mkdir()
    m = np.zeros((300, 400), np.uint8)
    m[100:150, 100:180] = 255
    Image.fromarray(m).save(masks / "foot.png")
    assert load_image(images / "foot.png").shape == (300, 400, 3)
    checks.set_max_pixels(100_000)
    with pytest.raises(DataError, match=r"foot.png: image is 400x300 = 0.1 MP, over the pixel limit of 0.1 MP"):
        load_image(images / "foot.png")
    with pytest.raises(DataError, match="over the pixel limit"):
        import_dataset("masks", images=images, annotations=[masks], healthy=[], out=tmp_path / "ds")
    with pytest.raises(DataError, match="positive number"):
        checks.set_max_pixels(0)
