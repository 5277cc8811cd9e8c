"""A deployable checkpoint: the kept model without its optimizer state (what to copy to a clinic machine).

`best_model.pth` carries the optimizer state of its epoch so training can be inspected or continued; for AdamW that
is two more tensors per weight (about 3x the file). Predict, evaluate, export and serve need only the weights, the
config and the thresholds: `dfudet export --format pth` writes exactly that, in the same `best_model.pth` schema
(`optimizer_state_dict` empty, `slim: true`), so every command reads it unchanged.

`half=True` stores the floating-point weights as float16 (`storage_dtype: "float16"`; integer buffers stay as they
are): half the size again, which is how the shipped models fit in the repository. The weights' digest is of the
stored float16 tensors, and loading casts them back to float32 (`load_state_dict` copies into the float32 model), so
every backend computes in float32 as before; the shipped model's parity with its float32 original is measured in
docs/model_card.md.

`int8=(key, ...)` stores those weights (2-D or more; a convolution's rows are its output channels) as int8 with one
float32 scale per output row (weight-only quantization, `checkpoint.int8_rows`; loading turns them back into float32).
Meant for the few layers that hold most of a model's bytes while moving its predictions least: a Mask R-CNN's box-head
fully connected layers (`BOX_HEAD_FC`) are 7.5 M of the shipped Lite0 model's 11.9 M weights, and only score the
proposals, which stay exact. A Mask R-CNN's mask-head convolutions (`mask_head_convs(state)`) draw the outlines inside
boxes already chosen: stored as int8 they leave every box and score exactly as they were and move only outline edges.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path, PureWindowsPath
from typing import Any

import torch

from dfudet.checkpoint import (
    BEST_FORMAT,
    INT8_SCALE,
    atomic_torch_save,
    build_best_payload,
    int8_rows,
    load_for_inference,
)
from dfudet.errors import CheckpointError
from dfudet.metrics.scores import ValidationScores

# the two fully connected layers of torchvision's box head (Faster/Mask R-CNN): the usual choice for `int8=`
BOX_HEAD_FC = ("roi_heads.box_head.fc6.weight", "roi_heads.box_head.fc7.weight")
# the convolutions of torchvision's MaskRCNNHeads (`mask_head.convs` of them: roi_heads.mask_head.<i>.0.weight)
_MASK_HEAD_CONV = re.compile(r"roi_heads\.mask_head\.\d+\.0\.weight")


def mask_head_convs(state: dict[str, Any]) -> tuple[str, ...]:
    """The state-dict keys of a Mask R-CNN's mask-head convolution weights (empty for a box-only model).

    Example:
        >>> export_slim(ckpt, out, int8=(*BOX_HEAD_FC, *mask_head_convs(load_for_inference(ckpt).model_state_dict)))
    """
    return tuple(k for k in state if _MASK_HEAD_CONV.fullmatch(k))


def int8_state(state: dict[str, Any], keys: Sequence[str], path: Path) -> dict[str, Any]:
    """The state dict with each of `keys` (2-D or larger float weights) stored as int8 + per-row scales."""
    out = dict(state)
    for key in keys:
        w = state.get(key)
        if not isinstance(w, torch.Tensor) or not w.is_floating_point() or w.ndim < 2:
            raise CheckpointError(f"{path}: cannot store {key!r} as int8: the model has no such float weight of 2 or "
                                  "more dimensions")
        out[key], out[key + INT8_SCALE] = int8_rows(w)
    return out


def half_state(state: dict[str, Any]) -> dict[str, Any]:
    """The state dict with every floating-point tensor stored as float16 (integer buffers unchanged)."""
    return {k: v.half() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in state.items()}


# models.weights.WeightSource.describe(): "KIND: WHERE (N tensors, mapped HOW)"; for a package WHERE is "NAME (PATH)"
_SOURCE = re.compile(r"^(?P<kind>[\w-]+): (?P<where>.*) (?P<tail>\(\d+ tensors, mapped [^()]*\))$")
_PACKAGE = re.compile(r"^(?P<name>\S+) \((?P<path>.*)\)$")


def without_directories(text: str | None) -> str | None:
    """A weights_source description with its paths cut to their file names: a slim copy goes to other machines and
    must not carry the training machine's directories (user names, mount points). Hub ids are kept as they are; a
    description of another shape is not kept at all (it could hold anything)."""
    if text is None:
        return None
    m = _SOURCE.match(text)
    if m is None:
        return "not recorded in this copy"
    kind, where = m["kind"], m["where"]
    if kind == "package" and (pkg := _PACKAGE.match(where)):
        where = f"{pkg['name']} ({PureWindowsPath(pkg['path']).name})"
    elif kind != "hub":  # file, timm-cache: a path (PureWindowsPath splits on both / and \\)
        where = PureWindowsPath(where).name
    return f"{kind}: {where} {m['tail']}"


def export_slim(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], half: bool = False,
                int8: Sequence[str] = ()) -> dict[str, Any]:
    """Write `out`: the checkpoint's weights, config and thresholds without optimizer state; returns sizes.

    Args:
        checkpoint: best_model.pth, tuned_model.pth or a Lightning .ckpt.
        out: the file to write (must differ from `checkpoint`).
        half: store floating-point weights as float16 (half the size; computed in float32 at load).
        int8: state-dict keys of weights to store as int8 with per-row scales (e.g. `BOX_HEAD_FC`).

    Returns:
        {"out", "bytes_in", "bytes_out", "format", "from_lightning", "storage_dtype"}.
    """
    src, dst = Path(checkpoint), Path(out)
    if src.resolve() == dst.resolve():
        raise CheckpointError(f"{dst}: --out must differ from --checkpoint (the original is kept)")
    ckpt = load_for_inference(src)
    # a Lightning .ckpt has no val scores of its own: recorded as unknown (NaN), not invented
    scores = ckpt.scores or ValidationScores.unknown(ckpt.operating_threshold, ckpt.config.train.selection_threshold)
    state = half_state(ckpt.model_state_dict) if half else ckpt.model_state_dict
    if int8:
        state = int8_state(state, int8, src)
    payload = build_best_payload(epoch=ckpt.epoch if ckpt.epoch is not None else -1,
                                 model_state_dict=state, optimizer_state_dict={}, scores=scores,
                                 config=ckpt.config, calibration=ckpt.calibration,
                                 review_threshold=ckpt.review_threshold,
                                 weights_source=without_directories(ckpt.weights_source))
    payload["slim"] = True
    payload["source_checkpoint"] = src.name
    payload["storage_dtype"] = ("float16" if half else "float32") + (" + int8 rows" if int8 else "")
    if int8:
        payload["int8_weights"] = list(int8)
    atomic_torch_save(payload, dst)
    return {"out": str(dst), "bytes_in": src.stat().st_size, "bytes_out": dst.stat().st_size,
            "format": BEST_FORMAT, "from_lightning": ckpt.format == "lightning",
            "storage_dtype": payload["storage_dtype"]}
