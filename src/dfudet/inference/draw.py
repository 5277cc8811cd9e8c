"""Draw ground truth and predictions on an image (PIL ImageDraw) for galleries and annotated copies.

Colours: ground truth green, predictions at or above the threshold red with their score, predictions below it
(shown only when asked, e.g. near misses in the missed-ulcer gallery) orange. Line width and font size follow the
image size so boxes stay visible on both 96 px and 4000 px images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dfudet.data.privacy import save_image

GT_COLOUR = (0, 200, 0)
PRED_COLOUR = (230, 25, 25)
LOW_COLOUR = (255, 150, 0)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _as_boxes(x: Any) -> np.ndarray:
    return np.asarray(x if x is not None else np.zeros((0, 4)), dtype=np.float64).reshape(-1, 4)


def draw_detections(image: np.ndarray | Image.Image, boxes: Any = None, scores: Any = None, threshold: float = 0.0,
                    gt_boxes: Any = None, low_threshold: float | None = None, max_low: int = 5,
                    min_size: int = 0, legend: bool = False) -> Image.Image:
    """An RGB copy of `image` with GT boxes (green) and predictions (red >= threshold, orange >= low_threshold).

    Boxes are xyxy pixels of `image`. With `min_size`, small images are enlarged so the long side is at least that
    many pixels (boxes scaled along) to keep galleries readable.
    """
    im = image.convert("RGB") if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
    im = im.copy()
    factor = 1.0
    if min_size and max(im.size) < min_size:
        factor = min_size / max(im.size)
        im = im.resize((max(1, round(im.width * factor)), max(1, round(im.height * factor))), Image.Resampling.BILINEAR)
    pred = _as_boxes(boxes) * factor
    sc = np.asarray(scores if scores is not None else np.zeros(len(pred)), dtype=np.float64).reshape(-1)
    if len(sc) != len(pred):
        raise ValueError(f"draw_detections: {len(pred)} boxes but {len(sc)} scores")
    gt = _as_boxes(gt_boxes) * factor
    side = max(im.size)
    width = max(1, round(side / 250))
    font = _font(max(10, round(side / 35)))
    draw = ImageDraw.Draw(im)

    for b in gt:
        draw.rectangle([float(v) for v in b], outline=GT_COLOUR, width=width)
    order = np.argsort(sc, kind="stable")  # ascending: the best box is drawn last, on top
    high = [i for i in order if sc[i] >= threshold]
    low = [] if low_threshold is None else [i for i in order if low_threshold <= sc[i] < threshold][-max_low:]
    for colour, idx in ((LOW_COLOUR, low), (PRED_COLOUR, high)):
        for i in idx:
            b = [float(v) for v in pred[i]]
            draw.rectangle(b, outline=colour, width=width)
            _label(draw, f"{sc[i]:.2f}", b, colour, font, im.size)
    if legend:
        items = [("truth", GT_COLOUR), (f"model, score >= {threshold:.2f}", PRED_COLOUR)]
        if low_threshold is not None:
            items.append((f"near miss, score {low_threshold:.2f}-{threshold:.2f}", LOW_COLOUR))
        im = _with_legend(im, items, font, width)
    return im


def draw_outlines(image: Image.Image, outlines: list[list[list[float]]], colour: tuple[int, int, int] = PRED_COLOUR,
                  factor: float = 1.0) -> Image.Image:
    """Draw each detection's outline (COCO polygons [[x1, y1, x2, y2, ...], ...] in `image` pixels / factor) in place
    and return the image; line width follows the image size as for boxes."""
    draw = ImageDraw.Draw(image)
    width = max(1, round(max(image.size) / 250))
    for polys in outlines:
        for poly in polys:
            pts = [(float(x) * factor, float(y) * factor) for x, y in zip(poly[0::2], poly[1::2])]
            if len(pts) >= 3:
                draw.line(pts + pts[:1], fill=colour, width=width, joint="curve")
    return image


def _with_legend(im: Image.Image, items: list[tuple[str, tuple[int, int, int]]], font: Any, width: int) -> Image.Image:
    """The image with a strip below it naming each box colour (galleries are read without the code)."""
    probe = ImageDraw.Draw(im)
    th = max(int(probe.textbbox((0, 0), "Ag", font=font)[3]), 10)  # Pillow types the bbox as float; it is int
    pad = max(4, th // 3)
    strip = Image.new("RGB", (im.width, th + 2 * pad), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    x = pad
    for text, colour in items:
        draw.rectangle([x, pad, x + th, pad + th], outline=colour, width=max(2, width))
        x += th + pad
        draw.text((x, pad), text, fill=(0, 0, 0), font=font)
        x += int(draw.textlength(text, font=font)) + 3 * pad
    out = Image.new("RGB", (im.width, im.height + strip.height), (255, 255, 255))
    out.paste(im, (0, 0))
    out.paste(strip, (0, im.height))
    return out


def _label(draw: ImageDraw.ImageDraw, text: str, box: list[float], colour: tuple[int, int, int], font: Any,
           size: tuple[int, int]) -> None:
    """Score tag on a filled background above the box (inside it when the box touches the top edge)."""
    left, t, r, b = draw.textbbox((0, 0), text, font=font)
    tw, th = r - left + 4, b - t + 4
    x = min(max(0.0, box[0]), max(0.0, size[0] - tw))
    y = box[1] - th if box[1] - th >= 0 else box[1]
    draw.rectangle([x, y, x + tw, y + th], fill=colour)
    draw.text((x + 2 - left, y + 2 - t), text, fill=(255, 255, 255), font=font)


def save_jpeg(image: Image.Image, path: Any, quality: int = 90) -> None:
    """Write an RGB image as JPEG atomically (readers never see a half-written gallery file), with no metadata."""
    save_image(image, Path(path), "JPEG", quality=quality)
