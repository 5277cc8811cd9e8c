"""`dfudet evaluate` with outlines: the "outlines" section and report table for an outline model on data with wound
masks, and the "skipped" reasons when only one of the two has outlines (box-only model and data: no section)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from dfudet.commands.evaluate import run_evaluation
from dfudet.commands.report import OUTLINE_BENCHMARK_NOTE, OUTLINE_GLOSSARY
from dfudet.data import instance_masks
from dfudet.data.checks import load_image
from dfudet.data.dataset import DetectionDataset
from dfudet.inference.loader import load_backend
from dfudet.metrics.outlines import OUTLINE_CI_METRICS

SHARES = ("mean_dice", "mean_iou", "aggregate_dice", "healthy_false_pixel_share")


@pytest.fixture(scope="module")
def mask_ckpt(mask_checkpoint: Path) -> Path:
    """A small Mask R-CNN (outline model) trained a few steps on demo images (the session's, tests/conftest.py)."""
    return mask_checkpoint


@pytest.fixture(scope="module")
def box_only_json(demo_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo test split's COCO json without its segmentations: box-only data."""
    coco = json.loads((demo_data["raw"] / "annotations" / "test.json").read_text())
    for a in coco["annotations"]:
        a.pop("segmentation", None)
    out = tmp_path_factory.mktemp("boxonly") / "test_boxes.json"
    out.write_text(json.dumps(coco))
    return out


def test_outline_model_on_masked_data(mask_ckpt: Path, demo_data: dict[str, Path], tmp_path: Path) -> None:
    m = run_evaluation(mask_ckpt, demo_data["cache"], tmp_path, split="test", bootstrap=40, progress=False,
                       gallery_size=2, operating_threshold=0.05)
    o = m["outlines"]
    assert "skipped" not in o, o
    for k in SHARES:
        assert o[k] is not None and 0.0 <= o[k] <= 1.0, k
    c = m["counts"]
    assert (o["n_images"], o["n_ulcer_images"], o["n_healthy_images"]) == (
        c["images"], c["ulcer_images"], c["healthy_images"])
    # the area errors are over the detection TPs at the same thresholds
    assert o["n_matched"] == c["tp"] and o["area_n"] <= o["n_matched"]
    assert o["score_threshold"] == m["operating_threshold"] and o["iou_threshold"] == m["iou_threshold"]
    if o["area_n"]:
        assert o["area_error_median"] >= 0 and o["area_error_p90"] >= o["area_error_median"]
        assert o["area_bias"] >= -1.0  # an outline cannot be smaller than nothing
    ci = o["bootstrap"]["ci95"]
    assert o["bootstrap"]["n"] == m["bootstrap"]["n"] == 40 and set(ci) == set(OUTLINE_CI_METRICS)
    for k in ("mean_dice", "mean_iou", "aggregate_dice"):
        assert ci[k][0] <= o[k] <= ci[k][1], k
    text = (tmp_path / "metrics.json").read_text()
    assert '"size"' not in text and len(text) < 200_000  # no RLEs or arrays in metrics.json
    assert json.loads(text)["outlines"] == json.loads(json.dumps(o))
    report = (tmp_path / "report.md").read_text()
    assert "## Wound outlines" in report and OUTLINE_BENCHMARK_NOTE in report
    section = report.split("## Wound outlines", 1)[1].split("## How to read this", 1)[0]
    printed = re.findall(r"^\| ([^|]+?) \| (?:[-\d.]+|n/a) \|", section, flags=re.M)
    assert len(printed) == len(OUTLINE_GLOSSARY)
    glossary = report.split("## How to read this", 1)[1]
    for name in printed:
        assert f"- **{name}**:" in glossary, name


def test_nothing_kept_gives_known_values_on_a_dataset_dir(mask_ckpt: Path, demo_data: dict[str, Path],
                                                          tmp_path: Path) -> None:
    folder = run_evaluation(mask_ckpt, demo_data["dataset"], tmp_path / "folder", split="test", bootstrap=0,
                            progress=False, gallery_size=0, operating_threshold=1.0)
    o = folder["outlines"]
    # nothing is kept at threshold 1: no wound pixels predicted, nothing matched
    assert (o["mean_dice"], o["aggregate_dice"], o["healthy_false_pixel_share"]) == (0.0, 0.0, 0.0)
    assert o["n_matched"] == o["area_n"] == 0 and o["area_error_median"] is None and o["bootstrap"] is None
    report = (tmp_path / "folder" / "report.md").read_text()
    assert "| area error, median | n/a |" in report
    ds = DetectionDataset(demo_data["dataset"], "test")
    assert o["n_ulcer_images"] == sum(not ds.record(i)["healthy"] for i in range(len(ds)))


def test_outlines_that_are_the_truth_score_perfectly(mask_ckpt: Path, demo_data: dict[str, Path],
                                                     tmp_path: Path) -> None:
    # truth = the model's own largest outline on each test photo: it is matched by that very prediction (NMS keeps
    # no other box at IoU > 0.5 with it), so each area error is 0, whatever else the model outlines
    raw = demo_data["raw"]
    coco = json.loads((raw / "annotations" / "test.json").read_text())
    dets = load_backend(checkpoint=mask_ckpt).predict_arrays([load_image(raw / "images" / im["file_name"])
                                                              for im in coco["images"]])
    coco["annotations"] = []
    for im, d in zip(coco["images"], dets):
        assert d.masks is not None
        areas = [instance_masks.area(r) for r in d.masks]
        k = int(np.argmax(areas))
        x1, y1, x2, y2 = (float(v) for v in d.boxes[k])
        coco["annotations"].append({"id": im["id"], "image_id": im["id"], "category_id": 1, "iscrowd": 0,
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "segmentation": d.masks[k]})
    ann = tmp_path / "own_outlines.json"
    ann.write_text(json.dumps(coco))
    m = run_evaluation(mask_ckpt, ann, tmp_path / "out", images=raw / "images", bootstrap=0, progress=False,
                       gallery_size=0, operating_threshold=0.0)
    o = m["outlines"]
    assert o["n_ulcer_images"] == len(coco["images"]) >= 2
    assert o["n_matched"] == m["counts"]["tp"] and o["area_n"] >= len(coco["images"])
    assert o["area_error_median"] == pytest.approx(0.0, abs=0.01)
    # every true wound pixel is covered (it is a predicted mask); Dice < 1 only through the model's other outlines
    assert 0.0 < o["mean_dice"] <= 1.0 and o["mean_iou"] <= o["mean_dice"]


def test_box_only_model_or_data_is_skipped_with_a_reason(tiny_ckpt: Path, mask_ckpt: Path,
                                                         demo_data: dict[str, Path], box_only_json: Path,
                                                         tmp_path: Path) -> None:
    images = demo_data["raw"] / "images"
    m = run_evaluation(tiny_ckpt, demo_data["cache"], tmp_path / "a", split="test", bootstrap=0, progress=False,
                       gallery_size=0)
    assert "boxes only" in m["outlines"]["skipped"]
    assert "Not scored: the model draws boxes only" in (tmp_path / "a" / "report.md").read_text()
    m = run_evaluation(mask_ckpt, box_only_json, tmp_path / "b", images=images, bootstrap=0, progress=False,
                       gallery_size=0)
    assert re.search(r"\d+ of \d+ ulcer images have no wound mask", m["outlines"]["skipped"])
    # box-only model and box-only data: as before outlines existed
    m = run_evaluation(tiny_ckpt, box_only_json, tmp_path / "c", images=images, bootstrap=0, progress=False,
                       gallery_size=0)
    assert "outlines" not in m and "outlines" not in json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert "Wound outlines" not in (tmp_path / "c" / "report.md").read_text()
