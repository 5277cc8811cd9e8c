"""evaluate reports, per photo, whether the calibration card was found (FUSeg and demo photos have none)."""

from __future__ import annotations

import json
from pathlib import Path

from _marker_scene import render
from dfudet.commands.evaluate import _card, run_evaluation


def test_each_evaluated_photo_says_whether_a_card_was_found(tiny_ckpt: Path, demo_data: dict[str, Path],
                                                          tmp_path: Path) -> None:
    m = run_evaluation(tiny_ckpt, demo_data["cache"], tmp_path, split="test", bootstrap=0, progress=False)
    n = m["counts"]["images"]
    assert m["cards"]["searched"] == n > 0 and m["cards"]["found"] == m["cards"]["accepted"] == 0
    images = json.loads((tmp_path / "detections.json").read_text())["images"]
    assert len(images) == n
    assert all(im["card"] == {"found": False, "accepted": False, "code": "no_card"} for im in images)


def test_a_photo_with_the_card_is_reported_found():
    assert _card(render(tilt=10, card_px=380).image) == {"found": True, "accepted": True, "code": None}
