"""Lightning's checkpoint IO for last.ckpt: atomic writes and safe, verified loading (dfudet.checkpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from dfudet.checkpoint import atomic_torch_save, safe_torch_load, verify_weights


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes atomically (temp + rename) and loads with weights_only=True."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        ckpt = safe_torch_load(Path(path), map_location=map_location or "cpu")
        raw = ckpt.get("dfudet")
        extra: dict[str, Any] = raw if isinstance(raw, dict) else {}
        if isinstance(ckpt.get("state_dict"), dict):  # resume: refuse a damaged last.ckpt instead of training on it
            verify_weights(ckpt["state_dict"], Path(path), extra.get("weights_sha256"))
        if isinstance(ckpt.get("current_model_state"), dict):  # EMA runs: the raw weights training resumes from
            verify_weights(ckpt["current_model_state"], Path(path), extra.get("current_weights_sha256"),
                           what="raw (not averaged) weights")
        return ckpt
