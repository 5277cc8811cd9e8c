"""Per-ulcer wound masks as COCO run-length encodings (RLE), the form records, caches and COCO files share.

A record with masks holds one RLE per box, in the same order, each `{"size": [h, w], "counts": str}` of the image
the record describes (pycocotools' compressed counts, ASCII, so it fits in JSON and in the cache header). A FUSeg
mask of a 512 x 512 photo takes a few hundred bytes this way. Records without masks keep `masks = None` and every
step treats them as box-only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from dfudet.errors import DataError

Rle = dict[str, Any]


def encode(mask: np.ndarray) -> Rle:
    """RLE of a boolean or 0/1 (H, W) mask."""
    m = np.asfortranarray(np.asarray(mask, dtype=np.uint8).reshape(mask.shape[0], mask.shape[1]))
    rle = mask_utils.encode(m)
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode(rle: Rle) -> np.ndarray:
    """The boolean (H, W) mask of an RLE (compressed string counts or COCO's uncompressed list counts)."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed COCO RLE
        compressed = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    else:
        compressed = {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(compressed).astype(bool)


def from_polygons(polygons: Sequence[Sequence[float]], width: int, height: int) -> Rle:
    """RLE of COCO polygons ([[x1, y1, x2, y2, ...], ...]) in an image of width x height."""
    parts = mask_utils.frPyObjects([list(map(float, p)) for p in polygons], height, width)
    return encode(mask_utils.decode(mask_utils.merge(parts)).astype(bool))


def check(rle: Any, width: int, height: int, where: str) -> Rle:
    """A well-formed RLE of an image of width x height, or a DataError naming `where`."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise DataError(f"{where}: a mask must be a COCO RLE {{'size': [h, w], 'counts': ...}}, got {str(rle)[:80]}")
    try:
        h, w = (int(v) for v in rle["size"])
        mask = decode(rle)
    except (TypeError, ValueError, KeyError) as exc:
        raise DataError(f"{where}: unreadable mask RLE ({exc})") from None
    if (w, h) != (width, height) or mask.shape != (height, width):
        raise DataError(f"{where}: the mask is {w}x{h} but its image is {width}x{height}")
    return encode(mask)


def area(rle: Rle) -> int:
    """Pixels of the mask."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        return int(decode(rle).sum())
    return int(mask_utils.area({"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str)
                                else counts}))


def polygons(rle: Rle, tolerance: float = 1.0) -> list[list[float]]:
    """The mask's outer outlines as COCO polygons [[x1, y1, x2, y2, ...], ...] (pixel centres), each simplified to
    within `tolerance` pixels (Douglas-Peucker, cv2.approxPolyDP). A part too thin for a polygon (a line or a dot of
    pixels) is outlined by the edges of its pixel box, so every non-empty mask has an outline. The outline is for
    drawing: filled, it covers the mask less a half-pixel rim, so areas are counted on the mask (`area`)."""
    m = np.ascontiguousarray(decode(rle).astype(np.uint8))
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for c in contours:
        simple = cv2.approxPolyDP(c, tolerance, True) if tolerance > 0 else c
        if len(simple) < 3:
            simple = c
        if len(simple) < 3:
            x, y, w, h = cv2.boundingRect(c)
            out.append([x - 0.5, y - 0.5, x + w - 0.5, y - 0.5, x + w - 0.5, y + h - 0.5, x - 0.5, y + h - 0.5])
        else:
            out.append([float(v) for v in simple.reshape(-1)])
    return out


def from_probabilities(probs: np.ndarray, scale: float, width: int, height: int, threshold: float = 0.5
                       ) -> list[Rle]:
    """RLEs in a photo of width x height from (N, S, S) mask probabilities of the model input (the photo resized by
    `scale` and padded bottom/right): crop the photo's part, resize it bilinearly, then threshold."""
    out = []
    h_in = min(probs.shape[1], max(1, round(height * scale))) if len(probs) else 0
    w_in = min(probs.shape[2], max(1, round(width * scale))) if len(probs) else 0
    for p in probs:
        crop = np.ascontiguousarray(p[:h_in, :w_in], dtype=np.float32)
        photo = crop if crop.shape == (height, width) else cv2.resize(crop, (width, height),
                                                                      interpolation=cv2.INTER_LINEAR)
        out.append(encode(photo > threshold))
    return out


def resize(rle: Rle, width: int, height: int) -> Rle:
    """The mask resized to width x height (nearest neighbour, as the image is resized for the cache)."""
    h, w = (int(v) for v in rle["size"])
    if (w, h) == (width, height):
        return rle
    m = cv2.resize(decode(rle).astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    return encode(m.astype(bool))


def stack(rles: Sequence[Rle], width: int, height: int) -> np.ndarray:
    """(N, H, W) uint8 masks of N RLEs (N may be 0)."""
    out = np.zeros((len(rles), height, width), dtype=np.uint8)
    for i, r in enumerate(rles):
        m = decode(r)
        if m.shape != (height, width):
            raise DataError(f"mask {i} is {m.shape[1]}x{m.shape[0]}, its image {width}x{height}")
        out[i] = m
    return out


def tight_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, 4) float32 xyxy pixel-edge boxes of (N, H, W) masks (all zeros for an empty mask)."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        if len(xs):
            boxes[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return boxes
