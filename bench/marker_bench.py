"""Render bench for the calibration card: how well does the card turn a wound outline into mm²?

Each case lays a real FUSeg photo and the dfudet card on ONE plane (the photo at a chosen true scale, 0.1-0.4 mm
per pixel; the card beside the wound, 45-90 mm from its centre, never over it), and photographs that plane with a
simulated pinhole camera (focal length = the image width, 1280 x 960 px; tilt of the line of sight from the plane's
normal 0-70 degrees, any azimuth, any roll; distance set for a target card size in pixels), then varies lighting
(a gain ramp, colour cast, gamma), blur, noise and JPEG quality; in 10% of cases a skin-coloured band hides a third of
the card. The camera's homography is applied to the photo AND to its wound mask, so every mm² is known:

- truth: the wound mask's pixels x (true mm per px)²;
- card error: the warped mask measured with the DETECTED card (dfudet.marker.scale.mask_area_mm2) against the same
  warped mask measured with the TRUE homography (what the card is responsible for);
- scale error: the warped mask measured with the detected card against the truth (card error + the rasterisation of
  the warped mask, which a perfect card cannot remove).

The refusal thresholds (min card size in px, max tilt, max reprojection RMS, min markers) are chosen on the cases of
half of the photos (the "select" half) as the most permissive set whose ACCEPTED cases meet the target (scale
error: median <= 2%, p90 <= 5%, none over 10%), and checked on the other half. `--checkpoint` adds the end-to-end
error (the model's outline of the rendered photo, measured with the card, against the truth) next to the model's own
area error on the unrendered photos.

Run: PYTHONPATH=src python bench/marker_bench.py [--photos 24] [--seed 0] [--checkpoint MODEL.pth]
Writes bench/results/marker_bench.json and docs/img/marker_bench.png.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from dfudet.marker import card as card_mod
from dfudet.marker.detect import DEFAULT_THRESHOLDS, Thresholds, find_card
from dfudet.marker.scale import mask_area_mm2
from dfudet.marker.view import pinhole_homography

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "fuseg"
W, H = 1280, 960
FOCAL = float(W)
TILTS = (0, 10, 20, 30, 40, 50, 60, 70)
CARD_PX = (70, 100, 140, 200, 280, 400)
TARGET = {"median": 0.02, "p90": 0.05, "max": 0.10}
PERMISSIVE = Thresholds(min_card_px=0.0, max_tilt_deg=90.0, max_reprojection_px=1e9, min_markers=1)
MIN_WOUND_PX = 300  # wounds smaller than this in the 512 px photo are left out of the sample (stated in the docs)


def _card_image(px_per_mm: float) -> np.ndarray:
    """The card rendered at `px_per_mm` (from the 600 dpi master, area-averaged)."""
    return card_mod.render_card(dpi=max(1, int(round(px_per_mm * 25.4))))


def camera(o: np.ndarray, tilt: float, azimuth: float, roll: float, dist: float) -> np.ndarray:
    """Homography plane mm (z=0) -> image px of a pinhole camera at `dist` mm from point `o`, looking at it."""
    return pinhole_homography((float(o[0]), float(o[1])), tilt, azimuth, roll, dist, FOCAL, (W, H))


def _proj(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return cv2.perspectiveTransform(np.asarray(pts, np.float64).reshape(-1, 1, 2), m).reshape(-1, 2)


def render_case(photo: np.ndarray, mask: np.ndarray, rng: np.random.Generator, tilt: float, card_px: float
                ) -> dict[str, Any] | None:
    """One rendered view: the image, the warped mask, the true card homography and the truth; None if the scene
    does not fit in the frame."""
    s = float(rng.uniform(0.1, 0.4))  # true mm per photo pixel
    ys, xs = np.nonzero(mask)
    wound_c = np.array([(xs.mean() + 0.5) * s, (ys.mean() + 0.5) * s])
    wound_box = np.array([[xs.min(), ys.min()], [xs.max() + 1, ys.min()], [xs.max() + 1, ys.max() + 1],
                          [xs.min(), ys.max() + 1]], np.float64) * s
    cw, ch = card_mod.CARD_MM
    card_rect = np.array([[0, 0], [cw, 0], [cw, ch], [0, ch]], np.float64)
    for _ in range(20):  # the card beside the wound, never over its box
        ang, psi = rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi)
        centre = wound_c + rng.uniform(45, 90) * np.array([np.cos(ang), np.sin(ang)])
        rot = np.array([[np.cos(psi), -np.sin(psi)], [np.sin(psi), np.cos(psi)]])
        place = np.eye(3)
        place[:2, :2] = rot
        place[:2, 2] = centre - rot @ np.array([cw / 2, ch / 2])
        quad = _proj(place, card_rect)
        if not _overlap(quad, wound_box):
            break
    else:
        return None
    o = (wound_c + centre) / 2
    dist = FOCAL * card_mod.CARD_MM[0] / card_px
    cam = camera(o, tilt, rng.uniform(0, 360), rng.uniform(0, 360), dist)
    seen = np.r_[_proj(cam, wound_box), _proj(cam @ place, card_rect)]
    if seen.min() < 4 or seen[:, 0].max() > W - 5 or seen[:, 1].max() > H - 5:
        return None
    photo_to_plane = np.array([[s, 0, 0.5 * s], [0, s, 0.5 * s], [0, 0, 1.0]])
    m_photo = cam @ photo_to_plane
    bg = tuple(float(v) for v in np.median(photo[mask == 0], axis=0))
    img = cv2.warpPerspective(photo, m_photo, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=bg).astype(np.float32)
    warped = cv2.warpPerspective(mask.astype(np.float32), m_photo, (W, H), flags=cv2.INTER_LINEAR) > 0.5
    # the card, rendered at about twice the resolution it is seen at, then warped onto the image
    jac = np.sqrt(abs(np.linalg.det(cam[:2, :2] - np.outer(cam[:2, 2], cam[2, :2]))))
    r = float(np.clip(2.5 * max(jac, card_px / card_mod.CARD_MM[0]), 4, 24))
    cimg = _card_image(r)
    r_eff = cimg.shape[1] / card_mod.CARD_MM[0]
    card_to_img = np.array([[1 / r_eff, 0, 0.5 / r_eff], [0, 1 / r_eff, 0.5 / r_eff], [0, 0, 1.0]])
    m_card = cam @ place @ card_to_img
    cw_img = cv2.warpPerspective(cimg.astype(np.float32), m_card, (W, H), flags=cv2.INTER_LINEAR)
    alpha = cv2.warpPerspective(np.ones(cimg.shape, np.float32), m_card, (W, H), flags=cv2.INTER_LINEAR)
    img = img * (1 - alpha[..., None]) + (cw_img * alpha)[..., None]
    occluded = bool(rng.random() < 0.1)
    if occluded:  # a skin-coloured band over a third of the card (a finger, a dressing)
        x0 = rng.choice([0.0, cw / 3, 2 * cw / 3])
        band = _proj(cam @ place, np.array([[x0, -2], [x0 + cw / 3, -2], [x0 + cw / 3, ch + 2], [x0, ch + 2]]))
        cv2.fillPoly(img, [np.round(band * 16).astype(np.int32)], bg, lineType=cv2.LINE_AA, shift=4)
    # lighting: a gain ramp, a colour cast, gamma; then blur, noise, JPEG (cv2 on uint8 where it can: the bench's
    # time goes here)
    ramp = (rng.uniform(0.7, 1.1) + rng.uniform(-0.3, 0.3) * np.arange(W, dtype=np.float32)[None, :] / W
            + rng.uniform(-0.3, 0.3) * np.arange(H, dtype=np.float32)[:, None] / H)
    img *= ramp[..., None] * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    out = np.clip(img, 0, 255).astype(np.uint8)
    gamma = rng.uniform(0.8, 1.25)
    out = cv2.LUT(out, (255.0 * (np.arange(256) / 255.0) ** gamma).round().astype(np.uint8))
    blur = float(rng.choice([0.0, 0.6, 1.2, 1.8]))
    if blur:
        out = cv2.GaussianBlur(out, (0, 0), blur)
    noise = np.zeros(out.shape, np.int16)
    cv2.randn(noise, 0, 2)
    img = cv2.add(out, noise, dtype=cv2.CV_8U)
    quality = int(rng.choice([95, 85, 70, 50]))
    _, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    return {"image": np.ascontiguousarray(img), "mask": warped, "card_h": cam @ place, "true_mm_per_px": s,
            "truth_mm2": float(mask.sum()) * s * s, "tilt": tilt, "card_px_target": card_px, "blur": blur,
            "jpeg": quality, "occluded": occluded}


def _overlap(quad: np.ndarray, box: np.ndarray) -> bool:
    """Do two convex quadrilaterals (mm) intersect? (cv2.intersectConvexConvex)"""
    area, _ = cv2.intersectConvexConvex(quad.astype(np.float32), box.astype(np.float32))
    return area > 0


def load_sample(n: int, seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """n FUSeg val+test photos with a wound of at least MIN_WOUND_PX pixels (seeded choice), with their masks."""
    items = []
    for split in ("val", "test"):
        for p in sorted((DATA / "images" / split).glob("*.jpg")):
            items.append((split, p))
    rng = np.random.default_rng(seed)
    rng.shuffle(items)
    out = []
    for split, p in items:
        m = np.asarray(Image.open(DATA / "masks" / split / (p.stem + ".png")).convert("L")) > 127
        if m.sum() >= MIN_WOUND_PX:
            out.append((f"{split}/{p.name}", np.asarray(Image.open(p).convert("RGB")), m))
        if len(out) == n:
            break
    return out


def _stats(err: np.ndarray) -> dict[str, Any]:
    a = np.abs(err)
    if not len(a):
        return {"n": 0}
    return {"n": int(len(a)), "median": float(np.median(a)), "p90": float(np.percentile(a, 90)),
            "max": float(a.max()), "over_10pct": int((a > 0.10).sum())}


def meets(err: np.ndarray) -> bool:
    """The issue's target on the accepted cases."""
    a = np.abs(err)
    return bool(len(a) and np.median(a) <= TARGET["median"] and np.percentile(a, 90) <= TARGET["p90"]) and \
        bool(a.max() <= TARGET["max"])


