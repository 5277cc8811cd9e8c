"""Per-ulcer wound masks as COCO run-length encodings (RLE), the form records, caches and COCO files share.

A record with masks holds one RLE per box, in the same order, each `{"size": [h, w], "counts": str}` of the image
the record describes (pycocotools' compressed counts, ASCII, so it fits in JSON and in the cache header). A FUSeg
mask of a 512 x 512 photo takes a few hundred bytes this way. Records without masks keep `masks = None` and every
step treats them as box-only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from dfudet.errors import DataError

Rle = dict[str, Any]


def encode(mask: np.ndarray) -> Rle:
    """RLE of a boolean or 0/1 (H, W) mask."""
    m = np.asarray(mask)
    if m.dtype == bool:
        m = m.view(np.uint8)
    m = m.reshape(m.shape[0], m.shape[1])
    if m.dtype != np.uint8 or not m.flags.f_contiguous:  # pycocotools reads column-major uint8
        m = np.asfortranarray(m, dtype=np.uint8)
    rle = mask_utils.encode(m)
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode(rle: Rle) -> np.ndarray:
    """The boolean (H, W) mask of an RLE (compressed string counts or COCO's uncompressed list counts)."""
    return _decode_u8(rle).astype(bool)


def _compressed(rle: Rle) -> dict[str, Any]:
    """pycocotools' compressed form of an RLE (string or COCO's uncompressed list counts)."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed COCO RLE
        return cast(dict[str, Any], mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w))
    return {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def _decode_u8(rle: Rle) -> np.ndarray:
    """pycocotools' own (H, W) column-major uint8 decoding, without a copy to bool."""
    return cast(np.ndarray, mask_utils.decode(_compressed(rle)))


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
    return int(mask_utils.area(_compressed(rle)))


def polygons(rle: Rle, tolerance: float = 1.0) -> list[list[float]]:
    """The mask's outer outlines as COCO polygons [[x1, y1, x2, y2, ...], ...] (pixel centres), each simplified to
    within `tolerance` pixels (Douglas-Peucker, cv2.approxPolyDP). A part too thin for a polygon (a line or a dot of
    pixels) gets a degenerate one (its end points repeated), so every non-empty mask has an outline. The outline
    is for drawing: filled, it covers the mask less a half-pixel rim, so areas are counted on the mask (`area`)."""
    x, y, w, h = _bbox(rle)
    if w == 0 or h == 0:
        return []
    m = np.ascontiguousarray(_decode_u8(rle)[y:y + h, x:x + w])  # contours of the mask's box only
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x, y))
    out = []
    for c in contours:
        simple = cv2.approxPolyDP(c, tolerance, True) if tolerance > 0 else c
        if len(simple) < 3:
            simple = c
        pts = [float(v) for v in simple.reshape(-1)]
        while len(pts) < 6:  # a line or a dot of pixels: repeat its end so COCO tools read it as a polygon
            pts += pts[-2:]
        out.append(pts)
    return out


def _bbox(rle: Rle) -> tuple[int, int, int, int]:
    """Integer pixel box (x, y, w, h) of the mask's pixels; w = h = 0 for an empty mask."""
    x, y, w, h = mask_utils.toBbox(_compressed(rle))
    return int(x), int(y), int(w), int(h)


def from_probabilities(probs: np.ndarray, scale: float, width: int, height: int, threshold: float = 0.5
                       ) -> list[Rle]:
    """RLEs in a photo of width x height from (N, S, S) mask probabilities of the model input (the photo resized by
    `scale` and padded bottom/right).

    Cropping the photo's part of each map, resizing it to the photo (bilinear, cv2.resize's pixel-centre mapping)
    and thresholding, done on the region around the map's non-zero pixels only (Mask R-CNN pastes each mask inside
    its box and leaves the rest 0), so a 12 MP photo costs its box, not 12 MP per detection. The result equals the
    whole-map resize but for rare pixels at the threshold (cv2.warpAffine's fixed-point sampling), tested.
    """
    out: list[Rle] = []
    if not len(probs):
        return out
    h_in = min(probs.shape[1], max(1, round(height * scale)))
    w_in = min(probs.shape[2], max(1, round(width * scale)))
    sx, sy = w_in / width, h_in / height  # input pixels per photo pixel
    for p in probs:
        photo = np.zeros((height, width), dtype=np.uint8, order="F")  # encoded without a column-major copy
        ys, xs = np.nonzero(p[:h_in, :w_in] > 0)
        if len(xs):
            # photo pixels whose sample point falls within one input pixel of the non-zero region
            x0 = max(0, int(np.floor((xs.min() - 0.5) / sx - 0.5)))
            x1 = min(width, int(np.ceil((xs.max() + 1.5) / sx + 0.5)))
            y0 = max(0, int(np.floor((ys.min() - 0.5) / sy - 0.5)))
            y1 = min(height, int(np.ceil((ys.max() + 1.5) / sy + 0.5)))
            # dst (X, Y) in the ROI samples the input at ((X + x0 + 0.5) * sx - 0.5, (Y + y0 + 0.5) * sy - 0.5)
            m = np.array([[sx, 0.0, (x0 + 0.5) * sx - 0.5], [0.0, sy, (y0 + 0.5) * sy - 0.5]], dtype=np.float64)
            src = np.ascontiguousarray(p[:h_in, :w_in], dtype=np.float32)
            roi = cv2.warpAffine(src, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                 borderMode=cv2.BORDER_REPLICATE)
            photo[y0:y1, x0:x1] = roi > threshold
        out.append(encode(photo))
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
