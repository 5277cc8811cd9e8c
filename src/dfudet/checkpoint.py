"""Checkpoint schema, atomic saving, integrity digests and safe loading (checkpoints are untrusted input:
weights_only=True). No Lightning here: training, inference, export and serve all read checkpoints through this
module, and deployment must not import the training stack.

`best_model.pth` is a plain dict (documented in docs/checkpoints.md), format "dfudet-best-v3":
    epoch, model_state_dict, optimizer_state_dict, the ValidationScores fields (train_loss, val_loss, precision,
    recall, f1, mean_iou, composite, tp, fp, fn, selection_threshold, operating_threshold, composite_at_operating,
    ap50, ap50_95, lr), config (the whole resolved run config), model_name, backbone, img_size, num_classes (the
    ModelIdentity derived from that config, kept at the top level so a reader sees whose model it is without
    dfudet; checked against the config at load), weights_source, dfudet_version, format, origin, weights_sha256,
    config_sha256.
`load_for_inference` returns a typed `LoadedCheckpoint` (the Config validated once, its identity made once) for v3
files and for Lightning's last.ckpt; any other format is refused with one error naming the file and the format.
Lightning's own `last.ckpt` (exact resume) is written through `engine.checkpoint_io.AtomicCheckpointIO`, which
uses this module, and loaded with weights_only too.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from dfudet.confidence import Calibration, calibration_of, review_threshold_of
from dfudet.config import Config, config_to_dict
from dfudet.errors import CheckpointError, ConfigError
from dfudet.identity import ModelIdentity, describe
from dfudet.metrics.scores import ValidationScores
from dfudet.models.factory import model_identity
from dfudet.utils import atomic_write_with, disk_free_text, is_disk_full, torch_load_reason
from dfudet.version import __version__

log = logging.getLogger("dfudet")
BEST_FORMAT = "dfudet-best-v3"


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
    previous file of that name is untouched. Equal content gives equal bytes: torch names the archive's inner folder
    after the file it is given, so it is handed an open file (folder "archive"), not the temp file's random name.
    """
    path = Path(path)

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)

    try:
        atomic_write_with(path, save)
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


INT8_SCALE = ".int8_scale"  # state key suffix: the float32 per-row scales of a weight stored as int8 (slim copies)


