"""Benchmark: `predict` speed (decode-free: resize/pad + model + mapping back) at batch 1 and 8 per backbone and size.

Usage:
    python bench/infer.py --out bench/results/infer.json
    python bench/infer.py --models fasterrcnn_mobilenet_v3_large_fpn --sizes 320 --batches 1 8 --images 16

Random-init models (speed does not depend on the weights, except through the number of boxes: the RPN/RoI work is
fixed by the config, and box_score_thresh stays at the default). Images are 640x480 synthetic demo photos, so the
resize to img_size is part of the time, as in `dfudet predict`. Median of --repeats runs after one warm-up run.
Prints a markdown table and writes JSON; CUDA is used when present (--device).
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

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from dfudet.checkpoint import save_model_checkpoint  # noqa: E402
from dfudet.config import load_config  # noqa: E402
from dfudet.data.demo import render_sample  # noqa: E402
from dfudet.inference.predictor import Predictor  # noqa: E402
from dfudet.models import build_detector  # noqa: E402

DEFAULT_MODELS = ["fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_efficientnet:efficientnet_b0",
                  "fasterrcnn_efficientnet:efficientnet_b5", "fasterrcnn_resnet50_fpn_v2"]


def write_checkpoint(spec: str, img_size: int, path: Path, channels_last: bool = True) -> Path:
    """A best_model.pth of a random-init model, so the benchmark runs the real `Predictor` path."""
    name, _, backbone = spec.partition(":")
    cfg = load_config(None, [f"model.name={name}", f"model.backbone={backbone or 'efficientnet_b0'}",
                             "model.pretrained=false", f"data.img_size={img_size}",
                             f"model.channels_last={str(channels_last).lower()}"])
    model = build_detector(cfg.model, img_size)
    save_model_checkpoint(path, model.state_dict(), cfg, epoch=0)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    ap.add_argument("--sizes", nargs="+", type=int, default=[320, 512])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--images", type=int, default=16, help="images per timed run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="bench/results/infer.json")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                    help="model.channels_last of the benchmarked checkpoints (--no-channels-last: NCHW)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    images = [render_sample(11, i, 640, healthy=False).image[:480] for i in range(a.images)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in a.models:
            for size in a.sizes:
                pred = Predictor.from_checkpoint(write_checkpoint(spec, size, Path(tmp) / "m.pth", a.channels_last),
                                                   device=a.device)
                for bs in a.batches:
                    pred.predict_arrays(images[:bs], batch_size=bs)  # warm-up
                    times = []
                    for _ in range(a.repeats):
                        t0 = time.perf_counter()
                        pred.predict_arrays(images, batch_size=bs)
                        times.append(time.perf_counter() - t0)
                    per_img = statistics.median(times) / len(images)
                    row = {"model": spec, "img_size": size, "batch": bs, "ms_per_img": round(per_img * 1000, 1),
                           "img_per_s": round(1 / per_img, 2),
                           "device": str(pred.device) if hasattr(pred, "device") else a.device}
                    rows.append(row)
                    print(f"{spec:45s} {size:4d}  batch {bs:2d}  {row['ms_per_img']:8.1f} ms/img  "
                          f"{row['img_per_s']:6.2f} img/s", flush=True)
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                          "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()},
              "channels_last": a.channels_last, "results": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print("\n| model | img_size | batch | ms/img | img/s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['img_size']} | {r['batch']} | {r['ms_per_img']} | {r['img_per_s']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
