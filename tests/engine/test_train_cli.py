"""`dfudet train` through the command line: proposed anchors stored and used after reload, `--fresh` over an existing
run, and `--require-improvement`'s exit status 3 (the CI gate of `make demo`)."""

from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from _runs import write_config
from dfudet.checkpoint import load_for_inference, safe_torch_load
from dfudet.cli import main
from dfudet.data.demo import render_sample
from dfudet.models.anchors import default_anchor_sizes
from dfudet.models.factory import get_spec

RUN_FILES = ("last.ckpt", "best_model.pth", "untrained_model.pth", "metrics.csv")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def _logs(run_dir: Path) -> list[str]:
    """The run's log files, oldest first (one per `dfudet train`)."""
    return [p.read_text() for p in sorted(run_dir.glob("train-*.log"), key=lambda p: p.stat().st_mtime)]


def _log_sizes(run_dir: Path) -> dict[Path, int]:
    return {p: p.stat().st_size for p in run_dir.glob("train-*.log")}


def _logged_since(run_dir: Path, sizes: dict[Path, int]) -> str:
    """What the run's logs gained since `sizes` (two runs started in the same second share one log file)."""
    return "".join(p.read_bytes()[sizes.get(p, 0):].decode() for p in sorted(run_dir.glob("train-*.log")))


@pytest.mark.slow  # uses the session's 1-epoch `dfudet train` (cli_run); ~10 s of CPU when it trains here
def test_auto_anchors_are_proposed_stored_and_used_by_the_kept_model_after_reload(cli_run: Path) -> None:
    from dfudet.inference.predictor import Predictor

    saved = yaml.safe_load((cli_run / "config.yaml").read_text())["model"]
    sizes, ratios = saved["anchors"]["sizes"], saved["anchors"]["aspect_ratios"]
    img_size = 96
    levels = get_spec(saved["name"]).feature_levels
    # proposed from the training boxes, logged, and not the defaults the model would otherwise get
    assert sizes is not None and len(sizes) == levels and sizes != default_anchor_sizes(img_size, levels)
    assert all(0 < s <= img_size for level in sizes for s in level)
    assert any("anchors proposed from" in text and "training boxes" in text for text in _logs(cli_run))
    # the kept model's checkpoint carries them ...
    kept = load_for_inference(cli_run / "best_model.pth")
    assert kept.config.model.anchors.sizes == sizes and kept.config.model.anchors.aspect_ratios == ratios
    # ... and the model rebuilt from it predicts with them: its anchor generator holds the proposed sizes
    pred = Predictor.from_checkpoint(cli_run / "best_model.pth", operating_threshold=0.0)
    generator = pred.model.rpn.anchor_generator
    assert [list(level) for level in generator.sizes] == sizes
    assert all(list(r) == ratios for r in generator.aspect_ratios)
    photo = render_sample(5, 0, 120, healthy=False).image
    anchors_per_location = generator.num_anchors_per_location()
    assert anchors_per_location == [len(sizes[0]) * len(ratios)] * levels
    assert pred.model.rpn.head.cls_logits.out_channels == anchors_per_location[0]
    found = pred.predict_arrays([photo])[0]
    assert len(found.boxes) > 0 and np.isfinite(found.boxes).all()


@pytest.mark.slow  # one more 1-epoch training, plus a resume
def test_fresh_starts_over_although_last_ckpt_exists(cli_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(cli_run, run)
    config = str(cli_run.parent / "tiny.yaml")
    before = {name: _sha(run / name) for name in RUN_FILES}
    # the control: the same command without --fresh resumes from last.ckpt (its one epoch is done: nothing trains)
    sizes = _log_sizes(run)
    assert main(["train", "--config", config, "--run-dir", str(run), "--baseline"]) == 0
    assert f"(resuming from {run / 'last.ckpt'})" in _logged_since(run, sizes)
    assert not list(run.glob("previous-*")) and _sha(run / "metrics.csv") == before["metrics.csv"]

    sizes = _log_sizes(run)
    assert main(["train", "--config", config, "--run-dir", str(run), "--baseline", "--fresh"]) == 0
    log = _logged_since(run, sizes)
    assert "resuming from" not in log and "--fresh: previous checkpoints moved to" in log
    # the previous run's files are moved aside unchanged, never deleted
    (previous,) = run.glob("previous-*")
    assert {name: _sha(previous / name) for name in RUN_FILES} == before
    # a new run from epoch 0: a new history of one epoch, a new last.ckpt and kept model
    assert [r["epoch"] for r in _rows(run)] == ["0"]
    assert safe_torch_load(run / "best_model.pth")["epoch"] == 0
    assert (run / "last.ckpt").is_file() and _sha(run / "last.ckpt") != before["last.ckpt"]


@pytest.mark.slow  # a 1-epoch training and a resume
def test_require_improvement_exits_3_when_the_kept_model_does_not_beat_the_untrained_one(
        tiny_cache: Path, tmp_path: Path, tiny_config, capsys: pytest.CaptureFixture[str]) -> None:
    # box_score_thresh=1.0: no score passes (torchvision keeps scores > thresh), so the untrained and the trained
    # model both find nothing on val and the kept model cannot beat the untrained one, whatever the weights learn
    cfg = tiny_config(tiny_cache, tmp_path / "run", "train.epochs=1", "model.box_score_thresh=1.0")
    config = str(write_config(tmp_path / "silent.yaml", cfg))
    assert main(["train", "--config", config, "--baseline", "--require-improvement"]) == 3
    assert any("does NOT beat the untrained model" in text for text in _logs(tmp_path / "run"))
    # the flag alone turns the verdict into the exit status: the same run resumed without it exits 0
    capsys.readouterr()
    assert main(["train", "--config", config, "--baseline"]) == 0


def test_require_improvement_without_baseline_is_refused_before_training(tiny_cache: Path, tmp_path: Path,
                                                                         tiny_config,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Without --baseline there is no untrained score to beat: the gate would pass every run, so it is refused."""
    config = str(write_config(tmp_path / "tiny.yaml", tiny_config(tiny_cache, tmp_path / "run")))
    assert main(["train", "--config", config, "--require-improvement"]) == 2
    assert "--require-improvement needs --baseline" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