def int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight as symmetric int8 per output row (weight-only storage): q = round(w / s), s = max|row| / 127.

    Returns (q, s): int8 of the weight's shape and one float32 scale per row; q * s is within s / 2 of w.
    """
    w = weight.detach().to(torch.float32)
    rows = w.reshape(w.shape[0], -1)
    scale = rows.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127
    q = torch.round(rows / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.reshape(w.shape), scale


def dequantized(state: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The state dict with every int8-stored weight (beside its `INT8_SCALE` key) back in float32; other entries
    as they are. A scale without its weight, or a weight of the wrong kind beside a scale, is refused naming both."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if key.endswith(INT8_SCALE):
            if key[: -len(INT8_SCALE)] not in state:
                raise CheckpointError(f"{path}: the checkpoint holds {key} but no {key[: -len(INT8_SCALE)]}: damaged")
            continue
        scale = state.get(key + INT8_SCALE)
        if scale is None:
            out[key] = value
            continue
        if (not isinstance(value, torch.Tensor) or value.dtype != torch.int8 or not isinstance(scale, torch.Tensor)
                or value.ndim < 2 or tuple(scale.shape) != (value.shape[0],)):
            raise CheckpointError(f"{path}: {key} is stored with an int8 scale but is not an int8 weight with one "
                                  "scale per row: damaged")
        rows = value.to(torch.float32).reshape(value.shape[0], -1) * scale.to(torch.float32)[:, None]
        out[key] = rows.reshape(value.shape)
    return out


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


ORIGINS = ("train", "untrained", "external")


def build_best_payload(*, epoch: int, model_state_dict: Mapping[str, Any], optimizer_state_dict: Mapping[str, Any],
                       scores: ValidationScores, config: Config, origin: str = "train",
                       calibration: Calibration | None = None, review_threshold: float | None = None,
                       weights_source: str | None = None) -> dict[str, Any]:
    """A best_model.pth dict (format v3): the whole config once, its identity at the top level, and the digests of
    the weights and of the config. `origin`: "train" (kept by `dfudet train`), "untrained" (the `--baseline` model)
    or "external" (weights saved with `save_model_checkpoint`). `weights_source` says where the pretrained backbone
    came from (a run output). `calibration` and `review_threshold` (chosen on val by `dfudet tune`) are stored when
    given."""
    if origin not in ORIGINS:
        raise ValueError(f"origin must be one of {ORIGINS}, got {origin!r}")
    stored = config_to_dict(config)
    payload = {"format": BEST_FORMAT, "dfudet_version": __version__, "origin": origin, "epoch": int(epoch),
               "model_state_dict": dict(model_state_dict), "optimizer_state_dict": dict(optimizer_state_dict),
               **scores.as_dict(), **model_identity(config).as_dict(), "config": stored,
               "weights_source": weights_source,
               "weights_sha256": state_digest(model_state_dict), "config_sha256": config_digest(stored)}
    if calibration is not None:
        payload["calibration"] = calibration.as_dict()
    if review_threshold is not None:
        payload["review_threshold"] = float(review_threshold)
    return payload


def save_model_checkpoint(path: str | os.PathLike[str], model_state_dict: Mapping[str, Any], config: Config, *,
                          operating_threshold: float = 0.5, epoch: int = -1,
                          scores: ValidationScores | None = None) -> dict[str, Any]:
    """Write weights as a best_model.pth-format file that predict/evaluate/export/serve read, e.g. a model trained
    outside `dfudet train`; val scores not given are recorded as unknown (NaN), never invented."""
    payload = build_best_payload(
        epoch=epoch, model_state_dict=model_state_dict, optimizer_state_dict={}, config=config, origin="external",
        scores=scores or ValidationScores.unknown(operating_threshold, config.train.selection_threshold))
    atomic_torch_save(payload, path)
    return payload


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint read for inference: typed config, its identity, weights, thresholds and (if recorded) the val
    scores."""

    path: Path
    format: str  # "dfudet-best-v3" or "lightning"
    config: Config
    identity: ModelIdentity  # made once from `config` (and checked against the file's top-level fields)
    model_state_dict: dict[str, torch.Tensor]
    epoch: int | None
    operating_threshold: float  # chosen on val; predict/evaluate/serve use it unless told otherwise
    scores: ValidationScores | None  # None for a Lightning last.ckpt (no kept-model scores in it)
    dfudet_version: str | None = None
    slim: bool = False
    origin: str = "train"  # "train", "untrained" (--baseline), "external" (save_model_checkpoint), "lightning"
    calibration: Calibration | None = None  # score -> probability, fitted on val by `dfudet tune`
    review_threshold: float | None = None  # the triage band's lower edge, chosen on val by `dfudet tune`
    weights_source: str | None = None  # where the pretrained backbone came from (None: not recorded / random init)


def _validated(path: Path, raw: Any) -> tuple[Config, ModelIdentity]:
    """The checkpoint's config, validated, and its identity (made here once)."""
    try:
        cfg = Config.model_validate(raw)
    except (ValidationError, TypeError) as exc:
        raise CheckpointError(f"{path}: the config stored in the checkpoint is invalid ({str(exc)[:300]})") from None
    try:
        return cfg, model_identity(cfg)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: the checkpoint's model is unknown to this dfudet: {exc}") from None


def _scores_of(ckpt: Mapping[str, Any]) -> ValidationScores:
    values: dict[str, Any] = {}
    for name in ValidationScores.field_names():
        v = ckpt.get(name)
        values[name] = float(v) if isinstance(v, (int, float)) else math.nan  # not recorded: unknown
    for name in ("tp", "fp", "fn"):
        values[name] = int(values[name]) if math.isfinite(values[name]) else -1
    return ValidationScores(**values)


