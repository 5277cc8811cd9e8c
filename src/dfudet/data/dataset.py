"""torch Dataset over an LMDB cache or a dataset dir -> (uint8 CHW image tensor, detection target dict).

Worker safety (NOTES.md): the LMDB env is opened lazily on the first read in each process, never pickled (it is
held in cache.open_env's per-process table, not on the dataset), and closed and reopened when os.getpid() changed.

Reproducible augmentation: with `seed` set, every sample's transform randomness is re-seeded from
(seed, epoch, index) before the transform runs, so a sample is augmented identically whatever the number of
workers or the start method. The epoch lives in a shared-memory tensor, so `set_epoch()` called in the main
process reaches persistent workers too (call it before iterating the loader for that epoch).

Copy-paste (`data.augment.copy_paste` / `copy_paste_healthy` > 0, training transforms only): before the transform, a
sampled photo gets, with that probability, 1-2 wounds cut with their masks from other photos of the split that have
masks, pasted on skin (dfudet.data.copy_paste). Its draws come from their own generator, seeded from (seed, epoch,
index) like the transform's, so the transform draws what it drew before; at probability 0 nothing at all is drawn.
The sampler still sees the record's own healthy flag; a healthy photo given a wound is returned with healthy=False.
A record with boxes but no masks is left as it is (its wounds could not be kept out of the pasted one's way).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dfudet.data import instance_masks
from dfudet.data.cache import MANIFEST_FILE, read_entry, read_manifest, read_split_meta
from dfudet.data.checks import decode_image_bytes, load_image
from dfudet.data.records import DATASET_FILE, SPLITS, read_dataset, summarize
from dfudet.data.transforms import DetectionTransform
from dfudet.errors import ConfigError, DataError

PASTE_COLOR_MATCH = 0.5  # share of the skin-colour difference corrected when pasting (dfudet.data.copy_paste)
PASTE_MIN_AREA = 64  # donor wounds of fewer pixels (under 8 x 8 in the stored photo) are not pasted


def _split_error(source: Path, split: str, counts: dict[str, int]) -> DataError:
    """Unknown or empty split, listing what is there."""
    avail = ", ".join(f"{s} ({n} images)" for s, n in counts.items() if n > 0) or "none"
    if split in counts or split in SPLITS:
        return DataError(f"{source}: split {split!r} has no images; available splits: {avail}")
    return DataError(f"{source}: unknown split {split!r}; available splits: {avail}")


class DetectionDataset(Dataset):
    """One split of a cache or dataset dir, auto-detected, returning uint8 images and xyxy targets."""

    def __init__(self, source: str | Path, split: str, transform: DetectionTransform | None = None,
                 seed: int | None = None) -> None:
        self.source = Path(source)
        self.split = split
        self.transform = transform
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._seeded_pid: int | None = None
        if (self.source / MANIFEST_FILE).is_file() or (
            not (self.source / DATASET_FILE).is_file() and any(self.source.glob("*/data.mdb"))
        ):
            self.kind = "cache"
            manifest = read_manifest(self.source)
            counts = {s: int(v.get("images", 0)) for s, v in manifest["splits"].items()}
            if counts.get(split, 0) == 0:
                raise _split_error(self.source, split, counts)
            meta = read_split_meta(self.source, split, manifest["splits"][split].get("index_sha256"))
            self._entries: list[dict[str, Any]] = meta["entries"]
        elif (self.source / DATASET_FILE).is_file():
            self.kind = "folder"
            records = read_dataset(self.source)
            mine = [r for r in records if r.split == split]
            if not mine:
                raise _split_error(self.source, split, {s: v["images"] for s, v in summarize(records).items()})
            self._entries = [
                {"path": r.path, "width": r.width, "height": r.height, "boxes": r.boxes, "healthy": r.healthy,
                 "kind": r.kind, "scale": 1.0, "stored_width": r.width, "stored_height": r.height, "masks": r.masks}
                for r in mine
            ]
        else:
            raise DataError(f"{self.source} is neither a dfudet LMDB cache "
                            f"({MANIFEST_FILE}, from `dfudet data prepare`) "
                            f"nor a dataset dir ({DATASET_FILE}, from `dfudet data import`)")
        self.healthy_flags: list[bool] = [bool(e["healthy"]) for e in self._entries]
        self._paste = self._paste_settings()

    def _paste_settings(self) -> dict[str, Any] | None:
        """Copy-paste settings from the training transform (None: off), refused when no photo has wound masks."""
        aug = self.transform.aug if self.transform is not None else None
        if not aug or (aug.get("copy_paste", 0.0) <= 0 and aug.get("copy_paste_healthy", 0.0) <= 0):
            return None
        donors = [i for i, e in enumerate(self._entries) if e.get("masks") and len(e["boxes"])]
        if not donors:
            raise ConfigError(
                f"{self.source} (split {self.split!r}): data.augment.copy_paste pastes wounds with their masks, but no "
                "photo of this split has wound masks (box-only data). Import the masks (`dfudet data import --format "
                "masks`, or COCO with segmentations) and prepare the cache again, or set data.augment.copy_paste=0 "
                "and data.augment.copy_paste_healthy=0")
        return {"ulcer": float(aug.get("copy_paste", 0.0)), "healthy": float(aug.get("copy_paste_healthy", 0.0)),
                "scale": (float(aug["copy_paste_scale_min"]), float(aug["copy_paste_scale_max"])), "donors": donors}

    # ------------------------------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        # Nothing process-bound is kept on the dataset (envs live in cache.open_env's per-process table), so
        # spawn workers receive plain data plus the shared-memory epoch tensor.
        return self.__dict__.copy()

    # ------------------------------------------------------------------------------------------ epoch
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch that seeds per-sample augmentation (shared with running workers)."""
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        """Current augmentation epoch."""
        return int(self._epoch.item())

    def sample_seed(self, i: int) -> int | None:
        """The augmentation seed of sample i in the current epoch (None when the dataset has no seed)."""
        if self.seed is None:
            return None
        return int(np.random.SeedSequence([int(self.seed), self.epoch, int(i)]).generate_state(1)[0])

    def _seed_transform(self, i: int) -> None:
        seed = self.sample_seed(i)
        if seed is None:
            # Unseeded: forked workers inherit identical generator states; give each worker its own once.
            pid = os.getpid()
            if self._seeded_pid != pid:
                self._seeded_pid = pid
                if torch.utils.data.get_worker_info() is not None:
                    seed = torch.initial_seed() % 2**32
            if seed is None:
                return
        transform = self.transform
        if transform is not None:
            transform.set_random_seed(seed)
        else:
            random.seed(seed)
            np.random.seed(seed)

    # ------------------------------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self._entries)

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, float]:
        """Decoded RGB image, boxes in that image, its (N, H, W) uint8 masks (None: box-only data) and the cache
        resize factor."""
        e = self._entries[i]
        if self.kind == "cache":
            header, data = read_entry(self.source, self.split, i, e)
            where = f"{self.source / self.split} entry {i} ({e['path']})"
            image = decode_image_bytes(data, where)
            boxes = np.asarray(header["boxes"], dtype=np.float32).reshape(-1, 4)
            return image, boxes, self._masks(header.get("masks"), image, where), float(header["scale"])
        image = load_image(e["path"])
        if image.shape[:2] != (e["height"], e["width"]):
            raise DataError(f"{e['path']}: image is {image.shape[1]}x{image.shape[0]} but the dataset record says "
                            f"{e['width']}x{e['height']}; re-import the dataset")
        boxes = np.asarray(e["boxes"], dtype=np.float32).reshape(-1, 4)
        return image, boxes, self._masks(e.get("masks"), image, e["path"]), 1.0

    @staticmethod
    def _masks(rles: list[dict[str, Any]] | None, image: np.ndarray, where: str) -> np.ndarray | None:
        if rles is None:
            return None
        try:
            return instance_masks.stack(rles, image.shape[1], image.shape[0])
        except (DataError, ValueError, TypeError, KeyError) as exc:
            raise DataError(f"{where}: unreadable wound mask ({exc})") from None

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n = len(self._entries)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for split {self.split!r} of {self.source} ({n} images)")
        i = int(i) % n
        image, boxes, masks, scale = self._load(i)
        healthy = self.healthy_flags[i]
        if self._paste is not None:
            image, boxes, masks, healthy = self._copy_paste(i, image, boxes, masks, healthy)
        if self.transform is not None:
            self._seed_transform(i)
            image, boxes, masks, extra = self.transform.with_masks(image, boxes, masks)
            scale *= float(extra)
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        target = {
            "boxes": torch.from_numpy(boxes.copy()),
            "labels": torch.ones(len(boxes), dtype=torch.int64),
            "image_id": torch.tensor(i, dtype=torch.int64),
            "healthy": torch.tensor(healthy, dtype=torch.bool),
            "scale": torch.tensor(scale, dtype=torch.float32),
        }
        if masks is not None:  # (N, H, W) uint8, one per box: what Mask R-CNN style heads train on
            target["masks"] = torch.from_numpy(np.ascontiguousarray(masks))
        return tensor, target

    def _copy_paste(self, i: int, image: np.ndarray, boxes: np.ndarray, masks: np.ndarray | None, healthy: bool
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, bool]:
        """Sample i with 1-2 wounds of other photos pasted on it (with probability copy_paste[_healthy])."""
        from dfudet.data.copy_paste import paste_wounds  # cv2-only module; imported when pasting is on

        assert self._paste is not None
        p = self._paste["healthy" if healthy else "ulcer"]
        if p <= 0 or (masks is None and len(boxes)):
            return image, boxes, masks, healthy
        seed = self.sample_seed(i)
        rng = np.random.default_rng(None if seed is None else [seed, 1])  # apart from the transform's generator
        if rng.random() >= p:
            return image, boxes, masks, healthy
        sources = []
        for _ in range(int(rng.integers(1, 3))):
            j = self._paste["donors"][int(rng.integers(len(self._paste["donors"])))]
            if j == i:  # wounds come from other photos
                continue
            d_image, _, d_masks, _ = self._load(j)
            if d_masks is None:
                continue
            big = np.flatnonzero(d_masks.reshape(len(d_masks), -1).sum(axis=1) >= PASTE_MIN_AREA)
            if len(big):
                sources.append((d_image, d_masks[int(big[int(rng.integers(len(big)))])]))
        if not sources:
            return image, boxes, masks, healthy
        lo, hi = self._paste["scale"]
        h, w = image.shape[:2]
        own = masks if masks is not None else np.zeros((0, h, w), np.uint8)
        r = paste_wounds(rng, image, own, sources, list(rng.uniform(lo, hi, size=len(sources))),
                         color_match=PASTE_COLOR_MATCH)
        return r.image, r.boxes, r.masks, False

    def record(self, i: int) -> dict[str, Any]:
        """Original-image facts of sample i (path, size, boxes in original pixels, healthy) without decoding."""
        e = self._entries[i]
        sx = e["stored_width"] / e["width"]
        sy = e["stored_height"] / e["height"]
        boxes = np.asarray(e["boxes"], dtype=np.float64).reshape(-1, 4) / np.array([sx, sy, sx, sy])
        return {"path": e["path"], "width": e["width"], "height": e["height"], "boxes": boxes.tolist(),
                "healthy": bool(e["healthy"]), "kind": e.get("kind", "photo"), "split": self.split,
                "has_masks": e.get("masks") is not None}


def collate_detection(
    batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]],
) -> tuple[list[torch.Tensor], list[dict]]:
    """Keep images of different sizes as a list (torchvision detectors batch them themselves)."""
    images = [b[0] for b in batch]
    targets = [b[1] for b in batch]
    return images, targets
