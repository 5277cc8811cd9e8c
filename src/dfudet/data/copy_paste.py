"""Paste a wound (its pixels under its mask) from one photo onto another: Simple Copy-Paste (Ghiasi et al. 2021).

Used by `dfudet data shifted` (wounds of held-out FUSeg photos on held-out healthy feet) and, when configured, as a
training augmentation (`data.augment.copy_paste`, dfudet.data.dataset).

- **Cut** (`cut_wound`): the source crop around one wound mask, resized by an absolute factor (INTER_AREA down,
  INTER_LINEAR up; the mask resized as a float map and thresholded at 0.5, so its outline stays smooth). The crop
  keeps a margin of the skin around the wound for the feathered edge.
- **Feathered edge**: alpha = max(mask, min(1, 2 * Gaussian(mask, sigma))), sigma = 4% of the pasted wound's side
  (0.7 - 4 px): every wound pixel is fully opaque and the source's peri-wound skin fades out over about 2 sigma
  outside the outline, so there is no hard seam. The label is the binary mask: what is wound is labelled.
- **Colour matching** (optional, `color_match` in [0, 1]): the whole patch is shifted in CIE Lab by that share of
  the difference between the target's mean colour under the patch and the mean of the source's skin ring around
  the wound (a Reinhard-style mean transfer of the *surroundings*: the wound keeps its contrast with the skin).
- **Placement** (`choose_position`): the wound's box lies wholly inside the target, never off-image; it is put on
  skin when it can be: at least `min_skin` (80%) of its box is skin under the YCrCb rule of `skin_mask`, and it
  does not overlap existing wounds. Fallback when no such place exists: the free places with the largest skin
  share, else anywhere free, else anywhere inside the image. `paste_wounds` can first shrink a wound too big for
  any skin region (`shrink`: 0.8, 0.64, ... 0.26 of its scale) before falling back, and records the scale used.
- **Black-and-white targets** (mean channel spread under GRAY_SPREAD) get the wound in grey too, and their "skin" is
  the brighter side of an Otsu split of luma (the colour rule cannot work there; feet are mostly photographed
  against a darker or a lighter backdrop, and the darker-skin-on-white case then falls back to the largest share).
- **Occlusion**: each target mask loses the pixels the pasted wound covers; a target wound left empty is dropped.
  Every box is its mask's tight box (x0, y0, x1 + 1, y1 + 1), as dfudet.data.instance_masks.tight_boxes gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

# Skin rule (Chai & Ngan 1999, "Face segmentation using skin-color map"): Cr in [133, 173] and Cb in [77, 127] in
# OpenCV's 8-bit YCrCb, plus luma Y >= 40 so black padding and deep shadow are not skin. It covers light to dark
# skin under ordinary lighting; strongly tinted light or skin-coloured floors fool it, which only moves a paste.
SKIN_CR = (133, 173)
SKIN_CB = (77, 127)
SKIN_Y_MIN = 40
# ... and HSV saturation >= 50 / 255: warm-lit white tubs, walls and pale sand pass the Cr/Cb box but are greyer than
# skin (on the healthy-feet test photos this took most of them out and kept the feet; beige cloth still passes)
SKIN_S_MIN = 50
MIN_SKIN = 0.8  # share of the pasted wound's box that must be skin for a position to count as "on skin"
SHRINK_STEPS = tuple(0.8 ** k for k in range(7))  # paste_wounds(shrink=True): 1, 0.8, ... 0.26 of the scale
GRAY_SPREAD = 3.0  # a target whose channels differ by less than this on average is black-and-white
FIT = 0.9  # a pasted wound's box is at most this share of the target's width and height (scale clamped)


def tight_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, 4) float32 xyxy tight boxes of (N, H, W) masks, zeros for an empty one: the values of
    dfudet.data.instance_masks.tight_boxes, from row and column projections (several times faster than np.nonzero
    over the whole photo, which paid for most of a paste)."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for i, m in enumerate(masks):
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        if len(rows):
            boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def _box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = (int(v) for v in tight_boxes(np.asarray(mask)[None])[0])
    return x0, y0, x1, y1


@dataclass
class Wound:
    """A cut wound ready to paste: the crop with its skin margin, its soft alpha and binary mask, at target scale."""

    rgb: np.ndarray  # (h, w, 3) uint8 crop of the source around the wound, margin included
    alpha: np.ndarray  # (h, w) float32 in [0, 1]: the feathered edge
    mask: np.ndarray  # (h, w) bool: the wound itself
    ring_lab: np.ndarray | None  # mean CIE Lab colour of the source's skin around the wound (None: no skin seen)
    scale: float  # the absolute resize factor applied to the source pixels
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # the mask's tight box (x0, y0, x1, y1) inside the crop

    def __post_init__(self) -> None:
        self.box = _box_of(self.mask)

    @property
    def size(self) -> tuple[int, int]:
        """Width and height of the wound's tight box in target pixels."""
        x0, y0, x1, y1 = self.box
        return x1 - x0, y1 - y0


