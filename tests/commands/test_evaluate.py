"""`dfudet evaluate`: files written, numbers equal to dfudet.metrics called directly, original coordinates, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dfudet.cli import main
from dfudet.commands.evaluate import run_evaluation
from dfudet.data.dataset import DetectionDataset
from dfudet.errors import CheckpointError, ConfigError, DataError
from dfudet.metrics.coco import coco_map
from dfudet.metrics.scores import best_threshold, detection_scores
from dfudet.metrics.sizes import found_by_size

EXPECTED_FILES = ("metrics.json", "report.md", "pr_curve.png", "froc.png", "threshold_sweep.png", "detections.json")
GALLERIES = ("missed_ulcers", "false_alarms_healthy", "poor_localization")


def _load(out: Path) -> tuple[dict, list, list]:
    det = json.loads((out / "detections.json").read_text())["images"]
    preds = [(np.asarray(d["boxes"]).reshape(-1, 4), np.asarray(d["scores"])) for d in det]
    gts = [np.asarray(d["gt_boxes"]).reshape(-1, 4) for d in det]
    return json.loads((out / "metrics.json").read_text()), preds, gts


@pytest.fixture(scope="module")
def cache_eval(tiny_ckpt: Path, demo_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "out"
    run_evaluation(tiny_ckpt, demo_data["cache"], out, split="test", bootstrap=50, progress=False)
    return out


def test_writes_every_file(cache_eval: Path) -> None:
    for name in EXPECTED_FILES:
        assert (cache_eval / name).is_file() and (cache_eval / name).stat().st_size > 0, name
    for name in ("pr_curve.png", "froc.png", "threshold_sweep.png"):
        assert (cache_eval / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = json.loads((cache_eval / "metrics.json").read_text())
    for g in GALLERIES:
        assert (cache_eval / "gallery" / g).is_dir()
        for entry in m["gallery"][g]:
            assert (cache_eval / entry["file"]).is_file() and entry["reason"]
    report = (cache_eval / "report.md").read_text()
    assert "| composite |" in report and "Oracle" in report and "operating_threshold" in report
    assert "## Ulcers found by size" in report and "| 64 px and more |" in report


def test_metrics_match_dfudet_metrics_called_directly(cache_eval: Path, tiny_ckpt: Path) -> None:
    m, preds, gts = _load(cache_eval)
    assert m["operating_threshold"] == 0.5 and "operating_threshold" in m["threshold_source"]
    assert m["checkpoint"]["epoch"] == 3 and m["checkpoint"]["path"] == str(tiny_ckpt)
    direct = detection_scores(preds, gts, 0.5, 0.5)
    for k, v in direct.as_dict().items():
        assert m["at_threshold"][k] == pytest.approx(v), k
    assert m["coco"] == pytest.approx(coco_map(preds, gts))
    assert m["by_size"] == found_by_size(preds, gts, 0.5, 0.5)
    assert sum(r["ulcers"] for r in m["by_size"]) == sum(len(g) for g in gts)
    assert sum(r["found"] for r in m["by_size"]) == direct.tp
    t, row = best_threshold(preds, gts, iou_threshold=0.5)
    assert m["oracle"]["threshold"] == t and m["oracle"]["scores"]["composite"] == pytest.approx(row.composite)
    c = m["counts"]
    assert (c["images"], c["ulcer_images"], c["healthy_images"]) == (4, 2, 2)
    assert c["detections_all"] == sum(len(s) for _, s in preds) > c["detections_kept"] == direct.n_pred
    assert set(m["bootstrap"]["ci95"]) >= {"f1", "recall", "precision", "composite", "mean_iou"}
    lo, hi = m["bootstrap"]["ci95"]["composite"]
    assert lo <= hi
    assert len(m["froc"]["fp_rates"]) == len(m["froc"]["sensitivity_at_rates"]) == 7
    assert len(m["threshold_sweep"]["thresholds"]) == 99


def test_boxes_are_in_original_coordinates(cache_eval: Path, demo_data: dict[str, Path]) -> None:
    # the cache holds 64-px copies of 96-px images: ground truth and predictions must be in the 96-px frame
    _, preds, gts = _load(cache_eval)
    originals = DetectionDataset(demo_data["dataset"], "test")
    for i, gt in enumerate(gts):
        np.testing.assert_allclose(gt, np.asarray(originals.record(i)["boxes"]).reshape(-1, 4), atol=1e-3)
    all_boxes = np.concatenate([b for b, _ in preds])
    assert all_boxes.max() <= 96 and all_boxes.max() > 64


def test_threshold_override_and_galleries(tiny_ckpt: Path, demo_data: dict[str, Path], tmp_path: Path) -> None:
    m = run_evaluation(tiny_ckpt, demo_data["dataset"], tmp_path, split="val", operating_threshold=0.0, bootstrap=0,
                       progress=False, gallery_size=1)
    assert m["operating_threshold"] == 0.0 and m["threshold_source"] == "--operating-threshold"
    assert m["bootstrap"] is None and m["data"]["kind"] == "folder"
    # at threshold 0 every healthy image with a detection is a false alarm; gallery_size caps each gallery
    assert len(m["gallery"]["false_alarms_healthy"]) == 1
    assert len(list((tmp_path / "gallery" / "false_alarms_healthy").glob("*.jpg"))) == 1
    _, preds, gts = _load(tmp_path)
    assert m["at_threshold"]["fp"] == detection_scores(preds, gts, 0.0, 0.5).fp


def test_coco_json_input_is_evaluated_whole(tiny_ckpt: Path, demo_data: dict[str, Path], tmp_path: Path) -> None:
    ann = demo_data["raw"] / "annotations" / "train.json"
    n = len(json.loads(ann.read_text())["images"])
    m = run_evaluation(tiny_ckpt, ann, tmp_path, images=demo_data["raw"] / "images", bootstrap=0, progress=False)
    assert m["data"]["split"] == "all" and m["counts"]["images"] == n
    with pytest.raises(ConfigError, match="--images"):
        run_evaluation(tiny_ckpt, ann, tmp_path / "x", bootstrap=0, progress=False)


def test_user_errors_name_the_problem(tiny_ckpt: Path, demo_data: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere: data path does not exist"):
        run_evaluation(tiny_ckpt, tmp_path / "nowhere", tmp_path / "o", progress=False)
    with pytest.raises(DataError, match=r"unknown split 'holdout'.*available splits: train"):
        run_evaluation(tiny_ckpt, demo_data["cache"], tmp_path / "o", split="holdout", progress=False)
    with pytest.raises(CheckpointError, match=r"missing\.pth: checkpoint file does not exist"):
        run_evaluation(tmp_path / "missing.pth", demo_data["cache"], tmp_path / "o", progress=False)
    other = tmp_path / "other.yaml"
    other.write_text("model:\n  name: fasterrcnn_resnet50_fpn_v2\n")
    with pytest.raises(CheckpointError, match="(?s)another model.*model_name"):
        run_evaluation(tiny_ckpt, demo_data["cache"], tmp_path / "o", config=other, progress=False)
    same = tmp_path / "same.yaml"  # same model at another img_size is fine: the predictor resizes
    same.write_text("model:\n  name: fasterrcnn_mobilenet_v3_large_320_fpn\ndata:\n  img_size: 512\n")
    run_evaluation(tiny_ckpt, demo_data["cache"], tmp_path / "o", config=same, bootstrap=0, progress=False)


def test_cli_exit_codes(tiny_ckpt: Path, demo_data: dict[str, Path], tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    args = ["evaluate", "--checkpoint", str(tiny_ckpt), "--data", str(demo_data["cache"]), "--out", str(tmp_path),
            "--bootstrap", "20", "--device", "cpu"]
    assert main(args) == 0
    assert "report written to" in capsys.readouterr().out
    assert (tmp_path / "metrics.json").is_file()
    assert main(args[:3] + ["--data", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    assert "data path does not exist" in capsys.readouterr().err


def test_real_fuseg_images(fuseg_dir: Path, tmp_path: Path, checkpoint_factory) -> None:
    val = json.loads((fuseg_dir / "annotations" / "val.json").read_text())
    keep = val["images"][:6]
    ids = {im["id"] for im in keep}
    subset = {**val, "images": keep, "annotations": [a for a in val["annotations"] if a["image_id"] in ids]}
    ann = tmp_path / "val.json"
    ann.write_text(json.dumps(subset))
    ckpt = checkpoint_factory(tmp_path / "best.pth", 128)
    m = run_evaluation(ckpt, ann, tmp_path / "out", images=fuseg_dir / "images", bootstrap=100, progress=False)
    assert m["counts"]["images"] == 6 and m["counts"]["gt_boxes"] == len(subset["annotations"])
    _, preds, gts = _load(tmp_path / "out")
    assert m["at_threshold"]["composite"] == pytest.approx(detection_scores(preds, gts, 0.5, 0.5).composite)
    assert np.concatenate([b for b, _ in preds]).max() > 128  # 512-px originals, not the 128-px model input
    for name in EXPECTED_FILES:
        assert (tmp_path / "out" / name).is_file()


def test_report_reads_without_the_code(tiny_ckpt: Path, demo_data: dict[str, Path], tmp_path: Path) -> None:
    import re

    from PIL import Image

    from dfudet.commands.report import GLOSSARY
    from dfudet.export.slim import export_slim

    other = tmp_path / "other.pth"  # a second model to set beside: the same weights, slim, at threshold 0.9
    export_slim(tiny_ckpt, other)
    out = tmp_path / "out"
    m = run_evaluation(tiny_ckpt, demo_data["cache"], out, split="test", bootstrap=0, progress=False,
                       compare=other, operating_threshold=0.3)
    report = (out / "report.md").read_text()
    c = m["counts"]
    # the summary in words, with the real counts
    assert f"Found **{c['tp']} of {c['gt_boxes']} ulcers**" in report and f"missed {c['fn']}" in report
    assert f"**{c['fp']} false alarm(s)** on {c['images']} photos" in report
    # every metric the main table prints is defined in "How to read this" (the size table explains its own columns)
    main_table = report.split("## Ulcers found by size", 1)[0]
    assert main_table != report and "| found at any score |" in report and "| box ÷ true side |" in report
    printed = re.findall(r"^\| ([^|]+?) \| [-\d.]+ \|", main_table, flags=re.M)
    assert len(printed) >= 13
    glossary = report.split("## How to read this", 1)[1]
    for name in printed + ["TP / FP / FN", "95% CI"]:
        assert f"- **{name}**:" in glossary, name
        assert name in GLOSSARY
    assert "0.4*F1 + 0.25*mean IoU + 0.2*recall + 0.15*precision" in glossary
    # the compared model stands beside this one, at its own threshold and with its own numbers
    assert m["compare"]["checkpoint"]["path"] == str(other)
    assert "| metric | this model | 95% CI | compared model |" in report
    cmp_row = re.search(r"^\| recall \| ([\d.]+) \|  \| ([\d.]+) \|", report, flags=re.M)
    assert cmp_row and float(cmp_row.group(2)) == pytest.approx(m["compare"]["at_threshold"]["recall"], abs=1e-3)
    assert m["compare"]["operating_threshold"] == pytest.approx(0.5)  # the checkpoint's own operating threshold
    # the threshold's true source
    assert "(--operating-threshold)" in report and m["compare"]["threshold_source"].startswith("checkpoint")
    # every gallery image carries a legend strip below the photo
    files = [e["file"] for g in m["gallery"].values() for e in g]
    assert files
    for f in files[:3]:
        im = np.asarray(Image.open(out / f).convert("RGB"))
        strip = im[-12:]
        assert (strip > 240).all(axis=2).mean() > 0.5  # white legend strip at the bottom
        assert ((strip[..., 1] > 150) & (strip[..., 0] < 80)).any()  # the green "truth" swatch


def test_untrained_model_threshold_source_says_so(tmp_path: Path, tiny_ckpt: Path, demo_data: dict[str, Path]) -> None:
    import torch

    from dfudet.checkpoint import safe_torch_load

    ckpt = safe_torch_load(tiny_ckpt)
    ckpt["epoch"], ckpt["origin"] = -1, "untrained"  # as `dfudet train --baseline` writes it
    torch.save(ckpt, tmp_path / "untrained_model.pth")
    m = run_evaluation(tmp_path / "untrained_model.pth", demo_data["cache"], tmp_path / "out", split="test",
                       bootstrap=0, progress=False)
    assert "untrained model, before any training" in m["threshold_source"]
    assert "during training" not in m["threshold_source"]
    assert "(untrained)" in (tmp_path / "out" / "report.md").read_text().splitlines()[0]


def test_compare_reports_the_paired_composite_difference(tiny_ckpt: Path, demo_data: dict[str, Path],
                                                         tmp_path: Path) -> None:
    import json

    from dfudet.export.slim import export_slim
    from dfudet.metrics.bootstrap import paired_composite_gains, per_image_counts

    other = tmp_path / "other.pth"  # the same weights, scored at the checkpoint's own threshold (0.5)
    export_slim(tiny_ckpt, other)
    out = tmp_path / "out"
    m = run_evaluation(tiny_ckpt, demo_data["cache"], out, split="test", bootstrap=200, progress=False,
                       compare=other, operating_threshold=0.05)
    paired = m["compare"]["paired_composite_difference"]
    diff = m["at_threshold"]["composite"] - m["compare"]["at_threshold"]["composite"]
    assert diff != 0.0  # the two thresholds give different composites on these photos
    # recomputed from this model's saved detections: the same weights give the compared model's boxes at 0.5
    images = json.loads((out / "detections.json").read_text())["images"]
    preds = [(np.asarray(r["boxes"], np.float64).reshape(-1, 4), np.asarray(r["scores"], np.float64))
             for r in images]
    gts = [np.asarray(r["gt_boxes"], np.float64).reshape(-1, 4) for r in images]
    other_thr = m["compare"]["operating_threshold"]
    assert other_thr == pytest.approx(0.5)
    gains = paired_composite_gains(per_image_counts(preds, gts, other_thr, 0.5),
                                   per_image_counts(preds, gts, 0.05, 0.5), m["composite_weights"], 200, 0)
    assert paired["n"] == 200 and paired["point"] == pytest.approx(diff)
    lo, hi = np.quantile(gains, [0.025, 0.975])
    assert paired["ci95"] == pytest.approx([lo, hi])
    assert paired["share_this_higher"] == pytest.approx(float(np.mean(gains > 0)))
    assert paired["share_this_lower"] == pytest.approx(float(np.mean(gains < 0)))
    expected = (f"Composite, this model minus the compared one: **{diff:+.3f}** (95% CI {lo:+.3f} to {hi:+.3f}; "
                f"higher in {100 * np.mean(gains > 0):.1f}% and lower in {100 * np.mean(gains < 0):.1f}% of 200 "
                "paired resamples")
    assert expected in (out / "report.md").read_text()
    # without a bootstrap there is no paired interval, and the report says nothing about one
    m0 = run_evaluation(tiny_ckpt, demo_data["cache"], tmp_path / "out0", split="test", bootstrap=0, progress=False,
                        compare=other, operating_threshold=0.05)
    assert m0["compare"]["paired_composite_difference"] is None
    assert "minus the compared one" not in (tmp_path / "out0" / "report.md").read_text()


def test_calibration_triage_ulcer_free_and_groups_sections(cache_eval: Path) -> None:
    m = json.loads((cache_eval / "metrics.json").read_text())
    det = json.loads((cache_eval / "detections.json").read_text())["images"]
    thr = m["operating_threshold"]
    best = [max(d["scores"], default=0.0) for d in det]
    ulcer = [bool(d["gt_boxes"]) for d in det]
    t = m["triage"]  # the tiny checkpoint stores no review threshold: the band is empty
    assert t["review_threshold"] == thr and t["review_threshold_source"].startswith("none stored")
    assert t["labels"]["ulcer"] == sum(b >= thr for b in best) and t["labels"]["review"] == 0
    assert t["sensitivity"] == pytest.approx(np.mean([b >= thr for b, u in zip(best, ulcer) if u]))
    free = [d for d, u in zip(det, ulcer) if not u]
    assert sum(g["photos"] for g in m["ulcer_free"]) == len(free)
    assert sum(g["photos_with_a_box"] for g in m["ulcer_free"]) == sum(any(s >= thr for s in d["scores"]) for d in free)
    for g in m["ulcer_free"]:
        assert g["ci95"][0] <= g["share_with_a_box"] <= g["ci95"][1]
    c = m["calibration"]
    assert c["method"] is None and c["boxes"] == sum(len(d["scores"]) for d in det) and 0 <= c["ece_raw"] <= 1
    assert (cache_eval / "reliability.png").is_file()
    g = m["groups"]
    for key in ("skin_tone", "brightness", "sharpness"):
        assert sum(r["photos"] for r in g[key]["rows"]) == len(det)
    report = (cache_eval / "report.md").read_text()
    for heading in ("## Calibrated confidence", "## Triage: ulcer / review / no ulcer",
                    "## Results by skin tone and photo condition"):
        assert heading in report
