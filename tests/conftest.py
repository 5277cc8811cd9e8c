"""Shared fixtures: the real FUSeg data (skipped when absent) and small generated images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DFUDET_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def fuseg_dir() -> Path:
    """../shared/data/fuseg (real foot-ulcer photos, COCO), or skip when it is not there."""
    d = SHARED_DATA / "fuseg"
    if not (d / "annotations" / "train.json").is_file():
        pytest.skip(f"real FUSeg data not found at {d}")
    return d


@pytest.fixture(autouse=True)
def _restore_pixel_limit():
    """`dfudet ... --max-pixels N` sets the process-wide limit; each test starts from the same one."""
    from dfudet.data import checks

    before = checks.max_pixels()
    yield
    checks.set_max_pixels(before)
