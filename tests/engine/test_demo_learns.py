"""`make demo` must show a model that learned: the demo recipe, at a reduced budget, beats the untrained model on val.

The same commands as the Makefile's demo target (generate, import, prepare, train --baseline --require-improvement),
on fewer and smaller photos and fewer epochs so it fits CI. If the recipe stops learning (a broken loss, lr or data
path), this test fails, as `make demo` itself would.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from dfudet.cli import main

REPO = Path(__file__).resolve().parents[2]

# reduced budget: 160 photos at 192 px, DEMO_EPOCHS epochs (the real demo: 300 photos at 320 px, cached at 320 and
# trained at 256, for the epochs in configs/demo.yaml)
DEMO_N, DEMO_SIZE, DEMO_EPOCHS = 160, 192, 6


@pytest.mark.slow
def test_demo_recipe_beats_the_untrained_model_on_val(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw, ds, cache, run = tmp_path / "raw", tmp_path / "dataset", tmp_path / "cache", tmp_path / "train"
    assert main(["data", "demo", "--out", str(raw), "--n", str(DEMO_N), "--seed", "0", "--size", str(DEMO_SIZE)]) == 0
    ann = raw / "annotations"
    assert main(["data", "import", "--format", "coco", "--images", str(raw / "images"),
                 "--annotations", str(ann / "train.json"), "--annotations", str(ann / "val.json"),
                 "--annotations", str(ann / "test.json"), "--healthy", str(raw / "healthy"), "--out", str(ds)]) == 0
    assert main(["data", "prepare", str(ds), "--out", str(cache), "--img-size", str(DEMO_SIZE)]) == 0
    code = main(["train", "--config", str(REPO / "configs" / "demo.yaml"), "--baseline", "--require-improvement",
                 "--run-dir", str(run), f"data.cache={cache}", f"data.img_size={DEMO_SIZE}",
                 f"train.epochs={DEMO_EPOCHS}", "train.warmup_steps=20",
                 # under pytest -n (make test) the workers share the cores: one thread, as tests/conftest.py sets
                 *(["train.threads=1"] if os.environ.get("PYTEST_XDIST_WORKER") else [])])
    out = capsys.readouterr().out
    assert code == 0, f"the demo recipe did not beat the untrained model (exit {code}):\n{out[-3000:]}"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["epochs"] == DEMO_EPOCHS and saved["train"]["max_time_minutes"] is None
    import torch

    best = torch.load(run / "best_model.pth", weights_only=True)
    untrained = torch.load(run / "untrained_model.pth", weights_only=True)
    assert best["composite"] > untrained["composite"] + 0.05
    assert best["recall"] >= saved["train"]["operating_min_recall"]  # the recall floor held
    assert "does NOT beat the untrained model" not in out
