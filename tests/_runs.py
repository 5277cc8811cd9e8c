"""Helpers for tests that run `dfudet train` through the command line (tests/ is on sys.path via conftest.py)."""

from __future__ import annotations

from pathlib import Path

from dfudet.config import Config, save_config


def write_config(path: Path, cfg: Config) -> Path:
    """cfg as a YAML file for `dfudet train --config` (the CLI reads a file; tests build configs with overrides)."""
    save_config(cfg, path)
    return path
