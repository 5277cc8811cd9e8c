"""Benchmark: model.channels_last on against off, interleaved so the machine's speed drift cancels out.

Usage:
    python bench/channels_last_ab.py --out bench/results/channels_last_ab.json
    python bench/channels_last_ab.py --model fasterrcnn_efficientnet:efficientnet_lite0 --fpn-channels 96

Two copies of one detector with the same initial weights and the recipe's frozen stages, one built with
model.channels_last=false (NCHW) and one with true (the backbone's input in NHWC, so every conv runs channels-last).
Rounds alternate between them: per round each does --steps timed training steps (forward + backward + AdamW on a
synthetic batch of --batch-size, after one untimed step) and --steps single-image inference passes. Reports the
median per layout, the speed-up, and the largest difference of the first step's losses (same weights, same batch:
only float rounding differs). Like `dfudet train` on CPU it keeps freed memory for reuse and flushes denormals.
Random init: no weights needed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from dfudet.config import DenseHeadConfig, ModelConfig  # noqa: E402
from dfudet.engine.host_memory import keep_freed_memory  # noqa: E402
from dfudet.models import build_detector, get_spec  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import _batch  # noqa: E402

LAYOUTS = {"nchw": False, "channels_last": True}


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the interleaved rounds, print and optionally write the result."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="fcos_timm:efficientnet_lite0", help="name or name:backbone")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--fpn-channels", type=int, default=96)
    ap.add_argument("--head-convs", type=int, default=2, help="conv layers per head branch (one-stage heads)")
    ap.add_argument("--trainable-backbone-layers", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per layout per round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    keep_freed_memory()
    name, _, backbone = args.model.partition(":")
    device = torch.device("cpu")
    images, targets = _batch(args.size, args.batch_size, device)
    one_stage = "dense_head" in get_spec(name).sections
    models: dict[str, Any] = {}
    first_loss: dict[str, dict[str, float]] = {}
    for label, channels_last in LAYOUTS.items():
        torch.manual_seed(0)
        # pretrained=True with load_weights=False: the frozen stages (FrozenBatchNorm) of a pretrained recipe, no
        # weights needed (with pretrained=False every stage would train)
        cfg = ModelConfig(name=name, backbone=backbone or "efficientnet_lite0", pretrained=True,
                          fpn_channels=args.fpn_channels,
                          dense_head=DenseHeadConfig(convs=args.head_convs if one_stage else None),
                          trainable_backbone_layers=args.trainable_backbone_layers,
                          channels_last=channels_last)
        model = build_detector(cfg, args.size, load_weights=False)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        models[label] = (model, opt)
    models["channels_last"][0].load_state_dict(models["nchw"][0].state_dict())

    train: dict[str, list[float]] = {k: [] for k in LAYOUTS}
    infer: dict[str, list[float]] = {k: [] for k in LAYOUTS}
    for rnd in range(args.rounds):
        for label, (model, opt) in models.items():
            model.train()
            for i in range(args.steps + 1):
                torch.manual_seed(rnd * 100 + i)  # same sampling draws for both layouts
                t0 = time.perf_counter()
                losses = model(images, targets)
                loss = sum(losses.values())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if rnd == 0 and i == 0:
                    first_loss[label] = {k: float(v.detach()) for k, v in losses.items()}
                if i > 0:
                    train[label].append(time.perf_counter() - t0)
            model.eval()
            with torch.inference_mode():
                for i in range(args.steps + 1):
                    t0 = time.perf_counter()
                    model(images[:1])
                    if i > 0:
                        infer[label].append(time.perf_counter() - t0)
        print(f"round {rnd}: " + ", ".join(f"{k} train {statistics.median(train[k]):.3f} s/step, infer "
                                           f"{statistics.median(infer[k]):.3f} s/img" for k in LAYOUTS), flush=True)

    med = {k: {"train_s_per_step": round(statistics.median(train[k]), 4),
               "infer_s_per_img": round(statistics.median(infer[k]), 4)} for k in LAYOUTS}
    report = {
        "env": {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
                "threads": torch.get_num_threads(), "torch": torch.__version__},
        "setup": {k: v for k, v in vars(args).items() if k != "out"},
        "median": med,
        "train_speedup": round(med["nchw"]["train_s_per_step"] / med["channels_last"]["train_s_per_step"], 3),
        "infer_speedup": round(med["nchw"]["infer_s_per_img"] / med["channels_last"]["infer_s_per_img"], 3),
        "first_step_max_loss_difference": max(abs(first_loss["nchw"][k] - first_loss["channels_last"][k])
                                              for k in first_loss["nchw"]),
    }
    print(json.dumps({k: report[k] for k in ("median", "train_speedup", "infer_speedup",
                                             "first_step_max_loss_difference")}, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
