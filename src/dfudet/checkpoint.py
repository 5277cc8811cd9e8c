"""Checkpoint schema, atomic saving, integrity digests and safe loading (checkpoints are untrusted input:
weights_only=True). No Lightning here: training, inference, export and serve all read checkpoints through this
module, and deployment must not import the training stack.

`best_model.pth` is a plain dict (documented in docs/checkpoints.md):
    epoch, model_state_dict, optimizer_state_dict, train_loss, val_loss, f1_score, mean_iou, precision, recall,
    composite_score, backbone, model_name, img_size, num_classes, score_threshold, operating_threshold, config,
    dfudet_version, format
Lightning's own `last.ckpt` (exact resume) is written through `engine.checkpoint_io.AtomicCheckpointIO`, which
uses this module, and loaded with weights_only too.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dfudet.errors import CheckpointError
from dfudet.models.factory import backbone_label
from dfudet.utils import atomic_write_with, disk_free_text, is_disk_full, torch_load_reason

log = logging.getLogger("dfudet")
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


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """torch.save to a temp file in the same dir, fsync, then rename: readers never see a partial file.

    A full disk is a CheckpointError naming the file and the space (torch's own message names neither); the
    previous file of that name is untouched.
    """
    path = Path(path)
    try:
        atomic_write_with(path, lambda tmp: torch.save(obj, tmp))
    except (OSError, RuntimeError) as exc:
        if not is_disk_full(exc):
            raise
        raise CheckpointError(
            f"{path}: could not write the checkpoint, no space left on the device ({disk_free_text(path.parent)}; it "
            f"needs about {_tensor_bytes(obj) / 1e6:.0f} MB); the previous {path.name}, if any, is intact"
        ) from None


def safe_torch_load(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """torch.load with weights_only=True and errors that name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    data = b""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        obj = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt / unsafe pickles
        raise CheckpointError(f"{path}: not a dfudet checkpoint, or a damaged one: "
                              f"{torch_load_reason(exc, data[:16] or None)}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: checkpoint holds a {type(obj).__name__}, expected a dict")
    return obj


def state_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 over a state dict's names, dtypes, shapes and bytes (key order independent).

    Written with every checkpoint and checked at load: damage inside the tensor data (which torch.load does not
    notice) would otherwise load silently and predict nonsense.
    """
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key]
        h.update(key.encode("utf-8"))
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(t).encode("utf-8"))
    return h.hexdigest()


def config_digest(config: Any) -> str:
    """SHA-256 of the config as canonical JSON."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def verify_weights(state: Mapping[str, Any], path: Path, expected: str | None, what: str = "weights") -> None:
    """Refuse damaged or non-finite weights with an error naming the file; accept old files without a digest."""
    if expected is not None and state_digest(state) != expected:
        raise CheckpointError(
            f"{path}: the checkpoint is damaged: its {what} do not match the SHA-256 digest written with them "
            "(the file was changed or corrupted after it was saved); use an intact copy or the run's other checkpoint"
        )
    for key, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{path}: the checkpoint holds non-finite {what} (NaN or inf in {key}); "
                                  "it cannot predict anything useful")
    if expected is None:
        log.info("%s: written before checkpoints carried a digest; loaded without an integrity check", path)


def build_best_payload(**fields: Any) -> dict[str, Any]:
    """Assemble a best_model.pth dict (with the digests of its weights and config) and check the schema keys."""
    missing = [k for k in BEST_KEYS if k not in fields]
    if missing:
        raise ValueError(f"best checkpoint payload misses {missing}")
    from dfudet import __version__

    return {"format": BEST_FORMAT, "dfudet_version": __version__, **fields,
            "weights_sha256": state_digest(fields["model_state_dict"]),
            "config_sha256": config_digest(fields["config"])}


def load_for_inference(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load best_model.pth or a Lightning .ckpt into one normalised dict (config, model_state_dict, thresholds...)."""
    path = Path(path)
    ckpt = safe_torch_load(path)
    if ckpt.get("format") == BEST_FORMAT:
        missing = [k for k in BEST_KEYS if k not in ckpt]
        if missing:
            raise CheckpointError(f"{path}: best-model checkpoint misses keys {missing}")
        verify_weights(ckpt["model_state_dict"], path, ckpt.get("weights_sha256"))
        if ckpt.get("config_sha256") is not None and config_digest(ckpt["config"]) != ckpt["config_sha256"]:
            raise CheckpointError(f"{path}: the checkpoint is damaged: its config does not match the digest written "
                                  "with it")
        return ckpt
    if "state_dict" in ckpt and "hyper_parameters" in ckpt:
        hp = ckpt["hyper_parameters"]
        config = hp.get("config") if isinstance(hp, dict) else None
        if not isinstance(config, dict):
            raise CheckpointError(f"{path}: Lightning checkpoint without a dfudet config (not trained by dfudet?)")
        extra = ckpt.get("dfudet", {}) if isinstance(ckpt.get("dfudet"), dict) else {}
        verify_weights(ckpt["state_dict"], path, extra.get("weights_sha256"))
        prefix = "model."
        state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
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
