"""The package version and class names, in a module of their own so that every layer can read them without
importing the package root (whose `dfudet.load` reaches up to the Python API)."""

from __future__ import annotations

__version__ = "0.2.0"  # CHANGELOG.md says what changed
CLASS_NAMES = ("background", "ulcer")
