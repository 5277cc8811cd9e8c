"""Fixtures for the service tests: a briefly trained demo checkpoint (distinct scores) and encoded demo photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _checkpoints import train_demo_checkpoint
from dfudet.data.demo import render_sample


@pytest.fixture(scope="session")
def served_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """best_model.pth after 3 SGD steps on demo images (untrained heads tie every score at 0.50), threshold 0.3."""
    return train_demo_checkpoint(tmp_path_factory.mktemp("serve") / "best_model.pth")


@pytest.fixture(scope="session")
def outline_checkpoint(mask_checkpoint: Path) -> Path:
    """A small Mask R-CNN best_model.pth (an outline model: each detection has a mask), threshold 0.3."""
    return mask_checkpoint


@pytest.fixture(scope="session")
def demo_photos() -> list[np.ndarray]:
    """Six demo photos of different sizes (ulcer and healthy)."""
    return [render_sample(3, i, 96 + 16 * i, healthy=i % 3 == 2).image for i in range(6)]
