"""scripts/shifted_subsets.py: the shifted test's figures per subset, and the pasted photos by wound scale, from one
evaluate run's detections.json (a generated report folder)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "shifted_subsets.py"
WOUND = [100.0, 100.0, 160.0, 150.0]
NEAR_MISS = [300.0, 300.0, 340.0, 340.0]  # a kept box on no wound


def _photo(name: str, found: bool) -> dict:
    boxes = [WOUND if found else NEAR_MISS]
    return {"path": f"/data/test/{name}.jpg", "boxes": boxes, "scores": [0.99], "gt_boxes": [WOUND]}


def test_subsets_split_the_pasted_photos_by_wound_scale(tmp_path: Path) -> None:
    images = [_photo("pasted_a_x0.5", False), _photo("pasted_b_x0.5", False),
              _photo("pasted_a_x1", True), _photo("pasted_b_x1", False),
              _photo("pasted_a_x1.5", True), _photo("pasted_b_x1.5", True),
              _photo("lowres_fuseg_0001", True), _photo("color_fuseg_0001", False)]
    (tmp_path / "metrics.json").write_text(json.dumps({"operating_threshold": 0.9}))
    (tmp_path / "detections.json").write_text(json.dumps({"images": images}))
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads((tmp_path / "subsets.json").read_text())
    assert {k: out[k]["photos"] for k in out} == {"pasted": 6, "pasted x0.5": 2, "pasted x1": 2, "pasted x1.5": 2,
                                                  "lowres": 1, "color": 1, "all": 8}
    assert out["pasted x0.5"]["recall"] == 0.0 and out["pasted x1"]["recall"] == pytest.approx(0.5)
    assert out["pasted x1.5"]["recall"] == 1.0 and out["pasted"]["recall"] == pytest.approx(0.5)
    assert out["pasted x1.5"]["median_iou_found"] == pytest.approx(1.0)
    assert out["pasted x0.5"]["median_iou_found"] is None  # nothing found
    assert out["all"]["recall"] == pytest.approx(4 / 8)
