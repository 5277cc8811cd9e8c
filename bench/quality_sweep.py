"""How recall falls as photos get worse, and what the quality gate's measures read at each step (FUSeg test).

Usage:
    python bench/quality_sweep.py --out bench/results/quality_sweep.json                   # measures only (cheap)
    python bench/quality_sweep.py --checkpoint MODEL.pth --out bench/results/quality_sweep_model.json  # + recall

Every FUSeg test photo (images/test + annotations/test.json) is degraded synthetically at several strengths:
- blur: Gaussian blur, sigma in px of the 512 px photo (OpenCV GaussianBlur, kernel from sigma);
- darken / brighten: an exposure change in stops, applied in linear light (sRGB approximated by a 2.2 gamma:
  out = 255 * clip((x / 255) ** 2.2 * 2 ** stops, 0, 1) ** (1 / 2.2)), so -1 is the photo at half the light;
- downscale: both sides scaled by the factor (area interpolation), as a low-resolution camera or a crop would give.
For each strength it records the distribution (min, p10, median, p90, max) of every measure of
dfudet.inference.quality, the share of photos the gate (its thresholds as given, default the provisional ones)
would send to review and why, and, with --checkpoint / --onnx, the model's box recall and precision at its
operating threshold (IoU 0.5; boxes of downscaled photos are compared with the true boxes scaled alike).
Writes the JSON and a plot (--plot, default next to the JSON): per degradation, recall and the share sent to review
against the strength, with the gate's own measure and its threshold on a second axis.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from dfudet.data.checks import load_image  # noqa: E402
from dfudet.inference.quality import (  # noqa: E402
    MEASURE_SIDE,
    QualityMeasures,
    QualityThresholds,
    judge,
    measure_quality,
    quality_thresholds,
)

REPO = Path(__file__).resolve().parents[1]
MEASURES = ("sharpness", "laplacian_var", "mean_luma", "dark_share", "bright_share", "short_side", "content_share")


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with standard deviation `sigma` px (0: unchanged)."""
    return image if sigma <= 0 else cv2.GaussianBlur(image, (0, 0), sigmaX=float(sigma))


def exposure(image: np.ndarray, stops: float) -> np.ndarray:
    """The photo as if taken with 2**stops times the light (in linear light; clipped at white)."""
    if stops == 0:
        return image
    x = np.arange(256, dtype=np.float64) / 255.0
    lut = np.clip(255.0 * np.clip(x ** 2.2 * 2.0 ** stops, 0, 1) ** (1 / 2.2) + 0.5, 0, 255).astype(np.uint8)
    return cv2.LUT(image, lut)


def downscale(image: np.ndarray, factor: float) -> np.ndarray:
    """Both sides scaled by `factor` (area interpolation; 1: unchanged)."""
    if factor >= 1:
        return image
    h, w = image.shape[:2]
    return cv2.resize(image, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)


# name -> (what the strength is, strengths (the first is the clean photo), the degradation, the gate's measure and
# the threshold field it is compared with)
DEGRADATIONS: dict[str, tuple[str, list[float], Callable[[np.ndarray, float], np.ndarray], str, str]] = {
    "blur": ("Gaussian blur sigma (px of the 512 px photo)", [0, 0.5, 1, 1.5, 2, 3, 4, 6], blur, "sharpness",
             "sharpness_min"),
    "darken": ("exposure change (stops)", [0, -1, -2, -3, -4, -5], exposure, "mean_luma", "luma_min"),
    "brighten": ("exposure change (stops)", [0, 0.5, 1, 1.5, 2, 3], exposure, "mean_luma", "luma_max"),
    "downscale": ("scale of both sides", [1, 0.75, 0.5, 0.35, 0.25, 0.15, 0.1], downscale, "short_side",
                  "min_short_side"),
}


