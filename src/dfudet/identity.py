"""ModelIdentity: which model a set of weights belongs to (model_name, backbone, img_size, num_classes).

Made once from a config (`dfudet.models.factory.model_identity(cfg)`, which knows whether the family takes a timm
backbone) and compared with `diff` wherever two descriptions of a model must agree: a checkpoint's top-level fields
and its config, a model and the `--config` asked for, a resumed run and its run dir, an ONNX sidecar. Nothing here
imports torch: the ONNX runtime reads its sidecar's identity with this module too.

`img_size` is the side the model was trained at; a backend may feed another one (`dfudet tune`), which is
`ModelInfo.img_size`, not part of the identity.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dfudet.errors import CheckpointError

if TYPE_CHECKING:  # typing only: the ONNX runtime imports this module without building a Config
    from dfudet.config import Config


@dataclass(frozen=True)
class ModelIdentity:
    """The four facts that decide whether weights fit a model and whose model they are."""

    model_name: str  # registry name (models/spec.py), e.g. fasterrcnn_efficientnet
    backbone: str  # the timm name for timm-backbone families, else the model's own name (see `of`)
    img_size: int  # the training input side in pixels
    num_classes: int  # background included

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The identity's keys, in the order they are stored and reported."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def of(cls, cfg: Config, timm_backbone: bool) -> ModelIdentity:
        """The identity of a config: the one place the backbone label rule is written.

        Args:
            cfg: the resolved run config.
            timm_backbone: whether the family builds its backbone from `model.backbone` (`ModelSpec.timm_backbone`);
                other families fix their own backbone, so `model.backbone` says nothing and the model name is used.

        Returns:
            The config's ModelIdentity.
        """
        m = cfg.model
        return cls(model_name=m.name, backbone=m.backbone if timm_backbone else m.name,
                   img_size=cfg.data.img_size, num_classes=m.num_classes)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (checkpoint top-level fields, ONNX sidecar, reports)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | Path) -> ModelIdentity:
        """Read the identity fields of `data` (extra keys are ignored), or a CheckpointError naming `source` and the
        field that is missing or of the wrong type."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                raise CheckpointError(f"{source}: the model identity field {f.name!r} is missing; write the file again "
                                      "with this version of dfudet")
            v = data[f.name]
            kind = str if f.name in ("model_name", "backbone") else int
            if not isinstance(v, kind) or isinstance(v, bool):
                raise CheckpointError(f"{source}: the model identity field {f.name!r} must be "
                                      f"{'a string' if kind is str else 'an integer'}, got {v!r}")
            values[f.name] = v
        return cls(**values)

    def diff(self, other: ModelIdentity, only: Iterable[str] | None = None) -> dict[str, tuple[Any, Any]]:
        """{field: (this value, the other's)} for every field (or every field in `only`) that differs."""
        names = self.field_names() if only is None else tuple(only)
        return {k: (getattr(self, k), getattr(other, k)) for k in names if getattr(self, k) != getattr(other, k)}


def describe(differences: Mapping[str, tuple[Any, Any]], this: str, other: str) -> str:
    """One line per difference, 'field: <this> has A, <other> has B', for the messages of every identity check."""
    return "\n  ".join(f"{k}: {this} has {a!r}, {other} has {b!r}" for k, (a, b) in differences.items())


def check_compatible(have: ModelIdentity, wanted: ModelIdentity, path: str | Path,
                     only: Iterable[str] | None = None) -> None:
    """Refuse a model (a checkpoint or an ONNX export at `path`) trained for another model than the one asked for.

    Args:
        have: the model's identity (`Backend.info.identity`).
        wanted: the identity asked for (e.g. `model_identity(load_config(--config))`).
        path: the model's file, named in the error.
        only: the fields to compare (default: all four; evaluate leaves out img_size: inputs are resized).

    Raises:
        CheckpointError: listing every differing field with both values.
    """
    differences = have.diff(wanted, only)
    if differences:
        raise CheckpointError(f"{path}: the model was trained for another model than the config asks for:\n  "
                              + describe(differences, "the model", "the config"))
