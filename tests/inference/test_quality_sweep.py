"""bench/quality_sweep.py on two generated photos with a tiny random-init model: every strength gets its measures,
the gate's verdict and a recall counted over every true box, and the plot is written."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dfudet.data.demo import render_sample
from dfudet.inference.loader import load_backend
from dfudet.inference.quality import QualityThresholds, measure_quality

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "quality_sweep.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("quality_sweep", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality_sweep"] = module
    spec.loader.exec_module(module)
    return module


def test_degradations_do_what_they_say() -> None:
    qs = _load_script()
    img = render_sample(2, 0, 128, healthy=False).image
    assert qs.exposure(img, 0) is img and qs.blur(img, 0) is img and qs.downscale(img, 1) is img
    assert qs.exposure(img, -1).mean() < img.mean() < qs.exposure(img, 1).mean()
    assert qs.downscale(img, 0.5).shape == (64, 64, 3)
    assert measure_quality(qs.blur(img, 3)).sharpness < measure_quality(img).sharpness


@pytest.mark.slow
def test_sweep_records_measures_gate_and_recall(tmp_path: Path, tiny_ckpt: Path) -> None:
    qs = _load_script()
    items = []
    for i in range(2):
        s = render_sample(4, i, 128, healthy=False)
        path = tmp_path / f"p{i}.png"
        Image.fromarray(s.image).save(path)
        items.append((path, np.asarray(s.boxes, np.float64).reshape(-1, 4)))
    n_boxes = sum(len(b) for _, b in items)
    thresholds = QualityThresholds(min_short_side=64)
    result = qs.sweep(items, thresholds, load_backend(checkpoint=tiny_ckpt), batch_size=2, progress=False)
    assert set(result) == set(qs.DEGRADATIONS)
    clean = measure_quality(np.asarray(Image.open(items[0][0]).convert("RGB")))
    for name, d in result.items():
        assert [p["strength"] for p in d["points"]] == qs.DEGRADATIONS[name][1]
        assert d["gate_threshold"] == getattr(thresholds, d["gate_threshold_field"])
        for p in d["points"]:
            assert p["tp"] + p["fn"] == n_boxes and 0.0 <= p["recall"] <= 1.0
            assert 0.0 <= p["review_share"] <= 1.0
            assert set(p["measures"]) == set(qs.MEASURES)
        first = d["points"][0]["measures"]
        assert first["short_side"]["max"] == 128 and clean.short_side == 128
    assert result["downscale"]["points"][-1]["measures"]["short_side"]["max"] < 128
    out = qs.plot({"degradations": result, "n_images": 2, "recall_measured": True}, tmp_path / "sweep.png")
    with Image.open(out) as im:
        assert im.width > 400
