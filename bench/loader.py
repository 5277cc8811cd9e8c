"""Loader benchmark: images/s delivered by the DataLoader with the full training augmentation, folder vs LMDB.

Generates N synthetic 512-px JPEG "photos" (or uses --dataset DIR), writes the dataset dir and the LMDB cache,
then for each source and num_workers in --workers measures decode + augment + collate throughput (uint8 tensors,
balanced batch sampler) and checks that workers > 0 deliver exactly the samples of num_workers=0 (seeded
per-sample augmentation). Prints a table and writes JSON.

    python bench/loader.py --out bench/results/loader.json [--n 200] [--img-size 512] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from dfudet.config import AugmentConfig  # noqa: E402
from dfudet.data.cache import prepare_cache  # noqa: E402
from dfudet.data.dataset import DetectionDataset, collate_detection  # noqa: E402
from dfudet.data.records import ImageRecord, read_dataset, write_dataset  # noqa: E402
from dfudet.data.sampler import BalancedBatchSampler  # noqa: E402
from dfudet.data.transforms import build_train_transform  # noqa: E402

SEED = 1234


def make_images(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """Write n photo-like JPEGs (smooth skin tones, texture, 1-3 dark lesions; every 4th healthy) + dataset.json."""
    rng = np.random.default_rng(seed)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    records = []
    for k in range(n):
        base = np.array([200, 150, 120], np.float32) + rng.normal(0, 15, 3)
        shade = 0.75 + 0.25 * np.sin(xx * rng.uniform(2, 6) + yy * rng.uniform(2, 6))
        img = base[None, None, :] * shade[..., None]
        img += rng.normal(0, 6, (size // 8, size // 8, 3)).repeat(8, 0).repeat(8, 1)  # blotchy texture
        img += rng.normal(0, 3, img.shape)  # sensor noise
        healthy = k % 4 == 3
        boxes = []
        for _ in range(0 if healthy else int(rng.integers(1, 4))):
            r = rng.uniform(0.02, 0.12) * size
            cx, cy = rng.uniform(r, size - r, 2)
            mask = ((xx * size - cx) ** 2 + (yy * size - cy) ** 2) < r * r
            img[mask] = img[mask] * 0.5 + np.array([120, 30, 30]) * 0.5
            boxes.append([cx - r, cy - r, cx + r, cy + r])
        path = img_dir / f"img_{k:04d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
        records.append(ImageRecord(str(path), size, size, boxes, split="train", healthy=healthy, source="bench"))
    write_dataset(root / "dataset", records)
    return root / "dataset"


def _loader(source: Path, img_size: int, batch_size: int, workers: int, batches: int) -> DataLoader:
    ds = DetectionDataset(source, "train", build_train_transform(AugmentConfig(), img_size), seed=SEED)
    sampler = BalancedBatchSampler(ds.healthy_flags, batch_size, 0.5, seed=SEED, num_replicas=1, rank=0,
                                   batches_per_epoch=batches)
    kw: dict = {"num_workers": workers, "collate_fn": collate_detection}
    if workers:
        kw.update(persistent_workers=True, prefetch_factor=4)
    return DataLoader(ds, batch_sampler=sampler, **kw)


def measure(source: Path, img_size: int, batch_size: int, workers: int, batches: int, epochs: int,
            seconds: float | None) -> dict:
    """Throughput of one (source, workers) setting over whole epochs, after one untimed warm-up epoch.

    Workers are persistent, so the warm-up pays their start-up; each timed epoch runs from iter() to its last
    batch (including the refill of the prefetch queue), so prefetched batches are never counted for free.
    """
    loader = _loader(source, img_size, batch_size, workers, batches)
    t0 = time.perf_counter()
    epoch, n_img, elapsed = 0, 0, 0.0
    while True:
        loader.batch_sampler.set_epoch(epoch)
        loader.dataset.set_epoch(epoch)
        t_epoch = time.perf_counter()
        count = 0
        for images, _targets in loader:
            assert images[0].dtype == torch.uint8
            count += len(images)
        if epoch == 0:
            startup = time.perf_counter() - t0
        else:
            n_img += count
            elapsed += time.perf_counter() - t_epoch
        epoch += 1
        if (seconds is None and epoch > epochs) or (seconds is not None and epoch > 1 and elapsed >= seconds):
            break
    return {"images": n_img, "epochs": epoch - 1, "seconds": round(elapsed, 3), "img_per_s": round(n_img / elapsed, 1),
            "warmup_epoch_s": round(startup, 3)}


def fingerprint(source: Path, img_size: int, batch_size: int, workers: int, n_batches: int) -> list[str]:
    """Digest of the first batches of epoch 1 (images, boxes, ids) to compare worker counts."""
    import hashlib

    loader = _loader(source, img_size, batch_size, workers, n_batches)
    loader.batch_sampler.set_epoch(1)
    loader.dataset.set_epoch(1)
    out = []
    for images, targets in loader:
        h = hashlib.sha256()
        for im, t in zip(images, targets):
            h.update(im.numpy().tobytes())
            h.update(t["boxes"].numpy().tobytes())
            h.update(t["image_id"].numpy().tobytes())
        out.append(h.hexdigest())
    return out


def system_info() -> dict:
    """Where the numbers come from (the CPU is shared with other jobs: load average included)."""
    cpu = ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu or platform.processor(), "torch": torch.__version__,
            "python": platform.python_version(), "date": dt.datetime.now().isoformat(timespec="seconds"),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write results as JSON here")
    p.add_argument("--n", type=int, default=200, help="number of generated images")
    p.add_argument("--img-size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=int, default=2, help="timed epochs per setting, after one warm-up epoch")
    g.add_argument("--seconds", type=float, help="time each setting for about this long instead (whole epochs)")
    p.add_argument("--repeat", type=int, default=3, help="measure each setting this many times (interleaved)")
    p.add_argument("--workers", default="0,1,2", help="comma-separated num_workers values")
    p.add_argument("--dataset", type=Path, help="use this dataset dir instead of generated images")
    p.add_argument("--work-dir", type=Path, help="where to write generated data (default: a temp dir)")
    a = p.parse_args(argv)
    workers = [int(w) for w in a.workers.split(",")]
    info = system_info()

    tmp = tempfile.TemporaryDirectory(prefix="dfudet-bench-") if a.work_dir is None else None
    work = Path(tmp.name) if tmp else a.work_dir
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ds_dir = a.dataset or make_images(work, a.n, a.img_size)
    t_gen = time.perf_counter() - t0
    n_images = sum(r.split == "train" for r in read_dataset(ds_dir))
    t0 = time.perf_counter()
    prepare_cache(ds_dir, work / "cache", img_size=a.img_size)
    t_cache = time.perf_counter() - t0
    batches = max(1, n_images // a.batch_size)  # one epoch ~ every image once
    sources = {"folder": ds_dir, "lmdb": work / "cache"}
    for src in sources.values():  # warm the page cache for both, so neither pays the first disk read
        measure(src, a.img_size, a.batch_size, 0, 1, 1, None)

    # Settings are interleaved and repeated: the CPU is shared, so one slow stretch must not hit one setting only.
    runs: dict[tuple[str, int], list[dict]] = {(name, w): [] for name in sources for w in workers}
    for rep in range(a.repeat):
        for (name, w), got in runs.items():
            got.append(measure(sources[name], a.img_size, a.batch_size, w, batches, a.epochs, a.seconds))
            print(f"  run {rep + 1}/{a.repeat} {name} workers={w}: {got[-1]['img_per_s']} img/s", flush=True)
    results = []
    for (name, w), got in runs.items():
        rates = sorted(r["img_per_s"] for r in got)
        results.append({"source": name, "workers": w, "img_per_s_median": float(np.median(rates)),
                        "img_per_s_best": rates[-1], "img_per_s_runs": [r["img_per_s"] for r in got],
                        "images_per_run": got[0]["images"], "warmup_epoch_s": got[0]["warmup_epoch_s"]})
    print(f"{'source':<8}{'workers':>8}{'median img/s':>14}{'best img/s':>12}{'images/run':>12}")
    for r in results:
        print(f"{r['source']:<8}{r['workers']:>8}{r['img_per_s_median']:>14.1f}{r['img_per_s_best']:>12.1f}"
              f"{r['images_per_run']:>12}")

    check_batches = min(batches, 4)
    same = {}
    for name, src in sources.items():
        ref = fingerprint(src, a.img_size, a.batch_size, 0, check_batches)
        for w in workers:
            if w:
                same[f"{name}/workers={w}"] = fingerprint(src, a.img_size, a.batch_size, w, check_batches) == ref
    print("workers deliver the same samples as num_workers=0:", "yes" if all(same.values()) else f"NO {same}")
    best = max(results, key=lambda r: r["img_per_s_median"])
    print(f"best (median): {best['source']} workers={best['workers']} {best['img_per_s_median']} img/s")

    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report = {"system": info, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
              "images": n_images, "batches_per_epoch": batches, "generate_s": round(t_gen, 2),
              "prepare_cache_s": round(t_cache, 2), "results": results, "same_samples": same, "best": best}
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=1))
        print(f"wrote {a.out}")
    if tmp:
        tmp.cleanup()
    return 0 if all(same.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