def _load_best(path: Path, ckpt: Mapping[str, Any]) -> LoadedCheckpoint:
    """A v3 best_model.pth: digests, then the config, then its identity against the top-level fields."""
    needed = ["epoch", "model_state_dict", "config", "operating_threshold", "origin", *ModelIdentity.field_names()]
    missing = [k for k in needed if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: best-model checkpoint misses keys {missing}")
    verify_weights(ckpt["model_state_dict"], path, ckpt.get("weights_sha256"))
    if not isinstance(ckpt["config"], dict):
        raise CheckpointError(f"{path}: the checkpoint's config is a {type(ckpt['config']).__name__}, not a dict")
    if ckpt.get("config_sha256") is not None and config_digest(ckpt["config"]) != ckpt["config_sha256"]:
        raise CheckpointError(f"{path}: the checkpoint is damaged: its config does not match the digest written "
                              "with it")
    cfg, identity = _validated(path, ckpt["config"])
    differences = ModelIdentity.from_dict(ckpt, path).diff(identity)
    if differences:  # derived from the config when written: a difference means the file was edited or damaged
        raise CheckpointError(f"{path}: the checkpoint's top-level model identity disagrees with its config (the file "
                              "was edited or damaged; use an intact copy):\n  "
                              + describe(differences, "the top level", "the config"))
    source = ckpt.get("weights_source")
    return LoadedCheckpoint(
        path=path, format=BEST_FORMAT, config=cfg, identity=identity,
        model_state_dict=dequantized(ckpt["model_state_dict"], path),
        epoch=int(ckpt["epoch"]), operating_threshold=float(ckpt["operating_threshold"]), scores=_scores_of(ckpt),
        dfudet_version=ckpt.get("dfudet_version"), slim=bool(ckpt.get("slim")), origin=str(ckpt.get("origin")),
        calibration=calibration_of(ckpt, path), review_threshold=review_threshold_of(ckpt, path),
        weights_source=str(source) if source is not None else None)


def _load_lightning(path: Path, ckpt: Mapping[str, Any]) -> LoadedCheckpoint:
    """A Lightning last.ckpt written by dfudet: the config in its hyper_parameters, dfudet's extras beside it."""
    hp = ckpt["hyper_parameters"]
    config = hp.get("config") if isinstance(hp, dict) else None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: Lightning checkpoint without a dfudet config (not trained by dfudet?)")
    extra = ckpt.get("dfudet", {}) if isinstance(ckpt.get("dfudet"), dict) else {}
    verify_weights(ckpt["state_dict"], path, extra.get("weights_sha256"))
    cfg, identity = _validated(path, config)
    prefix = "model."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    source = extra.get("weights_source")
    return LoadedCheckpoint(
        path=path, format="lightning", config=cfg, identity=identity, model_state_dict=state,
        epoch=ckpt.get("epoch"), scores=None, origin="lightning",
        operating_threshold=float(extra.get("operating_threshold", cfg.train.selection_threshold)),
        weights_source=str(source) if source is not None else None)


def load_for_inference(path: str | os.PathLike[str]) -> LoadedCheckpoint:
    """Load a best_model.pth (format v3) or a Lightning .ckpt of dfudet into one typed LoadedCheckpoint.

    Any other file is refused with one error naming it and the format it holds (formats before v3 were never
    released: such a file is written again with this version, e.g. by `save_model_checkpoint`)."""
    path = Path(path)
    ckpt = safe_torch_load(path)
    fmt = ckpt.get("format")
    if fmt == BEST_FORMAT:
        return _load_best(path, ckpt)
    if fmt is None and "state_dict" in ckpt and "hyper_parameters" in ckpt:
        return _load_lightning(path, ckpt)
    found = f"format {fmt!r}" if fmt is not None else "no 'format' key and no Lightning state"
    raise CheckpointError(f"{path}: not a checkpoint this dfudet reads ({found}); it reads best_model.pth files of "
                          f"format {BEST_FORMAT!r} and Lightning .ckpt files written by `dfudet train`")
