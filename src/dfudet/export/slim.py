"""A deployable checkpoint: the kept model without its optimizer state (what to copy to a clinic machine).

`best_model.pth` carries the optimizer state of its epoch so training can be inspected or continued; for AdamW that
is two more tensors per weight (about 3x the file). Predict, evaluate, export and serve need only the weights, the
config and the thresholds: `dfudet export --format pth` writes exactly that, in the same `best_model.pth` schema
(`optimizer_state_dict` empty, `slim: true`), so every command reads it unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dfudet.checkpoint import BEST_FORMAT, atomic_torch_save, build_best_payload, load_for_inference
from dfudet.errors import CheckpointError
from dfudet.metrics.scores import ValidationScores


def export_slim(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str]) -> dict[str, Any]:
    """Write `out`: the checkpoint's weights, config and thresholds without optimizer state; returns sizes."""
    src, dst = Path(checkpoint), Path(out)
    if src.resolve() == dst.resolve():
        raise CheckpointError(f"{dst}: --out must differ from --checkpoint (the original is kept)")
    ckpt = load_for_inference(src)
    # a Lightning .ckpt has no val scores of its own: recorded as unknown (NaN), not invented
    scores = ckpt.scores or ValidationScores.unknown(ckpt.operating_threshold, ckpt.config.train.selection_threshold)
    payload = build_best_payload(epoch=ckpt.epoch if ckpt.epoch is not None else -1,
                                 model_state_dict=ckpt.model_state_dict, optimizer_state_dict={}, scores=scores,
                                 config=ckpt.config)
    payload["slim"] = True
    payload["source_checkpoint"] = src.name
    atomic_torch_save(payload, dst)
    return {"out": str(dst), "bytes_in": src.stat().st_size, "bytes_out": dst.stat().st_size,
            "format": BEST_FORMAT, "from_lightning": ckpt.format == "lightning"}