@dataclass
class PasteResult:
    """A target photo with wounds pasted: image, one box and mask per wound (target's kept ones first)."""

    image: np.ndarray  # (H, W, 3) uint8
    boxes: np.ndarray  # (N, 4) float32 xyxy, each its mask's tight box
    masks: np.ndarray  # (N, H, W) uint8 0/1
    kept: list[int]  # indices of the target's own wounds still present (in order), then the pasted ones follow
    pasted: list[dict[str, float | bool]] = field(default_factory=list)  # per pasted wound: x, y, scale, on_skin


def _lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def _is_gray(image: np.ndarray) -> bool:
    """True for a black-and-white photo stored as RGB (mean |R - G| + |G - B| spread under GRAY_SPREAD)."""
    small = np.asarray(image[::4, ::4, :3], dtype=np.int16)
    spread = np.abs(small[..., 0] - small[..., 1]).mean() + np.abs(small[..., 1] - small[..., 2]).mean()
    return bool(spread < GRAY_SPREAD)


def skin_mask(image: np.ndarray) -> np.ndarray:
    """Boolean (H, W) map of skin-coloured pixels of an RGB photo (the YCrCb rule above, or for a black-and-white
    photo the bright side of an Otsu split of luma; opened 5 x 5 for speckle)."""
    rgb = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
    if _is_gray(rgb):  # no colour to go by: the brighter side of an Otsu split of luma (skin against a backdrop)
        luma = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        _, split = cv2.threshold(luma, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        rule = (np.asarray(split, dtype=np.uint8) & (luma >= SKIN_Y_MIN)).astype(np.uint8)
        if int(luma.max()) - int(luma.min()) < 20:  # a featureless picture has no foot to split off
            rule[:] = 0
    else:
        ycrcb = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)
        y, cr, cb = ycrcb[..., 0], ycrcb[..., 1], ycrcb[..., 2]
        sat = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]
        rule = ((y >= SKIN_Y_MIN) & (cr >= SKIN_CR[0]) & (cr <= SKIN_CR[1])
                & (cb >= SKIN_CB[0]) & (cb <= SKIN_CB[1]) & (sat >= SKIN_S_MIN)).astype(np.uint8)
    opened = cv2.morphologyEx(rule, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    return np.asarray(opened).astype(bool)


def feather_sigma(side: float) -> float:
    """Gaussian sigma (px) of the feathered edge of a pasted wound whose box side is `side` px."""
    return float(np.clip(0.04 * side, 0.7, 4.0))


def cut_wound(image: np.ndarray, mask: np.ndarray, scale: float) -> Wound:
    """Cut the wound under `mask` (H, W) out of `image` (H, W, 3), resized by `scale`, with a feathered skin margin.

    Args:
        image: the source photo, RGB uint8.
        mask: the wound's boolean or 0/1 mask in that photo (must not be empty).
        scale: the absolute resize factor (target pixels per source pixel).

    Returns:
        The Wound, ready for `paste`.
    """
    m = np.asarray(mask).astype(bool)
    if m.shape != image.shape[:2]:
        raise ValueError(f"mask is {m.shape[1]}x{m.shape[0]}, its image {image.shape[1]}x{image.shape[0]}")
    if not m.any():
        raise ValueError("cannot cut a wound from an empty mask")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    x0, y0, x1, y1 = _box_of(m)
    side = float(np.sqrt((x1 - x0) * (y1 - y0))) * scale
    sigma = feather_sigma(side)
    margin = int(np.ceil(3 * sigma / scale)) + 1  # source pixels of skin kept around the wound for the soft edge
    h, w = m.shape
    cx0, cy0, cx1, cy1 = max(0, x0 - margin), max(0, y0 - margin), min(w, x1 + margin), min(h, y1 + margin)
    crop = np.ascontiguousarray(image[cy0:cy1, cx0:cx1, :3])
    cmask = m[cy0:cy1, cx0:cx1]
    # the source's skin ring around the wound (for colour matching): a few pixels out, not black padding
    ring = cv2.dilate(cmask.astype(np.uint8), np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)).astype(bool)
    ring &= ~cmask & skin_mask(crop)
    ring_lab = _lab(crop)[ring].mean(axis=0) if ring.sum() >= 4 else None
    nw, nh = max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    rgb = cv2.resize(crop, (nw, nh), interpolation=interp)
    soft = cv2.resize(cmask.astype(np.float32), (nw, nh), interpolation=interp)
    binary = soft >= 0.5
    if not binary.any():  # a wound scaled below a pixel: keep its strongest pixel, so a pasted wound is never empty
        binary.flat[int(np.argmax(soft))] = True
    alpha = np.maximum(binary, np.minimum(1.0, 2.0 * cv2.GaussianBlur(binary.astype(np.float32), (0, 0), sigma)))
    return Wound(rgb=rgb, alpha=alpha.astype(np.float32), mask=binary, ring_lab=ring_lab, scale=float(scale))


