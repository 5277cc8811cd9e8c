"""Shipped models: trained detectors that come with dfudet, so `dfudet predict PHOTOS` works right after install.

Each shipped model is a slim checkpoint (no optimizer state; weights in float32, with the largest layers as int8 rows
or everything in float16 where that is what fits the 25 MB every shipped model shares: `storage_dtype` says which)
under `src/dfudet/zoo/`, described by `zoo/index.json`: its name, file, SHA-256 of the whole file, what it returns,
what it was trained on, its licence and its test figures (docs/model_card.md tells the full story). The file's digest
is checked every time a shipped model is resolved, before torch reads a byte of it: a damaged or replaced file is a
one-line error naming the file and both digests. Nothing here imports torch (the listing must be instant, and the ONNX
path has none).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfudet.errors import CheckpointError, ConfigError
from dfudet.version import __version__

ZOO_DIR = Path(__file__).resolve().parents[1] / "zoo"
INDEX = ZOO_DIR / "index.json"
MODEL_CARD = "docs/model_card.md"
INDEX_ENV = "DFUDET_MODEL_INDEX"  # another index.json (a lab's own set of models), its files beside it
CACHE_ENV = "DFUDET_CACHE_DIR"  # where `dfudet predict` keeps the ONNX exports of shipped models
BUDGET_BYTES = 25_000_000  # 25 MB (decimal, as issue 33 sets it): every shipped model together


def index_path() -> Path:
    """The index in use: $DFUDET_MODEL_INDEX when set, else the one shipped with dfudet."""
    env = os.environ.get(INDEX_ENV, "").strip()
    return Path(env) if env else INDEX


@dataclass(frozen=True)
class ShippedModel:
    """One entry of zoo/index.json."""

    name: str
    file: str  # relative to the index's folder
    sha256: str  # of the whole file
    returns: str  # e.g. "boxes, outlines, areas"
    architecture: str
    training_data: str
    licence: str
    summary: str
    figures: dict[str, Any] = field(default_factory=dict)  # test figures as written in the model card
    default: bool = False

    def path(self, index: Path | None = None) -> Path:
        """Where the weight file lives (beside its index)."""
        return (index or index_path()).parent / self.file


def _read_index(index: Path) -> list[ShippedModel]:
    try:
        raw = json.loads(index.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{index}: the shipped-model index cannot be read ({exc})") from None
    try:
        return [ShippedModel(**entry) for entry in raw["models"]]
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{index}: the shipped-model index is malformed ({exc})") from None


def available(index: Path | None = None) -> list[ShippedModel]:
    """Every shipped model, the default first."""
    return sorted(_read_index(index or index_path()), key=lambda m: (not m.default, m.name))


def get(name: str | None = None, index: Path | None = None) -> ShippedModel:
    """The shipped model called `name` (None: the default one); an unknown name lists the known ones."""
    index = index or index_path()
    models = available(index)
    if not models:
        raise ConfigError(f"no shipped model is installed ({index} lists none); give --checkpoint or --onnx")
    if name is None:
        return models[0]
    for m in models:
        if m.name == name:
            return m
    raise ConfigError(f"unknown shipped model {name!r}; known: {', '.join(m.name for m in models)} "
                      "(`dfudet models` describes them)")


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve(name: str | None = None, index: Path | None = None) -> tuple[ShippedModel, Path]:
    """(entry, checked file path) of a shipped model: the file must exist and match the digest in the index."""
    index = index or index_path()
    model = get(name, index)
    path = model.path(index)
    if not path.is_file():
        raise CheckpointError(f"{path}: the shipped model {model.name!r} is missing (expected SHA-256 "
                              f"{model.sha256[:16]}...); reinstall dfudet or give --checkpoint")
    digest = file_sha256(path)
    if digest != model.sha256:
        raise CheckpointError(f"{path}: the shipped model {model.name!r} is damaged: SHA-256 {digest[:16]}... "
                              f"instead of {model.sha256[:16]}...; reinstall dfudet or give --checkpoint")
    return model, path


def cache_dir() -> Path:
    """dfudet's own cache: $DFUDET_CACHE_DIR, else $XDG_CACHE_HOME/dfudet, else ~/.cache/dfudet."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".cache") / "dfudet"


def onnx_cache_path(model: ShippedModel) -> Path:
    """Where the ONNX export of a shipped model is kept: named by the model, its file's digest and the dfudet version
    that exported it, so neither a replaced model file nor an upgraded exporter reuses an older export."""
    return cache_dir() / "onnx" / f"{model.name}-{model.sha256[:16]}-dfudet{__version__}.onnx"


def describe(model: ShippedModel) -> str:
    """Several lines for `dfudet models`: what it is, what it returns, data, licence, figures, digest."""
    lines = [f"{model.name}{'  (default)' if model.default else ''}",
             f"  {model.summary}",
             f"  returns      : {model.returns}",
             f"  architecture : {model.architecture}",
             f"  trained on   : {model.training_data}",
             f"  licence      : {model.licence}"]
    for key, value in model.figures.items():
        lines.append(f"  {key:<13}: {value}")
    lines += [f"  file         : {model.path()}", f"  sha256       : {model.sha256}",
              f"  model card   : {MODEL_CARD}"]
    return "\n".join(lines)
