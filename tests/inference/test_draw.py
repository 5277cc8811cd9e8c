"""draw_detections: GT green, predictions red above the threshold, orange near misses, scaled for small images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dfudet.inference.draw import GT_COLOUR, LOW_COLOUR, PRED_COLOUR, draw_detections, save_jpeg


def _px(im: Image.Image, x: int, y: int) -> tuple[int, int, int]:
    return im.getpixel((x, y))[:3]


def test_colours_and_positions() -> None:
    img = np.zeros((80, 100, 3), np.uint8)
    out = draw_detections(img, boxes=[[50, 40, 90, 70], [5, 60, 20, 75]], scores=[0.9, 0.3], threshold=0.5,
                          gt_boxes=[[10, 10, 40, 30]])
    assert out.size == (100, 80)
    assert _px(out, 10, 20) == GT_COLOUR  # left edge of the GT box
    assert _px(out, 90, 60) == PRED_COLOUR  # right edge of the kept prediction
    assert _px(out, 5, 70) == (0, 0, 0)  # below threshold and no low_threshold: not drawn
    assert _px(out, 30, 50) == (0, 0, 0)  # untouched background
    low = draw_detections(img, boxes=[[5, 60, 20, 75]], scores=[0.3], threshold=0.5, low_threshold=0.2)
    assert _px(low, 5, 70) == LOW_COLOUR
    assert img.max() == 0  # the input is never drawn on


def test_score_label_is_drawn_next_to_the_box() -> None:
    img = np.zeros((200, 200, 3), np.uint8)
    with_label = np.asarray(draw_detections(img, [[50, 100, 150, 180]], [0.87], 0.5))
    # the filled tag sits just above the box's top-left corner
    tag = with_label[80:99, 50:80]
    assert (tag == PRED_COLOUR).all(axis=-1).mean() > 0.3
    assert (tag > 180).all(axis=-1).any()  # light text on it (anti-aliased)


def test_small_images_are_enlarged_with_their_boxes() -> None:
    img = np.zeros((48, 96, 3), np.uint8)
    out = draw_detections(img, gt_boxes=[[24, 12, 48, 36]], min_size=384)
    assert out.size == (384, 192)
    assert _px(out, 96, 100) == GT_COLOUR  # x 24 * 4
    assert _px(out, 150, 100) == (0, 0, 0)


def test_mismatched_scores_raise() -> None:
    with pytest.raises(ValueError, match="2 boxes but 1 scores"):
        draw_detections(np.zeros((10, 10, 3), np.uint8), [[0, 0, 5, 5], [1, 1, 4, 4]], [0.5])


def test_save_jpeg_writes_a_readable_file(tmp_path: Path) -> None:
    im = draw_detections(np.full((30, 40, 3), 128, np.uint8), gt_boxes=[[5, 5, 20, 20]])
    save_jpeg(im, tmp_path / "a" / "x.jpg")
    with Image.open(tmp_path / "a" / "x.jpg") as back:
        assert back.format == "JPEG" and back.size == (40, 30)
    assert list((tmp_path / "a").iterdir()) == [tmp_path / "a" / "x.jpg"]  # no temp file left behind
