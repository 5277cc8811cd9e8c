"""Shared fixtures: the real FUSeg data (skipped when absent) and small generated images."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n N` (make test): the N workers share the cores, so each (and every process it starts) runs torch with
    # one thread; several multi-threaded torch processes on 2 cores spin against each other (a step went 1.1 -> 8 s)
    os.environ["OMP_NUM_THREADS"] = "1"

from _require import skip_or_fail  # noqa: E402
from dfudet.config import Config, load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DFUDET_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def fuseg_dir() -> Path:
    """../shared/data/fuseg (real foot-ulcer photos, COCO), or skip when it is not there (fail under
    DFUDET_REQUIRE_FULL=1, as in CI)."""
    d = SHARED_DATA / "fuseg"
    if not (d / "annotations" / "train.json").is_file():
        skip_or_fail(f"real FUSeg data not found at {d}")
    return d


@pytest.fixture(scope="session")
def mask_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one small Mask R-CNN best_model.pth (3 SGD steps on demo images, threshold 0.3) that the outline tests
    read: trained once per test process. Tests must not write next to it."""
    from _checkpoints import MASK_OVERRIDES, train_demo_checkpoint

    return train_demo_checkpoint(tmp_path_factory.mktemp("mask-model") / "best_model.pth", overrides=MASK_OVERRIDES)


@pytest.fixture(scope="session")
def mask_onnx(mask_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mask_checkpoint exported to ONNX (MODEL.onnx + its MODEL.json), once per test process."""
    from dfudet.export.onnx import export_onnx

    path = tmp_path_factory.mktemp("mask-onnx") / "maskrcnn.onnx"
    export_onnx(mask_checkpoint, path)
    return path


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory):
    """dfudet's cache (the ONNX copies of shipped models that `predict` makes) goes to a temp folder, never to the
    user's ~/.cache: one per test process, so the shipped model is exported at most once per worker."""
    os.environ["DFUDET_CACHE_DIR"] = str(tmp_path_factory.mktemp("dfudet-cache"))
    yield


@pytest.fixture(autouse=True)
def _restore_pixel_limit():
    """`dfudet ... --max-pixels N` sets the process-wide limit; each test starts from the same one."""
    from dfudet.data import checks

    before = checks.max_pixels()
    yield
    checks.set_max_pixels(before)


def _demo_data(root: Path, n: int, seed: int, cache_size: int) -> dict[str, Path]:
    """n synthetic 96-px images (raw COCO + healthy photos) under root/raw, imported into root/dataset with
    train/val/test splits, and an LMDB cache of it at cache_size in root/cache."""
    from dfudet.data.cache import prepare_cache
    from dfudet.data.demo import generate_demo
    from dfudet.data.importers import import_dataset

    generate_demo(root / "raw", n=n, seed=seed, size=96)
    anns = [root / "raw" / "annotations" / f"{s}.json" for s in ("train", "val", "test")]
    import_dataset("coco", images=root / "raw" / "images", annotations=anns, healthy=[root / "raw" / "healthy"],
                   out=root / "dataset")
    prepare_cache(root / "dataset", root / "cache", img_size=cache_size)
    return {"raw": root / "raw", "dataset": root / "dataset", "cache": root / "cache"}


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LMDB cache of 32 synthetic 96-px images (half ulcer, half healthy) with train/val/test splits, at 96 px."""
    return _demo_data(tmp_path_factory.mktemp("tiny"), n=32, seed=3, cache_size=96)["cache"]


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """16 synthetic 96-px images imported into a dataset dir, plus an LMDB cache of it at img_size 64."""
    return _demo_data(tmp_path_factory.mktemp("demo"), n=16, seed=1, cache_size=64)


@pytest.fixture
def tiny_config():
    """Factory: tiny_config(cache, run_dir, *overrides) -> Config."""
    return _tiny_config


def _tiny_config(cache: Path, run_dir: Path, *overrides: str) -> Config:
    """A config that trains in about a second per epoch on CPU."""
    return load_config(None, [
        f"data.cache={cache}", f"run_dir={run_dir}", "data.img_size=96", "data.batch_size=2",
        "model.name=fasterrcnn_mobilenet_v3_large_320_fpn", "model.pretrained=false",
        "model.rcnn.rpn_batch_size_per_image=32", "model.rcnn.box_batch_size_per_image=32",
        "train.accelerator=cpu", "train.epochs=3", "train.limit_train_batches=2", "train.limit_val_batches=2",
        "train.threads=1", *overrides,
    ])


# the run of `cli_run`: a real `dfudet train` with proposed anchors, every box emitted (for comparisons of detections)
CLI_RUN_OVERRIDES = ("train.epochs=1", "model.anchors.auto=true", "model.box_score_thresh=0.0",
                     "model.detections_per_img=20")


@pytest.fixture(scope="session")
def cli_run(tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run dir of one `dfudet train --baseline` (1 epoch on tiny_cache, model.anchors.auto=true): config.yaml,
    best_model.pth (with its optimizer state), last.ckpt, untrained_model.pth, the log. Trained once per test
    process; tests read it, and copy it before running anything in it."""
    from _runs import write_config
    from dfudet.cli import main

    root = tmp_path_factory.mktemp("cli-run")
    config = write_config(root / "tiny.yaml", _tiny_config(tiny_cache, root / "run", *CLI_RUN_OVERRIDES))
    assert main(["train", "--config", str(config), "--baseline"]) == 0
    return root / "run"


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random-init checkpoint at img_size 96, operating threshold 0.5."""
    from _checkpoints import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "best_model.pth")


@pytest.fixture(scope="session")
def checkpoint_factory() -> Callable[..., Path]:
    """make_checkpoint, for tests that need another img_size or threshold."""
    from _checkpoints import make_checkpoint

    return make_checkpoint
