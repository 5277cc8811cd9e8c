"""Benchmark: seconds per training step and inference speed of every registry detector (random init, synthetic batch).

Usage:
    python bench/train_step.py                                   # all models, sizes 320 and 512
    python bench/train_step.py --models fasterrcnn_mobilenet_v3_large_320_fpn --sizes 320 --steps 2
    python bench/train_step.py --models fasterrcnn_efficientnet:efficientnet_b3 --threads 2 --out bench.json

A model is `name` or `name:backbone` (the backbone only matters for timm-backbone models: fasterrcnn_efficientnet,
fcos_timm). Times are medians
over --steps timed steps after --warmup untimed ones; a step is forward + backward + SGD update on --batch-size
images (one with a box, one without, alternating). On CUDA it uses AMP (fp16 autocast + GradScaler).
Page faults and system time per training step are recorded too. Like `dfudet train`, it keeps freed memory for reuse
(glibc; `--no-keep-freed-memory` measures glibc's defaults). Writes JSON (--out) and prints a markdown table; it never
edits docs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import timm  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from torch.optim.swa_utils import AveragedModel  # noqa: E402

from dfudet.config import DenseHeadConfig, ModelConfig  # noqa: E402
from dfudet.engine.ema import ramped_ema  # noqa: E402
from dfudet.engine.host_memory import keep_freed_memory  # noqa: E402
from dfudet.models import available_models, build_detector  # noqa: E402
from dfudet.models.factory import get_spec  # noqa: E402

EFFICIENTNET = "fasterrcnn_efficientnet"
DEFAULT_BACKBONES = {EFFICIENTNET: ["efficientnet_b0", "efficientnet_b5"], "fcos_timm": ["mobilenetv3_large_100"]}


def default_models() -> list[str]:
    """Every registry name; the EfficientNet detector twice (B0 the small one, B5 the reference one)."""
    out: list[str] = []
    for name in available_models():
        out += [f"{name}:{b}" for b in DEFAULT_BACKBONES[name]] if name in DEFAULT_BACKBONES else [name]
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch(size: int, n: int, device: torch.device) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    images, targets = [], []
    for i in range(n):
        images.append(torch.rand(3, size, size, generator=g).to(device))
        if i % 2 == 0:
            s = size
            boxes = torch.tensor([[0.2 * s, 0.25 * s, 0.55 * s, 0.6 * s]], device=device)
        else:  # healthy image: exercises the empty-target path like real data does
            boxes = torch.zeros((0, 4), device=device)
        targets.append({"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.int64, device=device)})
    return images, targets


def bench_one(
    spec: str, size: int, batch_size: int, steps: int, warmup: int, device: torch.device, fpn_channels: int = 256,
    head_convs: int | None = None, channels_last: bool = True,
) -> dict[str, Any]:
    """Time training steps and per-image inference of one detector at one input size."""
    name, _, backbone = spec.partition(":")
    # --head-convs applies to one-stage heads only; Faster R-CNNs keep theirs
    one_stage = "dense_head" in get_spec(name).sections
    if not get_spec(name).timm_backbone:
        fpn_channels = 256  # torchvision fixes the FPN width of its own backbones
    cfg = ModelConfig(name=name, backbone=backbone or "efficientnet_b5", pretrained=False, fpn_channels=fpn_channels,
                      dense_head=DenseHeadConfig(convs=head_convs if one_stage else None), channels_last=channels_last)
    model = build_detector(cfg, size).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4)
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    images, targets = _batch(size, batch_size, device)

    model.train()
    train_times: list[float] = []
    faults = sys_s = 0.0
    for i in range(warmup + steps):
        _sync(device)
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            losses = model(images, targets)
            loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        _sync(device)
        if i >= warmup:
            train_times.append(time.perf_counter() - t0)
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
            faults += ru1.ru_minflt - ru0.ru_minflt
            sys_s += ru1.ru_stime - ru0.ru_stime

    # train.ema_decay: one update of the weights' moving average (parameters and buffers), as after every step
    ema = AveragedModel(model, use_buffers=True, multi_avg_fn=ramped_ema(0.995))
    ema_times: list[float] = []
    for i in range(warmup + steps + 1):  # the first update copies the weights
        _sync(device)
        t0 = time.perf_counter()
        ema.update_parameters(model)
        _sync(device)
        if i > warmup:
            ema_times.append(time.perf_counter() - t0)
    del ema

    model.eval()
    infer_times: list[float] = []
    with torch.inference_mode():
        for i in range(warmup + steps):
            _sync(device)
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                model(images[:1])
            _sync(device)
            if i >= warmup:
                infer_times.append(time.perf_counter() - t0)

    train_s = statistics.median(train_times)
    infer_s = statistics.median(infer_times)
    return {
        "model": name,
        "backbone": backbone or None,
        "size": size,
        "minor_page_faults_per_step": round(faults / steps),  # the kernel faulting in (and zeroing) pages
        "system_s_per_step": round(sys_s / steps, 3),
        "batch_size": batch_size,
        "steps": steps,
        "fpn_channels": fpn_channels,
        "head_convs": head_convs if one_stage else None,
        "channels_last": channels_last,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "train_s_per_step": round(train_s, 4),
        "train_img_per_s": round(batch_size / train_s, 3),
        "ema_update_s": round(statistics.median(ema_times), 5),  # added to each step by train.ema_decay
        "infer_s_per_img": round(infer_s, 4),
        "infer_img_per_s": round(1.0 / infer_s, 3),
    }


def markdown_table(results: list[dict[str, Any]]) -> str:
    """The results as a markdown table (for pasting into docs by hand)."""
    lines = [
        "| model | size | params (M) | train s/step | train img/s | infer s/img | infer img/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        label = r["model"] + (f" ({r['backbone']})" if r["backbone"] else "")
        lines.append(
            f"| {label} | {r['size']} | {r['params_m']} | {r['train_s_per_step']:.3f} | {r['train_img_per_s']:.2f} "
            f"| {r['infer_s_per_img']:.3f} | {r['infer_img_per_s']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run every (model, size) pair, write JSON and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=None,
                    help="name or name:backbone (default: all, EfficientNet B0 and B5)")
    ap.add_argument("--sizes", nargs="+", type=int, default=[320, 512])
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (the median is reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU")
    ap.add_argument("--fpn-channels", type=int, default=256, help="FPN width (timm-backbone models only)")
    ap.add_argument("--head-convs", type=int, default=None, help="conv layers per head branch (fcos_timm only)")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                    help="the backbone's input in NHWC layout, as model.channels_last (default true) does; "
                         "--no-channels-last measures NCHW (bench/channels_last_ab.py compares both interleaved)")
    ap.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                    help="glibc keeps freed memory for reuse, as `dfudet train` does by default "
                         "(train.keep_freed_memory); --no-keep-freed-memory measures glibc's defaults")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as `dfudet train` does on CPU (denormal floats from random init are slow)
    kept = args.keep_freed_memory and keep_freed_memory()
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    models = args.models or default_models()
    unknown = [m for m in models if m.partition(":")[0] not in available_models()]
    if unknown:
        print(f"unknown model(s) {unknown}; available: {', '.join(available_models())}", file=sys.stderr)
        return 2

    results = []
    for spec in models:
        for size in args.sizes:
            r = bench_one(spec, size, args.batch_size, args.steps, args.warmup, device, args.fpn_channels,
                          args.head_convs, args.channels_last)
            results.append(r)
            print(f"{spec} @ {size}: {r['train_s_per_step']:.3f} s/step ({r['train_img_per_s']:.2f} img/s train), "
                  f"{r['infer_s_per_img']:.3f} s/img inference", flush=True)

    report = {
        "env": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "device": str(device),
            "amp": device.type == "cuda",
            "keep_freed_memory": kept,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "timm": timm.__version__,
        },
        "results": results,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print()
    print(markdown_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
