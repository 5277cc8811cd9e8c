"""Shared fixtures: the real FUSeg data (skipped when absent) and small generated images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from dfudet.config import Config, load_config  # noqa: E402

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


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LMDB cache of 32 synthetic 96-px images (half ulcer, half healthy) with train/val/test splits."""
    from dfudet.data.cache import prepare_cache
    from dfudet.data.demo import generate_demo
    from dfudet.data.importers import import_dataset

    root = tmp_path_factory.mktemp("tiny")
    generate_demo(root / "raw", n=32, seed=3, size=96)
    anns = [root / "raw" / "annotations" / f"{s}.json" for s in ("train", "val", "test")]
    import_dataset("coco", images=root / "raw" / "images", annotations=anns, healthy=[root / "raw" / "healthy"],
                   out=root / "dataset")
    prepare_cache(root / "dataset", root / "cache", img_size=96)
    return root / "cache"


@pytest.fixture
def tiny_config():
    """Factory: tiny_config(cache, run_dir, *overrides) -> Config."""
    return _tiny_config


def _tiny_config(cache: Path, run_dir: Path, *overrides: str) -> Config:
    """A config that trains in about a second per epoch on CPU."""
    return load_config(None, [
        f"data.cache={cache}", f"run_dir={run_dir}", "data.img_size=96", "data.batch_size=2",
        "model.name=fasterrcnn_mobilenet_v3_large_320_fpn", "model.pretrained=false",
        "model.rpn_batch_size_per_image=32", "model.box_batch_size_per_image=32",
        "train.accelerator=cpu", "train.epochs=3", "train.limit_train_batches=2", "train.limit_val_batches=2",
        "train.threads=1", *overrides,
    ])