def load_fuseg(root: Path, limit: int | None) -> list[tuple[Path, np.ndarray]]:
    """(photo, true xyxy boxes) of FUSeg test, in the order of annotations/test.json."""
    ann = root / "annotations" / "test.json"
    if not ann.is_file():
        raise SystemExit(f"{ann} not found: give the FUSeg folder with --fuseg")
    coco = json.loads(ann.read_text())
    boxes: dict[int, list[list[float]]] = {}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        boxes.setdefault(a["image_id"], []).append([x, y, x + w, y + h])
    items = [(root / "images" / im["file_name"], np.asarray(boxes.get(im["id"], []), np.float64).reshape(-1, 4))
             for im in coco["images"]]
    return items[:limit] if limit else items


def _summary(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, np.float64)
    p10, p50, p90 = np.percentile(v, [10, 50, 90])
    return {"min": float(v.min()), "p10": float(p10), "median": float(p50), "p90": float(p90), "max": float(v.max())}


def _reason_kind(reason: str) -> str:
    return reason.split(":", 1)[0]


def sweep(items: list[tuple[Path, np.ndarray]], thresholds: QualityThresholds, backend: Any = None,
          batch_size: int = 4, progress: bool = True) -> dict[str, Any]:
    """Every degradation at every strength: measure distributions, gate outcome and (with a backend) recall."""
    from dfudet.metrics.matching import match_image

    photos = [(load_image(p), gt) for p, gt in items]
    out: dict[str, Any] = {}
    for name, (label, strengths, fn, measure, field) in DEGRADATIONS.items():
        points = []
        for s in strengths:
            t0 = time.perf_counter()
            degraded = [fn(img, s) for img, _ in photos]
            measured: list[QualityMeasures] = [measure_quality(d) for d in degraded]
            verdicts = [judge(m, thresholds) for m in measured]
            kinds: dict[str, int] = {}
            for v in verdicts:
                for k in sorted({_reason_kind(r) for r in v.reasons}):
                    kinds[k] = kinds.get(k, 0) + 1
            point: dict[str, Any] = {
                "strength": s,
                "measures": {k: _summary([float(getattr(m, k)) for m in measured]) for k in MEASURES},
                "review_share": sum(not v.ok for v in verdicts) / len(verdicts),
                "review_reasons": {k: c / len(verdicts) for k, c in sorted(kinds.items())},
            }
            if backend is not None:
                thr = backend.operating_threshold
                tp = fp = fn_ = 0
                for start in range(0, len(degraded), batch_size):
                    chunk = degraded[start:start + batch_size]
                    for d, (img, gt), res in zip(chunk, photos[start:start + batch_size],
                                                 backend.predict_arrays(chunk, batch_size)):
                        sx, sy = d.shape[1] / img.shape[1], d.shape[0] / img.shape[0]
                        r = match_image(res.boxes, res.scores, gt * np.array([sx, sy, sx, sy]), thr, 0.5)
                        tp, fp, fn_ = tp + r.tp, fp + r.fp, fn_ + r.fn
                point.update({"threshold": thr, "recall": tp / max(1, tp + fn_),
                              "precision": tp / (tp + fp) if tp + fp else None, "tp": tp, "fp": fp, "fn": fn_})
            points.append(point)
            if progress:
                med = point["measures"][measure]["median"]
                extra = f"  recall {point['recall']:.3f}" if "recall" in point else ""
                print(f"{name:<9} {s:>6g}: {measure} median {med:9.3f}  review {point['review_share']:.0%}{extra}"
                      f"  ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
        out[name] = {"strength": label, "gate_measure": measure, "gate_threshold_field": field,
                     "gate_threshold": getattr(thresholds, field), "points": points}
    return out


def plot(result: dict[str, Any], path: Path) -> Path:
    """Per degradation: recall (when measured) and the share sent to review vs strength; the gate's measure
    (median, p10-p90 band) with its threshold on the right axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweeps = result["degradations"]
    fig, axes = plt.subplots(1, len(sweeps), figsize=(4.2 * len(sweeps), 3.6), squeeze=False)
    for ax, (name, d) in zip(axes[0], sweeps.items()):
        xs = [p["strength"] for p in d["points"]]
        if all("recall" in p for p in d["points"]):
            ax.plot(xs, [p["recall"] for p in d["points"]], "o-", color="tab:red", label="recall")
        ax.plot(xs, [p["review_share"] for p in d["points"]], "s--", color="0.4", label="sent to review")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(d["strength"])
        ax.set_ylabel("share")
        ax.set_title(name)
        right = ax.twinx()
        m = d["gate_measure"]
        med = [p["measures"][m]["median"] for p in d["points"]]
        right.plot(xs, med, "^-", color="tab:blue", label=f"{m} (median)")
        right.fill_between(xs, [p["measures"][m]["p10"] for p in d["points"]],
                           [p["measures"][m]["p90"] for p in d["points"]], color="tab:blue", alpha=0.15)
        right.axhline(d["gate_threshold"], color="tab:blue", ls=":", lw=1,
                      label=f"{d['gate_threshold_field']} = {d['gate_threshold']:g}")
        right.set_ylabel(m, color="tab:blue")
        if m == "sharpness":
            right.set_yscale("log")
        handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
        ax.legend(handles=handles, fontsize=7, loc="best")
    n = result["n_images"]
    note = "" if result["recall_measured"] else " (recall not measured: no --checkpoint)"
    fig.suptitle(f"FUSeg test ({n} photos), synthetic degradations{note}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--fuseg", default=str(REPO.parent / "shared" / "data" / "fuseg"), help="the FUSeg folder")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "quality_sweep.json"))
    ap.add_argument("--plot", help="PNG (default: the JSON's path with .png)")
    model = ap.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", help="best_model.pth: also measure recall at its operating threshold")
    model.add_argument("--onnx", help="MODEL.onnx instead of a checkpoint")
    ap.add_argument("--operating-threshold", type=float, help="override the model's operating threshold")
    ap.add_argument("--limit", type=int, help="only the first N photos (a quick look)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threshold", action="append", default=[], metavar="FIELD=VALUE",
                    help="a gate threshold other than the provisional default, e.g. sharpness_min=2 (repeatable)")
    a = ap.parse_args(argv)
    start = time.perf_counter()
    values: dict[str, Any] = {}
    for item in a.threshold:
        key, sep, val = item.partition("=")
        if not sep:
            ap.error(f"--threshold {item!r}: expected FIELD=VALUE")
        values[key] = float(val)
    thresholds = quality_thresholds(**values)
    items = load_fuseg(Path(a.fuseg), a.limit)
    backend = None
    if a.checkpoint or a.onnx:
        from dfudet.inference.loader import load_backend

        backend = load_backend(checkpoint=a.checkpoint, onnx=a.onnx, operating_threshold=a.operating_threshold)
    result = {
        "command": "python bench/quality_sweep.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "data": str(Path(a.fuseg) / "images" / "test"), "n_images": len(items),
        "n_boxes": int(sum(len(gt) for _, gt in items)),
        "model": a.checkpoint or a.onnx, "recall_measured": backend is not None,
        "thresholds": thresholds.model_dump(),
        "measures": {"sharpness": "1000 x variance of the Laplacian / variance of the grey content resized to a long "
                                  f"side of {MEASURE_SIDE} px",
                     "laplacian_var": f"variance of the Laplacian of the grey content at {MEASURE_SIDE} px "
                                      "(not divided)",
                     "mean_luma": "mean BT.601 luma of the content (0-255)",
                     "dark_share": "share of content pixels with luma <= 15",
                     "bright_share": "share of content pixels with luma >= 240",
                     "short_side": "short side of the content (px)",
                     "content_share": "share of the area left after cutting black bars"},
        "degradations": sweep(items, thresholds, backend, a.batch_size),
    }
    result["seconds"] = round(time.perf_counter() - start, 1)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    png = plot(result, Path(a.plot) if a.plot else out.with_suffix(".png"))
    print(f"wrote {out} and {png} in {result['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
