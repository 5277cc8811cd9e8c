"""dfudet: diabetic foot ulcer detection (train, evaluate, deploy)."""

import os as _os

# albumentations checks PyPI for updates at import time; this machine (and many clinics) are offline.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
CLASS_NAMES = ("background", "ulcer")