def accepted(rows: list[dict[str, Any]], t: Thresholds) -> np.ndarray:
    """Which cases the detector accepts under thresholds `t` (from the raw qualities of a permissive run)."""
    return np.array([r["found"] and r["markers"] >= t.min_markers and r["card_px"] >= t.min_card_px
                     and r["tilt_est"] <= t.max_tilt_deg and r["rms"] <= t.max_reprojection_px for r in rows], bool)


def refusal_code(r: dict[str, Any], t: Thresholds) -> str | None:
    """The code the detector would give under `t` (the same order as dfudet.marker.detect.find_card)."""
    if not r["found"]:
        return r["code"] or "no_card"
    if r["markers"] < t.min_markers:
        return "partly_hidden"
    if r["card_px"] < t.min_card_px:
        return "too_small"
    if r["tilt_est"] > t.max_tilt_deg:
        return "too_tilted"
    if r["rms"] > t.max_reprojection_px:
        return "bad_fit"
    return None


def meets_by_tilt(rows: list[dict[str, Any]], acc: np.ndarray, err: np.ndarray) -> bool:
    """p90 and max within the target at every true tilt (with 5 or more accepted cases), not only overall."""
    tilts = np.array([r["tilt"] for r in rows])
    for tilt in TILTS:
        a = np.abs(err[acc & (tilts == tilt)])
        if len(a) >= 5 and (np.percentile(a, 90) > TARGET["p90"] or a.max() > TARGET["max"]):
            return False
    return True