def _window_sums(a: np.ndarray, bw: int, bh: int) -> np.ndarray:
    """Sum of boolean `a` over every bw x bh window; entry [y, x] is the window with top-left (x, y)."""
    ii = cv2.integral(np.ascontiguousarray(a, dtype=np.uint8))  # (H + 1, W + 1) int32, zero first row and column
    return ii[bh:, bw:] - ii[:-bh, bw:] - ii[bh:, :-bw] + ii[:-bh, :-bw]


def choose_position(rng: np.random.Generator, skin: np.ndarray, size: tuple[int, int],
                    avoid: np.ndarray | None = None, min_skin: float = MIN_SKIN) -> tuple[int, int, bool]:
    """Top-left (x, y) of a wound box of `size` (w, h) wholly inside the image, on skin when possible.

    Args:
        rng: the random generator (the position is drawn uniformly among the allowed ones).
        skin: (H, W) boolean skin map of the target (`skin_mask`).
        size: the wound box's width and height (must fit in the image).
        avoid: (H, W) boolean map of pixels the box should not cover (existing wounds), or None.
        min_skin: the share of the box that must be skin for a position to count as on skin.

    Returns:
        (x, y, on_skin): on_skin is False when a fallback place was used.
    """
    h, w = skin.shape
    bw, bh = int(size[0]), int(size[1])
    if not (1 <= bw <= w and 1 <= bh <= h):
        raise ValueError(f"a {bw}x{bh} wound does not fit in a {w}x{h} image")
    skin_share = _window_sums(skin, bw, bh) / float(bw * bh)
    free = (_window_sums(avoid, bw, bh) == 0) if avoid is not None and avoid.any() else np.ones_like(skin_share, bool)
    for allowed, on_skin in ((free & (skin_share >= min_skin), True), (free & (skin_share > 0), False),
                             (free, False)):  # on skin; else the free places with the most skin; else anywhere free
        if allowed is not free and not on_skin and allowed.any():
            allowed &= skin_share >= skin_share[allowed].max()
        places = np.flatnonzero(allowed)  # row-major, uniform draw among them
        if len(places):
            y, x = divmod(int(places[int(rng.integers(len(places)))]), allowed.shape[1])
            return x, y, on_skin
    return int(rng.integers(w - bw + 1)), int(rng.integers(h - bh + 1)), False


