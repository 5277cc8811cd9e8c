"""dfudet: diabetic foot ulcer detection (train, evaluate, deploy)."""

from __future__ import annotations

import os as _os
from typing import TYPE_CHECKING as _TYPE_CHECKING

if _TYPE_CHECKING:
    from dfudet.api import Detector

# albumentations checks PyPI for updates at import time; this machine (and many clinics) are offline.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from dfudet.version import CLASS_NAMES, __version__

__all__ = ["CLASS_NAMES", "__version__", "load"]


def load(name_or_path: str | _os.PathLike[str] | None = None, device: str = "cpu",
         threshold: float | None = None) -> Detector:
    """Load a detector (a shipped model by name, a checkpoint or an ONNX file); see `dfudet.api.load`.

    Imported lazily so `import dfudet` stays light (no torch until a model is loaded).
    """
    from dfudet.api import load as _load

    return _load(name_or_path, device=device, threshold=threshold)
