"""Service memory benchmark: peak RSS of a real `dfudet serve` process under N parallel near-limit uploads.

Starts `dfudet serve --checkpoint CKPT` in a subprocess with the given limits, warms it up with one upload, then
sends N uploads of a PNG just under --max-pixels at once and reads the server's peak RSS (VmHWM, /proc). Run it
once with the default pixel budget and once with the budget lifted to see what the budget saves. Writes JSON.

    python bench/serve_memory.py --checkpoint best_model.pth --out bench/results/serve_memory.json \
        [--max-pixels 50000000] [--pixels-in-flight N] [--n 20]
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

# the server start-up, /healthz polling and /proc RSS reading are shared with tests/serve/test_limits.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _serve import dfudet_serve  # noqa: E402


def near_limit_png(max_pixels: int) -> tuple[bytes, int, int]:
    """A PNG of just under max_pixels (4:3), rows of random colour: decodes to full size, compresses small."""
    h = int((max_pixels * 3 / 4) ** 0.5)
    w = max_pixels // h - 1
    rng = np.random.default_rng(0)
    arr = np.repeat(rng.integers(0, 255, (h, 1, 3), dtype=np.uint8), w, axis=1)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue(), w, h


def run(checkpoint: str, max_pixels: int, pixels_in_flight: int | None, n: int) -> dict:
    args = ["--max-pixels", str(max_pixels), "--busy-timeout", "600", "--body-timeout", "600"]
    if pixels_in_flight:
        args += ["--pixels-in-flight", str(pixels_in_flight)]
    with dfudet_serve(checkpoint, *args, timeout=180) as server:
        body, w, h = near_limit_png(max_pixels)
        post = lambda k: httpx.post(f"{server.url}/v1/detect", files={"file": (f"p{k}.png", body)},  # noqa: E731
                                    timeout=1200)
        assert post(-1).status_code == 200
        base = server.rss_kb("VmRSS")
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=n) as pool:
            codes = [r.status_code for r in pool.map(post, range(n))]
        seconds = time.monotonic() - t0
        peak = server.rss_kb("VmHWM")
    return {"max_pixels": max_pixels, "pixels_in_flight": server.health["pixels_in_flight"], "uploads": n,
            "image": f"{w}x{h}", "png_bytes": len(body), "status_codes": sorted(set(codes)),
            "ok": codes.count(200), "rss_before_mb": round(base / 1024), "peak_rss_mb": round(peak / 1024),
            "growth_mb": round((peak - base) / 1024), "seconds": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-pixels", type=int, default=50_000_000)
    ap.add_argument("--pixels-in-flight", type=int, help="default: the server's default (2 x --max-pixels)")
    ap.add_argument("--no-budget", action="store_true", help="also run with the budget lifted, for comparison")
    ap.add_argument("--n", type=int, default=20)
    a = ap.parse_args()
    runs = [run(a.checkpoint, a.max_pixels, a.pixels_in_flight, a.n)]
    if a.no_budget:
        runs.append(run(a.checkpoint, a.max_pixels, a.max_pixels * a.n * 10, a.n))
    for r in runs:
        print(json.dumps(r))
    out = {"when": dt.datetime.now().isoformat(timespec="seconds"), "machine": platform.platform(),
           "cpus": os.cpu_count(), "runs": runs}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
