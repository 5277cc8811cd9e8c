"""Checkpoint schema, atomic saving and safe loading (checkpoints are untrusted input: weights_only=True).

`best_model.pth` is a plain dict (documented in docs/checkpoints.md):
    epoch, model_state_dict, optimizer_state_dict, train_loss, val_loss, f1_score, mean_iou, precision, recall,
    composite_score, backbone, model_name, img_size, num_classes, score_threshold, operating_threshold, config,
    dfudet_version, format
Lightning's own `last.ckpt` (exact resume) is written through `AtomicCheckpointIO` and loaded with weights_only too.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from dfudet.errors import CheckpointError
from dfudet.models.factory import backbone_label
from dfudet.utils import atomic_write_with

BEST_FORMAT = "dfudet-best-v1"
BEST_KEYS = (
    "epoch",
    "model_state_dict",
    "optimizer_state_dict",
    "train_loss",
    "val_loss",
    "f1_score",
    "mean_iou",
    "precision",
    "recall",
    "composite_score",
    "backbone",
    "model_name",
    "img_size",
    "num_classes",
    "score_threshold",
    "operating_threshold",
    "config",
)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """torch.save to a temp file in the same dir, fsync, then rename: readers never see a partial file."""
    atomic_write_with(Path(path), lambda tmp: torch.save(obj, tmp))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes atomically (temp + rename) and loads with weights_only=True."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return safe_torch_load(Path(path), map_location=map_location or "cpu")


def safe_torch_load(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """torch.load with weights_only=True and errors that name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        obj = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt / unsafe pickles
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {str(exc)[:300]})") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: checkpoint holds a {type(obj).__name__}, expected a dict")
    return obj


def build_best_payload(**fields: Any) -> dict[str, Any]:
    """Assemble a best_model.pth dict and check that every schema key is present."""
    missing = [k for k in BEST_KEYS if k not in fields]
    if missing:
        raise ValueError(f"best checkpoint payload misses {missing}")
    from dfudet import __version__

    return {"format": BEST_FORMAT, "dfudet_version": __version__, **fields}


def load_for_inference(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load best_model.pth or a Lightning .ckpt into one normalised dict (config, model_state_dict, thresholds...)."""
    path = Path(path)
    ckpt = safe_torch_load(path)
    if ckpt.get("format") == BEST_FORMAT:
        missing = [k for k in BEST_KEYS if k not in ckpt]
        if missing:
            raise CheckpointError(f"{path}: best-model checkpoint misses keys {missing}")
        return ckpt
    if "state_dict" in ckpt and "hyper_parameters" in ckpt:
        hp = ckpt["hyper_parameters"]
        config = hp.get("config") if isinstance(hp, dict) else None
        if not isinstance(config, dict):
            raise CheckpointError(f"{path}: Lightning checkpoint without a dfudet config (not trained by dfudet?)")
        prefix = "model."
        state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        extra = ckpt.get("dfudet", {}) if isinstance(ckpt.get("dfudet"), dict) else {}
        return {
            "format": "lightning",
            "epoch": ckpt.get("epoch"),
            "model_state_dict": state,
            "config": config,
            "backbone": backbone_label(config["model"]["name"], config["model"]["backbone"]),
            "model_name": config["model"]["name"],
            "img_size": config["data"]["img_size"],
            "num_classes": config["model"]["num_classes"],
            "score_threshold": config["train"]["score_threshold"],
            "operating_threshold": extra.get("operating_threshold", config["train"]["score_threshold"]),
        }
    raise CheckpointError(
        f"{path}: not a dfudet checkpoint (expected best_model.pth with format {BEST_FORMAT!r} or a Lightning .ckpt)"
    )


def check_compatible(ckpt: dict[str, Any], path: Path, model_name: str | None, backbone: str | None,
                     img_size: int | None, num_classes: int | None) -> None:
    """Raise a clear error when a checkpoint was trained for another model than the one asked for."""
    wanted = {"model_name": model_name, "backbone": backbone, "img_size": img_size, "num_classes": num_classes}
    diffs = [f"{k}: checkpoint has {ckpt.get(k)!r}, config asks for {v!r}" for k, v in wanted.items()
             if v is not None and ckpt.get(k) != v]
    if diffs:
        raise CheckpointError(f"{path}: checkpoint is from another model:\n  " + "\n  ".join(diffs))