def paste(target: np.ndarray, wound: Wound, x: int, y: int, target_masks: np.ndarray | None = None,
          color_match: float = 0.0) -> PasteResult:
    """Paste `wound` onto `target` with its box's top-left at (x, y); target wounds lose the pixels it covers.

    Args:
        target: the target photo, RGB uint8 (not modified).
        wound: from `cut_wound`.
        x, y: where the wound's tight box starts; the box must lie inside the target.
        target_masks: (N, H, W) masks of the target's own wounds (None: it has none).
        color_match: share (0 - 1) of the skin-colour difference to correct (see the module docstring).

    Returns:
        The PasteResult: the target's surviving wounds (occluded pixels removed, emptied ones dropped), then the
        pasted one.
    """
    h, w = target.shape[:2]
    bx0, by0, bx1, by1 = wound.box
    bw, bh = bx1 - bx0, by1 - by0
    if not (0 <= x and 0 <= y and x + bw <= w and y + bh <= h):
        raise ValueError(f"a {bw}x{bh} wound at ({x}, {y}) is not inside the {w}x{h} image")
    # the crop's placement in the target, clipped to the image (only the skin margin can fall outside)
    ox, oy = x - bx0, y - by0
    ph, pw = wound.mask.shape
    tx0, ty0, tx1, ty1 = max(0, ox), max(0, oy), min(w, ox + pw), min(h, oy + ph)
    sx0, sy0 = tx0 - ox, ty0 - oy
    sl_t = (slice(ty0, ty1), slice(tx0, tx1))
    sl_s = (slice(sy0, sy0 + ty1 - ty0), slice(sx0, sx0 + tx1 - tx0))
    region = target[sl_t][..., :3].astype(np.float32)
    patch = wound.rgb[sl_s].astype(np.float32)
    if color_match > 0 and wound.ring_lab is not None:
        region_lab = _lab(region.astype(np.uint8))
        around = ~wound.mask[sl_s]
        if target_masks is not None and len(target_masks):
            around &= ~np.any(target_masks[(slice(None), *sl_t)], axis=0)
        if around.sum() >= 4:
            shift = float(np.clip(color_match, 0.0, 1.0)) * (region_lab[around].mean(axis=0) - wound.ring_lab)
            lab = _lab(patch.astype(np.uint8)) + shift.astype(np.float32)
            patch = np.clip(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB) * 255.0, 0, 255)
    if _is_gray(target):  # a colour wound in a black-and-white photo would be a give-away
        patch = np.repeat(cv2.cvtColor(patch.astype(np.uint8), cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    a = wound.alpha[sl_s][..., None]
    out = target.copy()
    out[sl_t][..., :3] = np.clip(np.rint(a * patch + (1.0 - a) * region), 0, 255).astype(np.uint8)

    new = np.zeros((h, w), dtype=np.uint8)
    new[sl_t] = wound.mask[sl_s]
    kept: list[int] = []
    masks: list[np.ndarray] = []
    if target_masks is not None:
        for i, m in enumerate(np.asarray(target_masks, dtype=np.uint8)):
            left = m & (1 - new)
            if left.any():
                kept.append(i)
                masks.append(left)
    masks.append(new)
    stack = np.stack(masks).astype(np.uint8)
    return PasteResult(image=out, boxes=tight_boxes(stack), masks=stack, kept=kept,
                       pasted=[{"x": float(x), "y": float(y), "scale": wound.scale, "on_skin": True}])


def absolute_scale(relative: float, source_size: tuple[int, int], target_size: tuple[int, int],
                   wound_size: tuple[int, int]) -> float:
    """The resize factor giving a wound `relative` times its size relative to its photo, fitted inside the target.

    Relative size is the wound's side over the photo's geometric-mean side sqrt(W * H): relative 1 makes the wound
    cover the same share of the target as of the source. The factor is lowered when the box would exceed FIT of the
    target's width or height.
    """
    (sw, sh), (tw, th), (ww, wh) = source_size, target_size, wound_size
    s = float(relative) * np.sqrt(tw * th / float(sw * sh))
    return float(min(s, FIT * tw / max(ww, 1), FIT * th / max(wh, 1)))


def _cut_fitting(src: np.ndarray, src_mask: np.ndarray, scale: float, w: int, h: int) -> Wound:
    """`cut_wound`, 10% smaller each time its box (after pixel rounding) would not fit in a w x h image."""
    wound = cut_wound(src, src_mask, scale)
    while wound.size[0] > w or wound.size[1] > h:
        wound = cut_wound(src, src_mask, wound.scale * 0.9)
    return wound


def paste_wounds(rng: np.random.Generator, target: np.ndarray, target_masks: np.ndarray | None,
                 sources: Sequence[tuple[np.ndarray, np.ndarray]], relative_scales: Sequence[float],
                 color_match: float = 0.0, min_skin: float = MIN_SKIN, shrink: bool = False) -> PasteResult:
    """Paste each (source image, wound mask) in turn at its relative scale, each on skin away from other wounds.

    Args:
        rng: draws the positions.
        target: RGB uint8 photo to paste onto.
        target_masks: (N, H, W) masks of its own wounds, or None.
        sources: (image, mask) of each wound to paste.
        relative_scales: one per source (see `absolute_scale`).
        color_match: passed to `paste`.
        min_skin: passed to `choose_position`.
        shrink: when a wound finds no place on skin, retry at 0.8, 0.64, ... 0.26 of its scale (SHRINK_STEPS; a
            wound bigger than the foot is implausible); the first size that fits on skin is used, else the smallest.

    Returns:
        The PasteResult of the last paste, with `pasted` listing every pasted wound and `kept` the target's survivors.
    """
    if len(sources) != len(relative_scales):
        raise ValueError(f"{len(sources)} sources but {len(relative_scales)} scales")
    h, w = target.shape[:2]
    image = target
    masks = (np.asarray(target_masks, dtype=np.uint8).reshape(-1, h, w) if target_masks is not None
             else np.zeros((0, h, w), np.uint8))
    origin = list(range(len(masks)))  # index of each current mask in the target (-1: pasted)
    skin = skin_mask(target)
    pasted: list[dict[str, float | bool]] = []
    for (src, src_mask), rel in zip(sources, relative_scales):
        x0, y0, x1, y1 = _box_of(np.asarray(src_mask))
        scale = absolute_scale(rel, (src.shape[1], src.shape[0]), (w, h), (x1 - x0, y1 - y0))
        # keep a few pixels between wounds so an earlier one is not occluded where another place is free
        covered = np.asarray(masks.any(axis=0), dtype=np.uint8)
        avoid = cv2.dilate(covered, np.ones((7, 7), np.uint8)).astype(bool) if len(masks) else None
        tries = SHRINK_STEPS if shrink else (1.0,)
        for factor in tries:  # the first size that fits on skin; none: the smallest, where skin is largest
            wound = _cut_fitting(src, src_mask, scale * factor, w, h)
            x, y, on_skin = choose_position(rng, skin, wound.size, avoid, min_skin)
            if on_skin:
                break
        r = paste(image, wound, x, y, masks, color_match)
        image, masks = r.image, r.masks
        origin = [origin[i] for i in r.kept] + [-1]
        pasted.append({"x": float(x), "y": float(y), "scale": wound.scale,
                       "relative_scale": float(rel) * wound.scale / scale,
                       "on_skin": bool(on_skin)})
    kept = [o for o in origin if o >= 0]
    return PasteResult(image=image, boxes=tight_boxes(masks), masks=masks, kept=kept, pasted=pasted)
