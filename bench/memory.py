"""Memory over a long run: N short epochs on the demo data, RSS (and CUDA memory) recorded after every epoch.

Target: RSS after the last epoch within 3% of RSS after epoch 3 (nothing kept that should not be).
    python bench/memory.py --cache runs/demo/cache --epochs 30 --out bench/results/memory.json
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path

import lightning as L
import torch

from dfudet.engine.host_memory import keep_freed_memory, rss_mib


class MemoryProbe(L.Callback):
    """Records RSS and CUDA memory at the end of every training epoch (after validation)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        gc.collect()
        row = {"epoch": trainer.current_epoch + 1, "rss_mib": round(rss_mib(), 1), "time": time.time()}
        if torch.cuda.is_available():
            row["cuda_allocated_mib"] = round(torch.cuda.memory_allocated() / 2**20, 1)
            row["cuda_reserved_mib"] = round(torch.cuda.memory_reserved() / 2**20, 1)
        self.rows.append(row)
        print(f"epoch {row['epoch']:3d}  rss {row['rss_mib']:.1f} MiB", flush=True)


def main(argv: list[str] | None = None) -> int:
    from dfudet.config import load_config
    from dfudet.engine.datamodule import DetectionDataModule
    from dfudet.engine.module import DetectorModule
    from dfudet.engine.runner import build_trainer, resolve_hardware

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cache", default="runs/demo/cache")
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--train-batches", type=int, default=10)
    ap.add_argument("--val-batches", type=int, default=5)
    ap.add_argument("--run-dir", default="runs/bench-memory")
    ap.add_argument("--out", default="bench/results/memory.json")
    a = ap.parse_args(argv)

    cfg = load_config(a.config, [f"data.cache={a.cache}", f"run_dir={a.run_dir}", f"train.epochs={a.epochs}",
                                 f"train.limit_train_batches={a.train_batches}",
                                 f"train.limit_val_batches={a.val_batches}", "train.early_stop_patience=1000"])
    Path(a.run_dir).mkdir(parents=True, exist_ok=True)
    for stale in ("last.ckpt", "best_model.pth"):
        (Path(a.run_dir) / stale).unlink(missing_ok=True)  # the benchmark's own run dir: always a fresh run
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.set_flush_denormal(True)  # as `dfudet train` does on CPU
    kept = bool(cfg.train.keep_freed_memory) and keep_freed_memory()  # as `dfudet train` does (glibc)
    acc, devices, precision = resolve_hardware(cfg)
    trainer = build_trainer(cfg, acc, devices, precision)
    probe = MemoryProbe()
    trainer.callbacks.append(probe)
    trainer.fit(DetectorModule(cfg), datamodule=DetectionDataModule(cfg))

    rows = probe.rows
    ref = next(r for r in rows if r["epoch"] == min(3, len(rows)))
    last = rows[-1]
    growth = (last["rss_mib"] - ref["rss_mib"]) / ref["rss_mib"] * 100
    result = {
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()},
        "config": {"model": cfg.model.name, "img_size": cfg.data.img_size, "batch_size": cfg.data.batch_size,
                   "train_batches": a.train_batches, "val_batches": a.val_batches, "keep_freed_memory": kept},
        "per_epoch": rows,
        "rss_epoch3_mib": ref["rss_mib"], "rss_last_mib": last["rss_mib"], "growth_percent": round(growth, 2),
        "target_percent": 3.0, "met": abs(growth) <= 3.0,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(f"RSS after epoch 3: {ref['rss_mib']:.1f} MiB, after epoch {last['epoch']}: {last['rss_mib']:.1f} MiB "
          f"({growth:+.2f}%, target within 3%: {'met' if result['met'] else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
