"""Benchmark: ms/image of onnxruntime vs PyTorch eager at batch 1 on CPU, for exported dfudet detectors.

Usage:
    python bench/onnx_speed.py                                  # mobilenet_v3_large_fpn and efficientnet_b0 at 320, 512
    python bench/onnx_speed.py --models fasterrcnn_mobilenet_v3_large_fpn --sizes 320 --runs 5 --out onnx.json

Each model is built with random init, saved as a best_model.pth, exported with `dfudet.export.onnx.export_onnx`
(the same code as `dfudet export`), then timed end to end through the two predictors on one 640x480 demo photo:
`Predictor.predict_arrays` (PyTorch eager, inference_mode) and `OnnxPredictor.predict_arrays` (onnxruntime CPU).
Both include resize + pad and the box mapping. Both use --threads intra-op threads. Times are medians of --runs
timed calls after --warmup untimed ones, interleaved (torch, onnx, torch, ...) so background load hits both alike.
Writes JSON (--out) and prints a markdown table; it never edits docs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from dfudet.checkpoint import save_model_checkpoint  # noqa: E402
from dfudet.config import load_config  # noqa: E402
from dfudet.data.demo import render_sample  # noqa: E402
from dfudet.export.onnx import export_onnx  # noqa: E402
from dfudet.inference.onnx_predictor import OnnxPredictor  # noqa: E402
from dfudet.inference.predictor import Predictor  # noqa: E402
from dfudet.models.factory import build_detector  # noqa: E402

DEFAULT_MODELS = ["fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_efficientnet:efficientnet_b0"]


def make_checkpoint(spec: str, size: int, path: Path, channels_last: bool = True) -> Path:
    """A random-init best_model.pth of `name[:backbone]` at img_size `size`."""
    name, _, backbone = spec.partition(":")
    cfg = load_config(None, [f"model.name={name}", f"model.backbone={backbone or 'efficientnet_b0'}",
                             "model.pretrained=false", f"data.img_size={size}",
                             f"model.channels_last={str(channels_last).lower()}"])
    torch.manual_seed(0)
    model = build_detector(cfg.model, size)
    save_model_checkpoint(path, model.state_dict(), cfg, epoch=0)
    return path


def bench_one(spec: str, size: int, image: Any, runs: int, warmup: int, threads: int, work: Path,
              channels_last: bool = True) -> dict[str, Any]:
    """Export one model and time both predictors on `image`; returns ms/image medians and the speed-up."""
    ckpt = make_checkpoint(spec, size, work / f"{spec.replace(':', '_')}_{size}.pth", channels_last)
    onnx_path = work / f"{spec.replace(':', '_')}_{size}.onnx"
    t0 = time.perf_counter()
    export_onnx(ckpt, onnx_path)
    export_s = time.perf_counter() - t0
    tp = Predictor.from_checkpoint(ckpt)
    op = OnnxPredictor(onnx_path, threads=threads)
    for _ in range(warmup):
        tp.predict_arrays([image])
        op.predict_arrays([image])
    t_torch, t_onnx = [], []
    for _ in range(runs):
        t = time.perf_counter()
        tp.predict_arrays([image])
        t_torch.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        op.predict_arrays([image])
        t_onnx.append((time.perf_counter() - t) * 1000)
    mt, mo = statistics.median(t_torch), statistics.median(t_onnx)
    return {"model": spec, "img_size": size, "torch_ms": round(mt, 1), "onnx_ms": round(mo, 1),
            "speedup": round(mt / mo, 2), "torch_ms_all": [round(x, 1) for x in t_torch],
            "onnx_ms_all": [round(x, 1) for x in t_onnx], "export_s": round(export_s, 1),
            "onnx_mb": round(onnx_path.stat().st_size / 2**20, 1)}


def markdown(rows: list[dict[str, Any]]) -> str:
    """The results as a markdown table."""
    lines = ["| model | img_size | PyTorch eager ms/img | onnxruntime ms/img | speed-up | ONNX MB |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['img_size']} | {r['torch_ms']} | {r['onnx_ms']} | {r['speedup']}x "
              f"| {r['onnx_mb']} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry: run the grid, write JSON, print markdown."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    ap.add_argument("--sizes", nargs="+", type=int, default=[320, 512])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/results/onnx_speed.json")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                    help="model.channels_last of the PyTorch side (--no-channels-last: NCHW)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    image = cv2.resize(render_sample(0, 0, 480, healthy=False).image, (640, 480), interpolation=cv2.INTER_LINEAR)
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in a.models:
            for size in a.sizes:
                rows.append(bench_one(spec, size, image, a.runs, a.warmup, a.threads, Path(tmp), a.channels_last))
                print(f"{spec} @ {size}: torch {rows[-1]['torch_ms']} ms, onnx {rows[-1]['onnx_ms']} ms",
                      file=sys.stderr)
    result = {"rows": rows, "threads": a.threads, "runs": a.runs, "warmup": a.warmup, "channels_last": a.channels_last,
              "torch": torch.__version__, "onnxruntime": ort.__version__, "python": platform.python_version(),
              "cpu": platform.processor() or platform.machine(), "nproc": os.cpu_count(),
              "loadavg_before_after": [load_before, os.getloadavg()], "date": time.strftime("%Y-%m-%d")}
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
