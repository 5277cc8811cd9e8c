"""Synthetic demo data: feet with ulcer-like lesions and healthy feet with look-alike distractors, written as COCO.

Why: `make demo`, the tests and new users can run the whole pipeline without the (non-redistributable) real photos.
Each image has its own seeded generators, so the same (n, seed, size) gives byte-identical files, and lesions come
from a stream of their own, so `render_sample(..., draw_lesions=False)` re-renders the very same foot without them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dfudet.data import instance_masks
from dfudet.data.records import SPLITS
from dfudet.errors import ConfigError, DataError
from dfudet.utils import atomic_write_bytes

GENERATOR_VERSION = 2  # 2: annotations carry each lesion's mask (segmentation RLE)
MIN_N = 12  # 6 per class: 2 train / 2 val / 2 test at the least
MIN_SIZE = 64
README_MARKER = "<!-- dfudet synthetic demo data -->"
F32 = np.float32

# Skin tones from light to very dark (RGB 0..1); a foot mixes two neighbours.
SKIN_TONES = np.array([[244, 206, 190], [232, 180, 158], [204, 150, 118], [168, 114, 84], [120, 78, 56],
                       [84, 56, 42]], F32) / 255
# Canonical right foot, length 1, heel at y=0, toes toward y=1, medial side at x<0: (cx, cy, ax, ay).
FOREFOOT, MIDFOOT, HEEL = (0.01, 0.66, 0.19, 0.13), (0.04, 0.40, 0.15, 0.20), (0.0, 0.14, 0.125, 0.14)
TOES = ((-0.105, 0.875, 0.062, 0.095), (-0.02, 0.86, 0.040, 0.078), (0.048, 0.838, 0.036, 0.070),
        (0.108, 0.808, 0.033, 0.062), (0.16, 0.768, 0.030, 0.054))
NAIL_POLISH = np.array([[190, 20, 40], [150, 10, 40], [220, 60, 110], [90, 20, 60], [230, 90, 80]], F32) / 255


@dataclass
class DemoSample:
    """One rendered image (RGB uint8), its lesion boxes (xyxy, pixel edges) and the lesion masks they came from."""

    image: np.ndarray
    boxes: np.ndarray
    masks: list[np.ndarray]
    jpeg_quality: int


# ----------------------------------------------------------------------------------------------- helpers
def _noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise (about N(0,1)) with `cells` bumps across the image: cubic upsampling of a small grid."""
    grid = rng.standard_normal((cells + 1, cells + 1), dtype=F32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def _poly_mask(size: int, pts: np.ndarray) -> np.ndarray:
    """Filled polygon as a uint8 0/1 mask, with 1/16 px vertex precision so tiny lesions keep their shape."""
    m = np.zeros((size, size), np.uint8)
    cv2.fillPoly(m, [np.round(pts * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return m


def _blob(rng: np.random.Generator, c: np.ndarray, r: float, irregular: float = 0.3, n: int = 64) -> np.ndarray:
    """Irregular closed outline: a circle with random low-order radial harmonics, stretched and rotated."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rad = np.ones(n)
    for k in range(2, 7):
        rad += rng.uniform(0, irregular / k**0.8) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    rad = np.clip(rad, 0.35, None)
    aspect, rot = rng.uniform(1.0, 1.8) ** 0.5, rng.uniform(0, np.pi)
    x, y = r * rad * np.cos(t) * aspect, r * rad * np.sin(t) / aspect
    return np.stack([x * np.cos(rot) - y * np.sin(rot) + c[0], x * np.sin(rot) + y * np.cos(rot) + c[1]], 1)


def _ellipse(cx: float, cy: float, ax: float, ay: float, n: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], 1)


def _blend(img: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> None:
    """In place: img = img * (1 - alpha) + colour * alpha (colour: RGB triple or HxWx3 field), only where alpha > 0."""
    x, y, w, h = cv2.boundingRect((alpha > 1e-3).astype(np.uint8))  # most layers cover a small patch
    if w == 0:
        return
    a = alpha[y:y + h, x:x + w, None]
    c = colour[y:y + h, x:x + w] if colour.ndim == 3 else colour
    region = img[y:y + h, x:x + w]
    region *= 1 - a
    region += a * c


def _soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(mask.astype(F32), (0, 0), max(sigma, 0.3))


def _grow(mask: np.ndarray, margin: int) -> np.ndarray:
    """`mask` dilated by `margin` pixels (square kernel)."""
    return cv2.dilate(mask, np.ones((2 * margin + 1,) * 2, np.uint8))


def _pick_point(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray | None:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    i = rng.integers(len(xs))
    return np.array([xs[i], ys[i]], F32)


# ----------------------------------------------------------------------------------------------- scene
def _background(rng: np.random.Generator, s: int) -> np.ndarray:
    """Clinic-like backdrop: paper sheet, drape, towel, tiles or wood, often two of them split by an edge."""
    def one() -> np.ndarray:
        kind = rng.choice(["sheet", "drape", "towel", "tiles", "wood", "dark"])
        base = {"sheet": [0.9, 0.9, 0.9], "drape": [0.25, 0.45, 0.6], "towel": rng.uniform(0.4, 0.95, 3),
                "tiles": rng.uniform(0.55, 0.8) * np.array([1, 0.97, 0.9]), "wood": [0.5, 0.33, 0.2],
                "dark": [0.15, 0.15, 0.17]}[kind]
        img = np.empty((s, s, 3), F32)
        img[:] = np.asarray(base, F32) * rng.uniform(0.85, 1.1, 3).astype(F32)
        img *= (1 + 0.08 * _noise(rng, s, 4))[..., None]
        if kind == "wood":
            streak = cv2.resize(rng.standard_normal((1, 40), dtype=F32), (s, s), interpolation=cv2.INTER_LINEAR)
            img *= (1 + 0.12 * streak)[..., None]
        if kind == "tiles":
            step = int(rng.integers(s // 5, s // 2))
            img[::step, :] *= 0.7
            img[:, ::step] *= 0.7
        if kind in ("sheet", "drape"):  # creases
            img *= (1 + 0.06 * np.abs(_noise(rng, s, 10)) - 0.04)[..., None]
        img *= (1 + (0.05 if kind == "towel" else 0.015) * rng.standard_normal((s, s, 1), dtype=F32))
        return img

    img = one()
    if rng.random() < 0.6:
        other, m = one(), np.zeros((s, s), np.uint8)
        p, q = rng.uniform(0, s, 2), rng.uniform(0, s, 2)
        cv2.fillPoly(m, [np.array([[0, 0], [s, 0], [s, p[1]], [0, q[1]]], np.int32)], 1)
        _blend(img, other, _soft(m, 1.0))
    for _ in range(rng.integers(0, 4)):  # clutter: gauze, glove, tape measure, bottle cap
        kind, c = rng.choice(["gauze", "glove", "tape", "cap"]), rng.uniform(0, s, 2)
        if kind == "tape":
            ang, half = rng.uniform(0, np.pi), rng.uniform(0.04, 0.07) * s
            d, nrm = np.array([np.cos(ang), np.sin(ang)]) * s, np.array([-np.sin(ang), np.cos(ang)]) * half
            m = _poly_mask(s, np.array([c - d - nrm, c + d - nrm, c + d + nrm, c - d + nrm]))
            _blend(img, np.array([0.92, 0.85, 0.3], F32), m.astype(F32))
            for k in np.arange(-1, 1, 0.025):
                p0 = c + d * k - nrm
                p1 = p0 + nrm * 0.8
                cv2.line(img, tuple(p0.astype(np.int32)), tuple(p1.astype(np.int32)), (0.1, 0.1, 0.1), 1)
            continue
        colour = {"gauze": [0.95, 0.95, 0.93], "glove": rng.choice([[0.3, 0.4, 0.85], [0.5, 0.35, 0.75]]),
                  "cap": rng.choice([[0.8, 0.1, 0.1], [0.9, 0.9, 0.9], [0.1, 0.5, 0.2]])}[kind]
        r = s * (0.05 if kind == "cap" else rng.uniform(0.1, 0.25))
        _blend(img, np.asarray(colour, F32), _soft(_poly_mask(s, _blob(rng, c, r, 0.15)), 1.0))
    return img


def _foot(rng: np.random.Generator, s: int, img: np.ndarray) -> np.ndarray:
    """Paint a foot (sole or dorsal view, any pose, whole or close-up) on `img`; return the bare-skin mask."""
    dorsal, mirror = rng.random() < 0.45, -1.0 if rng.random() < 0.5 else 1.0
    jit = rng.uniform(0.9, 1.1, 2)
    shape = lambda e: (e[0] * jit[0], e[1], e[2] * jit[0], e[3] * jit[1] ** 0.5)  # noqa: E731
    body = [_ellipse(*shape(FOREFOOT)), _ellipse(*shape(MIDFOOT))]
    body.append(np.array([[-0.13, -1.5], [0.13, -1.5], [0.16, 0.3], [-0.14, 0.3]]) if dorsal else _ellipse(*HEEL))
    # a toe is an ellipse swept back into the forefoot, so it grows out of the foot instead of floating on it
    toes = [cv2.convexHull(np.vstack([e, e - [0, 0.7 * shape(t)[3]]]).astype(F32))[:, 0]
            for t in TOES for e in [_ellipse(*shape(t))]]
    # pose: whole foot, or a close-up around the heel / forefoot / toes as in most clinical photos
    if rng.random() < 0.4:
        length, focus = rng.uniform(0.75, 1.0) * s, np.array([0.02, 0.5])
    else:
        length = rng.uniform(1.1, 1.8) * s
        focus = np.array([0.0, rng.choice([0.15, 0.45, 0.7, 0.85])]) + rng.normal(0, 0.04, 2)
    ang = rng.uniform(-0.7, 0.7) + (np.pi if rng.random() < 0.25 else 0.0)
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    a = length * rot @ np.diag([mirror, -1.0])  # toes point up before rotation
    t = s / 2 + rng.normal(0, 0.08 * s, 2) - a @ focus
    to_img = lambda p: p @ a.T + t  # noqa: E731

    body_mask = _poly_mask(s, cv2.convexHull(to_img(np.vstack(body)).astype(F32))[:, 0])
    parts = [body_mask] + [_poly_mask(s, to_img(p)) for p in toes]
    foot = np.clip(sum(parts), 0, 1).astype(np.uint8)
    # broad roundness of the whole foot times thin creases where each toe meets the foot or its neighbour
    broad = np.sqrt(np.clip(cv2.distanceTransform(foot, cv2.DIST_L2, 3) / (0.12 * length), 0, 1))
    crease = np.zeros((s, s), F32)
    for m in parts:
        crease = np.maximum(crease, np.clip(cv2.distanceTransform(m, cv2.DIST_L2, 3) / (0.02 * length), 0, 1))
    height = (0.62 + 0.38 * broad) * (0.7 + 0.3 * np.sqrt(crease))

    tone = rng.uniform(0, len(SKIN_TONES) - 1)
    i = int(tone)
    colour = SKIN_TONES[i] + (SKIN_TONES[min(i + 1, len(SKIN_TONES) - 1)] - SKIN_TONES[i]) * (tone - i)
    if not dorsal:  # soles are paler and yellower than the back of the foot, most of all on dark skin
        colour = colour + (np.array([0.86, 0.7, 0.58], F32) - colour) * rng.uniform(0.3, 0.6)
    colour = np.asarray(colour * rng.uniform(0.94, 1.06, 3), F32)
    skin = np.empty((s, s, 3), F32)
    skin[:] = colour
    skin *= height[..., None] * (1 + 0.07 * _noise(rng, s, 6))[..., None]
    skin[..., 0] *= 1 + 0.05 * _noise(rng, s, 8)  # mottled redness
    skin *= 1 + 0.025 * rng.standard_normal((s, s, 1), dtype=F32)
    for _ in range(rng.integers(3, 9) if not dorsal else 0):  # sole creases
        c = to_img(np.array([rng.uniform(-0.1, 0.1), rng.uniform(0.1, 0.75)]))
        p = _blob(rng, c, rng.uniform(0.05, 0.15) * length, 0.1, 24)[: rng.integers(5, 12)]
        cv2.polylines(skin, [p.astype(np.int32)], False, tuple(float(v) * 0.82 for v in colour), 1, cv2.LINE_AA)
    shift = np.array([[1, 0, rng.normal(0, 0.02 * length)], [0, 1, rng.normal(0, 0.02 * length)]], F32)
    shadow = cv2.warpAffine(_soft(foot, 0.03 * length), shift, (s, s))
    img *= (1 - rng.uniform(0.3, 0.6) * shadow)[..., None]  # the foot's soft shadow on the sheet
    _blend(img, skin, _soft(foot, 0.7))

    skin_mask = foot.copy()
    if dorsal:
        polish = NAIL_POLISH[rng.integers(len(NAIL_POLISH))] if rng.random() < 0.3 else None
        for (cx, cy, ax, ay) in (shape(t) for t in TOES):
            nm = _poly_mask(s, to_img(_ellipse(cx, cy + 0.42 * ay, 0.62 * ax, 0.4 * ay, 24)))
            skin_mask[nm > 0] = 0
            nail_col = polish if polish is not None else np.clip(colour * 0.6 + np.array([0.4, 0.36, 0.3]), 0, 1)
            if polish is None and rng.random() < 0.2:
                nail_col = np.array([0.8, 0.7, 0.35], F32)  # thick yellow fungal nail
            _blend(img, np.asarray(nail_col, F32), _soft(nm, 0.6) * 0.9)
    return skin_mask


# ----------------------------------------------------------------------------------------------- distractors
def _distractors(rng: np.random.Generator, s: int, img: np.ndarray, skin: np.ndarray, k: int) -> None:
    """Paint `k` ulcer look-alikes on the skin: callus, bruise, redness, scar, moles, cracks, dry skin, dark patch."""
    kinds = ["callus", "callus", "bruise", "redness", "redness", "scar", "moles", "cracks", "dry", "dark"]
    inner = cv2.erode(skin, np.ones((5, 5), np.uint8))
    for kind in rng.choice(kinds, size=k):
        c = _pick_point(rng, inner)
        if c is None:
            return
        r = s * np.exp(rng.uniform(np.log(0.03), np.log(0.14)))
        blob = _poly_mask(s, _blob(rng, c, r, 0.35)) * skin
        if kind == "callus":  # thick, yellowish, rough
            a = _soft(blob, r * 0.25) * rng.uniform(0.5, 0.85)
            col = np.array([0.86, 0.78, 0.55], F32) * (1 + 0.08 * rng.standard_normal((s, s, 1), dtype=F32))
            _blend(img, col, a)
        elif kind == "bruise":
            _blend(img, np.array([0.42, 0.22, 0.42], F32), _soft(blob, r * 0.4) * rng.uniform(0.3, 0.6))
            ring = _soft(cv2.dilate(blob, np.ones((5, 5), np.uint8)) - blob, r * 0.3)
            _blend(img, np.array([0.65, 0.65, 0.3], F32), ring * 0.3)
        elif kind == "redness":  # erythema: red but flat, no crater, no layers
            _blend(img, np.array([0.78, 0.25, 0.25], F32), _soft(blob, r * 0.35) * rng.uniform(0.3, 0.65))
        elif kind == "scar":  # healed ulcer: shiny pink-white, smooth
            _blend(img, np.array([0.9, 0.68, 0.66], F32), _soft(blob, r * 0.15) * rng.uniform(0.4, 0.7))
        elif kind == "moles":
            m = np.zeros((s, s), np.uint8)
            for _ in range(rng.integers(3, 15)):
                p = _pick_point(rng, inner)
                assert p is not None  # `inner` has a point: `c` was picked from it
                cv2.circle(m, (int(p[0]), int(p[1])), int(max(1, rng.uniform(0.003, 0.012) * s)), 1, -1)
            _blend(img, np.array([0.3, 0.18, 0.12], F32), _soft(m, 0.6) * rng.uniform(0.5, 0.9))
        elif kind == "cracks":  # dry fissures, often on the heel
            m = np.zeros((s, s), np.uint8)
            for _ in range(rng.integers(1, 5)):
                steps = np.cumsum(rng.normal(0, 1, (12, 2)) * r * 0.2 + rng.normal(0, r * 0.1, 2), 0)
                cv2.polylines(m, [(c + steps).astype(np.int32)], False, 1, 1)
            _blend(img, np.array([0.35, 0.15, 0.12], F32), _soft(m * skin, 0.5) * 0.8)
        elif kind == "dry":  # scaly white flakes
            flakes = (rng.random((s, s)) < 0.25).astype(F32) * _soft(blob, r * 0.3)
            _blend(img, np.array([0.92, 0.9, 0.86], F32), _soft(flakes, 0.7) * 0.8)
        else:  # hyperpigmented patch
            _blend(img, np.array([0.3, 0.2, 0.15], F32), _soft(blob, r * 0.3) * rng.uniform(0.3, 0.6))


# ----------------------------------------------------------------------------------------------- lesions
def _lesion_size(rng: np.random.Generator, s: int) -> float:
    """Diameter in pixels: a third tiny (2.5-5% of the side, like the many small real ulcers), else 5-30%."""
    if rng.random() < 0.33:
        return max(5.0, s * rng.uniform(0.025, 0.05))
    return max(5.0, s * np.exp(rng.uniform(np.log(0.05), np.log(0.30))))


def _lesions(rng: np.random.Generator, s: int, img: np.ndarray, skin: np.ndarray) -> list[np.ndarray]:
    """Paint 1-3 non-overlapping ulcers on the skin and return their masks (the box of each mask is its label)."""
    want = int(rng.choice([1, 1, 1, 2, 2, 3]))
    masks: list[np.ndarray] = []
    taken = np.zeros((s, s), np.uint8)
    for attempt in range(40 * want):
        if len(masks) == want:
            break
        d = _lesion_size(rng, s) if len(masks) or attempt < 20 * want else max(5.0, s * rng.uniform(0.025, 0.04))
        margin = int(0.2 * d + 3)
        c = _pick_point(rng, cv2.erode(skin, np.ones((3, 3), np.uint8)) & (taken == 0))
        if c is None:
            break
        full = _poly_mask(s, _blob(rng, c, d / 2, rng.uniform(0.15, 0.5)))
        mask = full & skin
        area = int(mask.sum())
        if (area < max(12, 0.75 * full.sum())
                or (_grow(mask, margin) & taken).any()):
            continue
        _paint_ulcer(rng, s, img, mask, skin, d)
        taken |= _grow(mask, margin)
        masks.append(mask.astype(bool))
    if not masks:
        raise RuntimeError("demo generator found no room for a lesion on the foot")  # a bug, not a user error
    return masks


def _paint_ulcer(rng: np.random.Generator, s: int, img: np.ndarray, mask: np.ndarray, skin: np.ndarray,
                 d: float) -> None:
    """Layered wound: callus/maceration halo outside, then granulation, slough, necrosis, crater shading, rim, shine."""
    r = d / 2
    halo_w = max(1, int(rng.uniform(0.1, 0.2) * d + 1))
    halo = cv2.dilate(mask, np.ones((2 * halo_w + 1,) * 2, np.uint8)) & skin & (1 - mask)
    roll = rng.random()
    if roll < 0.55:  # callus ring around a plantar ulcer
        _blend(img, np.array([0.88, 0.8, 0.6], F32), _soft(halo, halo_w * 0.4) * rng.uniform(0.4, 0.8) * (1 - mask))
    elif roll < 0.8:  # white-pink macerated skin
        _blend(img, np.array([0.93, 0.84, 0.82], F32), _soft(halo, halo_w * 0.4) * rng.uniform(0.4, 0.8) * (1 - mask))
    if rng.random() < 0.35:  # inflamed surroundings
        _blend(img, np.array([0.75, 0.3, 0.3], F32), _soft(halo, halo_w * 0.5) * 0.3 * (1 - mask))

    kind = rng.choice(["granulating", "sloughy", "necrotic", "shallow", "punched"], p=[0.32, 0.25, 0.13, 0.18, 0.12])
    if d < 0.05 * s and kind in ("sloughy", "necrotic", "shallow"):
        kind = "punched"  # a tiny wound must still be visible: small, dark red, sharply cut
    base = {"granulating": [0.74, 0.16, 0.18], "sloughy": [0.72, 0.2, 0.2], "necrotic": [0.5, 0.12, 0.1],
            "shallow": [0.85, 0.45, 0.42], "punched": [0.55, 0.08, 0.1]}[kind]
    bed = np.empty((s, s, 3), F32)
    bed[:] = np.asarray(base, F32) * rng.uniform(0.85, 1.12, 3).astype(F32)
    cells = max(2, int(s / max(r, 4) * 1.5))  # patch scale follows the wound size
    if kind == "sloughy":
        slough = _soft((_noise(rng, s, cells) > rng.uniform(-0.6, 0.5)).astype(np.uint8), 1.0)
        _blend(bed, np.array([0.85, 0.76, 0.45], F32), slough)
    if kind == "necrotic":
        eschar = _soft((_noise(rng, s, cells) > rng.uniform(-1.2, 0.0)).astype(np.uint8), 1.0)
        _blend(bed, np.array([0.12, 0.08, 0.07], F32), eschar)
    bed *= (1 + 0.1 * _noise(rng, s, cells * 2))[..., None]  # beefy and paler zones
    grain = cv2.GaussianBlur(rng.standard_normal((s, s), dtype=F32), (0, 0), max(0.6, 0.003 * s))
    bed *= (1 + rng.uniform(0.2, 0.5) * grain / (grain.std() + 1e-6) * 0.5)[..., None]  # granulation buds
    depth = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    bed *= (0.7 + 0.3 * np.clip(depth / max(0.35 * r, 1.0), 0, 1))[..., None]  # crater: darker under the edge
    if rng.random() < 0.5 and d > 0.05 * s:  # pale epithelial rim just inside the edge
        rim = ((depth > 0) & (depth <= max(1.0, 0.06 * d))).astype(F32)
        _blend(bed, np.array([0.92, 0.72, 0.72], F32), rim * 0.7)
    if rng.random() < 0.6:  # wet shine
        for _ in range(rng.integers(1, 4)):
            p = _pick_point(rng, mask)
            assert p is not None  # the lesion mask is never empty
            cv2.circle(bed, (int(p[0]), int(p[1])), max(1, int(0.04 * d)), (1.0, 1.0, 1.0), -1)
    alpha = _soft(mask, 0.6) * mask * (rng.uniform(0.55, 0.8) if kind == "shallow" else 1.0)
    _blend(img, bed, alpha)


# ----------------------------------------------------------------------------------------------- one image
def render_sample(seed: int, index: int, size: int, healthy: bool, draw_lesions: bool = True) -> DemoSample:
    """Render image `index` of one class; with draw_lesions=False the identical scene without its ulcers (tests)."""
    scene, lesion_rng, post = (np.random.default_rng([seed, int(healthy), index, k]) for k in range(3))
    s = size
    img = _background(scene, s)
    skin = _foot(scene, s, img)
    bars = int(scene.uniform(0.08, 0.2) * s) if scene.random() < 0.15 else 0  # letterboxed photos, as in FUSeg
    if bars:
        skin[:, :bars] = 0
        skin[:, s - bars:] = 0
    _distractors(scene, s, img, skin, int(scene.integers(2, 6) if healthy else scene.integers(1, 4)))
    masks = _lesions(lesion_rng, s, img, skin) if not healthy and draw_lesions else []
    return _finish(post, img, masks, bars)


def _finish(rng: np.random.Generator, img: np.ndarray, masks: list[np.ndarray], bars: int) -> DemoSample:
    """Camera effects shared by the with/without-lesion renders: light, shadow, white balance, blur, noise, bars."""
    s = img.shape[0]
    yy, xx = np.mgrid[0:s, 0:s].astype(F32) / s - 0.5
    ang = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0.05, 0.25) * (xx * np.cos(ang) + yy * np.sin(ang)) * 2
    light *= 1 - rng.uniform(0, 0.35) * (xx**2 + yy**2)  # vignetting
    if rng.random() < 0.4:  # a hand's or phone's shadow over part of the frame
        m = _poly_mask(s, _blob(rng, rng.uniform(0, s, 2), rng.uniform(0.2, 0.5) * s, 0.3))
        light *= 1 - rng.uniform(0.2, 0.45) * _soft(m, rng.uniform(0.02, 0.08) * s)
    img *= light[..., None]
    img *= rng.uniform(0.93, 1.07, 3).astype(F32)  # white balance
    sigma = rng.choice([0.0, rng.uniform(0.4, 1.1)], p=[0.4, 0.6])
    if sigma > 0:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    img += rng.standard_normal(img.shape, dtype=F32) * rng.uniform(0.004, 0.02)
    if bars:
        img[:, :bars] = 0
        img[:, s - bars:] = 0
    out = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    boxes = np.zeros((0, 4), F32)
    if masks:
        boxes = np.array([_mask_box(m) for m in masks], F32)
    return DemoSample(image=out, boxes=boxes, masks=masks, jpeg_quality=int(rng.integers(86, 95)))


def _mask_box(mask: np.ndarray) -> list[float]:
    """Tight xyxy box of a mask in pixel-edge coordinates (a 1-pixel mask gives a 1x1 box)."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


# ----------------------------------------------------------------------------------------------- data set
def split_counts(k: int) -> dict[str, int]:
    """About 70/15/15 of `k` images, with at least 2 in every split."""
    val = test = max(2, round(0.15 * k))
    return {"train": k - val - test, "val": val, "test": test}


def _assign_splits(rng: np.random.Generator, k: int) -> list[str]:
    counts = split_counts(k)
    labels = [name for name in SPLITS for _ in range(counts[name])]
    return [labels[i] for i in rng.permutation(k)]


def _clear_previous(out: Path) -> None:
    """Remove the files an earlier demo run wrote there; refuse to mix demo files into someone else's folder."""
    ours = [*out.glob("images/*/demo_*.jpg"), *out.glob("healthy/*/healthy_*.jpg"),
            *(out / "annotations" / f"{sp}.json" for sp in SPLITS if (out / "annotations" / f"{sp}.json").exists())]
    if not ours:
        return
    readme = out / "README.md"
    if not (readme.is_file() and README_MARKER in readme.read_text(encoding="utf-8", errors="replace")):
        raise DataError(f"{out}: already holds demo-like files ({ours[0]}) but no demo README.md; "
                        "pass an empty or new --out folder")
    for f in ours:
        f.unlink()


def generate_demo(out: Path, n: int = 300, seed: int = 0, size: int = 320) -> dict:
    """Write the synthetic demo set (COCO ulcer images + healthy folders + README) and return a summary for the CLI."""
    if n < MIN_N:
        raise ConfigError(f"demo: --n {n} is too small; use at least {MIN_N} so every split gets 2 ulcer "
                          "and 2 healthy images")
    if size < MIN_SIZE:
        raise ConfigError(f"demo: --size {size} is too small; use at least {MIN_SIZE} pixels")
    start = time.perf_counter()
    out = Path(out)
    _clear_previous(out)
    n_ulcer, n_healthy = (n + 1) // 2, n // 2
    split_rng = np.random.default_rng([seed, 7])
    ulcer_split, healthy_split = _assign_splits(split_rng, n_ulcer), _assign_splits(split_rng, n_healthy)
    coco: dict[str, dict[str, Any]] = {
        sp: {"info": {"description": "dfudet synthetic demo (not real patients)", "version": GENERATOR_VERSION,
                      "seed": seed, "size": size},
             "images": [], "annotations": [], "categories": [{"id": 1, "name": "ulcer", "supercategory": "wound"}]}
        for sp in SPLITS}
    counts = {sp: {"ulcer": 0, "healthy": 0, "boxes": 0} for sp in SPLITS}
    ann_id = 0
    for healthy, k, splits in ((False, n_ulcer, ulcer_split), (True, n_healthy, healthy_split)):
        for i in range(k):
            sp, num = splits[i], i + 1
            sample = render_sample(seed, num, size, healthy)
            rel = f"{sp}/{'healthy' if healthy else 'demo'}_{num:05d}.jpg"
            path = out / ("healthy" if healthy else "images") / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, sample.jpeg_quality])
            assert ok
            path.write_bytes(buf.tobytes())
            counts[sp]["healthy" if healthy else "ulcer"] += 1
            if healthy:
                continue
            coco[sp]["images"].append({"id": num, "file_name": rel, "width": size, "height": size})
            for box, mask in zip(sample.boxes.tolist(), sample.masks):
                ann_id += 1
                w, h = box[2] - box[0], box[3] - box[1]
                coco[sp]["annotations"].append({"id": ann_id, "image_id": num, "category_id": 1,
                                                "bbox": [box[0], box[1], w, h], "area": w * h,
                                                "mask_area": int(mask.sum()),
                                                "segmentation": instance_masks.encode(mask), "iscrowd": 0})
                counts[sp]["boxes"] += 1
    for sp in SPLITS:
        coco[sp]["images"].sort(key=lambda im: im["id"])
        atomic_write_bytes(out / "annotations" / f"{sp}.json", json.dumps(coco[sp], indent=1).encode("utf-8"))
    _write_readme(out, n, seed, size, counts)
    summary: dict = {"ulcer_images": n_ulcer, "healthy_images": n_healthy,
                     "boxes": sum(c["boxes"] for c in counts.values())}
    for sp in SPLITS:
        c = counts[sp]
        summary[sp] = f"{c['ulcer']} ulcer ({c['boxes']} boxes) + {c['healthy']} healthy"
    summary["seconds"] = round(time.perf_counter() - start, 2)
    return summary


def _write_readme(out: Path, n: int, seed: int, size: int, counts: dict[str, dict[str, int]]) -> None:
    rows = "\n".join(f"| {sp} | {c['ulcer']} | {c['boxes']} | {c['healthy']} |" for sp, c in counts.items())
    text = f"""{README_MARKER}
# dfudet synthetic demo data

Generated by `dfudet data demo --n {n} --seed {seed} --size {size}` (generator version {GENERATOR_VERSION}).
The same command gives byte-identical files. These are drawings, not photos of patients: feet (sole or back,
light to dark skin, whole or close-up) on clinic-like backgrounds. Ulcer images carry 1-3 layered lesions
(granulation, slough, necrosis, callus or macerated rim), from tiny to large; every image, ulcer or healthy, also
carries look-alikes (calluses, bruises, redness, scars, moles, cracks, dry skin, nail polish, shadows), so colour
alone does not find the ulcers. Use it to try the pipeline, never to judge a model meant for real wounds.

| split | ulcer images | boxes | healthy images |
|---|---|---|---|
{rows}

- `images/<split>/demo_XXXXX.jpg` with `annotations/<split>.json` (COCO, category 1 "ulcer", bbox = tight box
  of the drawn lesion, `segmentation` = its mask as COCO RLE, `mask_area` = its pixel count, known exactly)
- `healthy/<split>/healthy_XXXXX.jpg`: no ulcer (hard negatives)
"""
    atomic_write_bytes(out / "README.md", text.encode("utf-8"))