def choose(rows: list[dict[str, Any]]) -> Thresholds:
    """The most permissive thresholds (most accepted cases) whose accepted scale errors meet the target, overall and
    at every tilt."""
    err = np.array([r["scale_err"] if r["found"] else np.nan for r in rows])
    best, best_n = None, -1
    for px, tilt, rms, mk in itertools.product((60, 80, 100, 120, 140, 160, 180, 200, 240, 280, 340),
                                               (30, 35, 40, 45, 50, 55, 60, 65, 70),
                                               (0.5, 0.75, 1.0, 1.5, 2.0, 3.0), (4, 5, 6, 7, 8, 9)):
        t = Thresholds(min_card_px=px, max_tilt_deg=tilt, max_reprojection_px=rms, min_markers=mk)
        acc = accepted(rows, t)
        if acc.sum() > best_n and meets(err[acc]) and meets_by_tilt(rows, acc, err):
            best, best_n = t, int(acc.sum())
    if best is None:
        raise SystemExit("no thresholds meet the target on the select half")
    return best


def table(rows: list[dict[str, Any]], t: Thresholds, key: str) -> list[dict[str, Any]]:
    """Per (tilt, card size target) cell: cases, accepted, median/p90 |error| of the accepted and of all found."""
    out = []
    acc = accepted(rows, t)
    for tilt, px in itertools.product(TILTS, CARD_PX):
        idx = [i for i, r in enumerate(rows) if r["tilt"] == tilt and r["card_px_target"] == px]
        found = [i for i in idx if rows[i]["found"]]
        out.append({"tilt": tilt, "card_px": px, "cases": len(idx), "found": len(found),
                    "accepted": int(sum(acc[i] for i in idx)),
                    "all_found": _stats(np.array([rows[i][key] for i in found])),
                    "accepted_err": _stats(np.array([rows[i][key] for i in idx if acc[i]]))})
    return out


def plot(rows: list[dict[str, Any]], t: Thresholds, path: Path) -> None:
    """|scale error| against the card's size in pixels, one colour per tilt; cases refused by `t` hollow."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    acc = accepted(rows, t)
    import matplotlib.cm as cm

    colours = cm.viridis(np.linspace(0, 1, len(TILTS)))
    for tilt, c in zip(TILTS, colours):
        for a, style in ((True, "filled"), (False, "none")):
            sel = [i for i, r in enumerate(rows) if r["found"] and r["tilt"] == tilt and acc[i] == a]
            x = [rows[i]["card_px"] for i in sel]
            y = [min(3.0, max(1e-4, abs(rows[i]["scale_err"]))) * 100 for i in sel]  # clipped at 300%
            ax.scatter(x, y, s=9, facecolors=c if style == "filled" else "none", edgecolors=c, linewidths=0.6,
                       label=f"{tilt}°" if a else None)
    ax.axhline(10, color="red", lw=0.8, ls="--")
    ax.axhline(5, color="orange", lw=0.8, ls="--")
    ax.axhline(2, color="green", lw=0.8, ls="--")
    ax.axvline(t.min_card_px, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("card's long side in the photo (px, measured)")
    ax.set_ylabel("|scale error| (%, clipped at 300)")
    ax.set_title(f"wound area measured with the card (filled: accepted; hollow: refused; {len(rows)} cases)",
                 fontsize=9)
    ax.legend(title="true tilt", fontsize=7, title_fontsize=7, ncol=2, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _union(kept: Any) -> np.ndarray:
    from dfudet.data import instance_masks

    union = np.zeros((kept.height, kept.width), bool)
    for rle in kept.masks or ():
        union |= instance_masks.decode(rle)
    return union


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=24, help="FUSeg val+test photos in the sample")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", help="an outline model: adds the end-to-end error (slow: one model pass a case)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "marker_bench.json"))
    ap.add_argument("--plot", default=str(ROOT / "docs" / "img" / "marker_bench.png"))
    ap.add_argument("--reanalyse", metavar="JSON",
                    help="choose the thresholds and write the report again from the cases of an earlier run's JSON "
                         "(no rendering)")
    a = ap.parse_args(argv)
    if a.reanalyse:
        old = json.loads(Path(a.reanalyse).read_text())
        return report(old["cases_raw"], old["sample"], a, old["cpu_seconds"], old["wall_seconds"], {},
                      old.get("command", ""))
    if not DATA.exists():
        print(f"{DATA} not found: the bench needs the FUSeg photos and masks", file=sys.stderr)
        return 2
    cv2.setNumThreads(1)  # the machine's two cores are shared; one thread keeps the CPU figure honest
    start = time.process_time()
    wall = time.perf_counter()
    sample = load_sample(a.photos, a.seed)
    backend = None
    if a.checkpoint:
        from dfudet.inference.loader import load_backend

        backend = load_backend(checkpoint=a.checkpoint, device="cpu")
        if not backend.info.outlines:
            print(f"{a.checkpoint} is not an outline model", file=sys.stderr)
            return 2
    rng = np.random.default_rng(a.seed)
    rows: list[dict[str, Any]] = []
    own_err: dict[str, float] = {}
    skipped = 0
    for k, (name, photo, mask) in enumerate(sample):
        half = "select" if k % 2 == 0 else "check"
        if backend is not None:
            kept = backend.keep(backend.predict_arrays([photo])[0])
            own_err[name] = float(_union(kept).sum()) / float(mask.sum()) - 1
        for tilt, px in itertools.product(TILTS, CARD_PX):
            case = render_case(photo, mask, rng, tilt, px)
            if case is None:
                skipped += 1
                continue
            d = find_card(case["image"], PERMISSIVE, explain_absence=False)
            true_w = mask_area_mm2(case["mask"], case["card_h"])
            row: dict[str, Any] = {
                "photo": name, "half": half, "tilt": tilt, "card_px_target": px, "blur": case["blur"],
                "jpeg": case["jpeg"], "occluded": case["occluded"], "true_mm_per_px": round(case["true_mm_per_px"], 4),
                "truth_mm2": round(case["truth_mm2"], 3), "found": d.homography is not None, "code": d.code,
                "markers": d.markers_found, "card_px": d.card_px or 0.0, "tilt_est": d.tilt_deg or 0.0,
                "rms": d.reprojection_px or 0.0, "raster_err": true_w / case["truth_mm2"] - 1}
            if d.homography is not None:
                det_w = mask_area_mm2(case["mask"], d.homography)
                row["card_err"] = det_w / true_w - 1
                row["scale_err"] = det_w / case["truth_mm2"] - 1
                if backend is not None:
                    kept = backend.keep(backend.predict_arrays([case["image"]])[0])
                    row["e2e_err"] = mask_area_mm2(_union(kept), d.homography) / case["truth_mm2"] - 1
            rows.append(row)
        print(f"{k + 1}/{len(sample)} {name}: {len(rows)} cases, {time.process_time() - start:.0f} s CPU",
              file=sys.stderr)
    meta = {"photos": [n for n, _, _ in sample], "n_photos": len(sample), "seed": a.seed,
            "min_wound_px": MIN_WOUND_PX, "cases": len(rows), "skipped_not_in_frame": skipped,
            "image": [W, H], "focal_px": FOCAL, "tilts": TILTS, "card_px_targets": CARD_PX}
    return report(rows, meta, a, round(time.process_time() - start, 1), round(time.perf_counter() - wall, 1),
                  own_err, "PYTHONPATH=src python bench/marker_bench.py " + " ".join(argv or sys.argv[1:]))


def report(rows: list[dict[str, Any]], meta: dict[str, Any], a: argparse.Namespace, cpu: float, wall: float,
           own_err: dict[str, float], command: str) -> int:
    """Choose the thresholds on the select half, report both halves, write the JSON and the plot."""
    sel = [r for r in rows if r["half"] == "select"]
    chk = [r for r in rows if r["half"] == "check"]
    t = choose(sel)
    result: dict[str, Any] = {
        "command": command, "sample": meta,
        "target": TARGET, "thresholds": t.as_dict(),
        "select_half": {"accepted": int(accepted(sel, t).sum()), "cases": len(sel),
                        "scale_err": _stats(np.array([r["scale_err"] for r, a_ in zip(sel, accepted(sel, t)) if a_]))},
    }
    for name, part in (("check_half", chk), ("all", rows)):
        acc = accepted(part, t)
        result[name] = {
            "cases": len(part), "accepted": int(acc.sum()),
            "meets_target": meets(np.array([r["scale_err"] for r, a_ in zip(part, acc) if a_])),
            **{k: _stats(np.array([r[k] for r, a_ in zip(part, acc) if a_])) for k in ("scale_err", "card_err",
                                                                                     "raster_err")},
            "refusals": {c: sum(refusal_code(r, t) == c for r in part)
                         for c in sorted({refusal_code(r, t) or "accepted" for r in part} - {"accepted"})},
        }
    shipped = DEFAULT_THRESHOLDS
    acc_s = accepted(rows, shipped)
    result["shipped"] = {
        "thresholds": shipped.as_dict(), "cases": len(rows), "accepted": int(acc_s.sum()),
        "meets_target": meets(np.array([r["scale_err"] for r, a_ in zip(rows, acc_s) if a_])),
        "scale_err": _stats(np.array([r["scale_err"] for r, a_ in zip(rows, acc_s) if a_])),
        "refusals": {c: sum(refusal_code(r, shipped) == c for r in rows)
                     for c in sorted({refusal_code(r, shipped) or "accepted" for r in rows} - {"accepted"})}}
    found = [r for r in rows if r["found"]]
    tilt_err = np.abs([r["tilt_est"] - r["tilt"] for r in found])
    result["tilt_estimate_abs_err_deg"] = {"n": len(found), "median": float(np.median(tilt_err)),
                                           "p90": float(np.percentile(tilt_err, 90)), "max": float(tilt_err.max())}
    result["by_cell"] = table(rows, t, "scale_err")
    acc_rows = [r for r, a_ in zip(rows, accepted(rows, t)) if a_]
    result["accepted_by_tilt"] = {str(tilt): _stats(np.array([r["scale_err"] for r in acc_rows if r["tilt"] == tilt]))
                                  for tilt in TILTS}
    result["accepted_by_card_px"] = {f"{lo}-{hi}": _stats(np.array([r["scale_err"] for r in acc_rows
                                                                    if lo <= r["card_px"] < hi]))
                                     for lo, hi in ((0, 200), (200, 250), (250, 300), (300, 350), (350, 450),
                                                    (450, 10000))}
    acc_all = accepted(rows, t)
    result["occluded"] = {"cases": sum(r["occluded"] for r in rows),
                          "accepted": int(sum(a_ for r, a_ in zip(rows, acc_all) if r["occluded"])),
                          "scale_err": _stats(np.array([r["scale_err"] for r, a_ in zip(rows, acc_all)
                                                        if a_ and r["occluded"]]))}
    if own_err:
        e2e = np.array([r["e2e_err"] for r, a_ in zip(rows, acc_all) if a_ and "e2e_err" in r])
        result["end_to_end"] = {"checkpoint": getattr(a, "checkpoint", None), "accepted": _stats(e2e),
                                "model_own_area_err_unrendered": _stats(np.array(list(own_err.values()))),
                                "by_cell": table([r for r in rows if "e2e_err" in r], t, "e2e_err")}
    result["cpu_seconds"] = cpu
    result["wall_seconds"] = wall
    result["cases_raw"] = [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    plot(rows, DEFAULT_THRESHOLDS, Path(a.plot))
    print(json.dumps({k: result[k] for k in ("thresholds", "select_half", "check_half", "all", "shipped",
                                              "tilt_estimate_abs_err_deg", "occluded", "cpu_seconds")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
