"""`dfudet data shifted` (dfudet.data.shifted): subsets, held-out material only, importable COCO with masks."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from _require import skip_or_fail
from dfudet.cli import main
from dfudet.data import instance_masks
from dfudet.data.importers import import_dataset
from dfudet.data.records import read_dataset
from dfudet.data.shifted import COLOR_CASTS, LOWRES_WIDTH, PASTE_SCALES, apply_cast, build_shifted
from dfudet.errors import DataError

SKIN = (198, 134, 96)


def _fuseg(root: Path, n: dict[str, int]) -> Path:
    """A FUSeg-like folder: 400 px photos of skin with one or two red wounds, and their 0/255 masks."""
    rng = np.random.default_rng(0)
    for split, count in n.items():
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for k in range(count):
            image = np.full((400, 400, 3), SKIN, np.uint8)
            mask = np.zeros((400, 400), np.uint8)
            for _ in range(1 + k % 2):
                cx, cy = (int(v) for v in rng.integers(60, 340, size=2))
                cv2.circle(mask, (cx, cy), int(rng.integers(12, 30)), 255, -1)
            image[mask > 0] = (170, 40, 50)
            name = f"fuseg_{split}_{k:04d}"
            Image.fromarray(image).save(root / "images" / split / f"{name}.jpg", quality=95)
            Image.fromarray(mask).save(root / "masks" / split / f"{name}.png")
    return root


def _healthy(root: Path, n: dict[str, int], layout: bool) -> tuple[Path, Path]:
    """Healthy-foot photos (a skin region on grey) laid out by split, or flat with a split CSV."""
    rows = []
    for split, count in n.items():
        for k in range(count):
            image = np.full((300, 500, 3), (90, 90, 90), np.uint8)
            image[60:260, 100 + 30 * k:400] = SKIN
            folder = root / split if layout else root
            folder.mkdir(parents=True, exist_ok=True)
            p = folder / f"foot_{split}_{k}.jpg"
            Image.fromarray(image).save(p, quality=95)
            rows.append((p.name, hashlib.sha256(p.read_bytes()).hexdigest(), split))
    csv_path = root.parent / "healthy_split.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "sha256", "split"])
        w.writerows(rows)
    return root, csv_path


@pytest.fixture
def material(tmp_path: Path) -> dict[str, Path]:
    fuseg = _fuseg(tmp_path / "fuseg", {"train": 2, "val": 3, "test": 4})
    healthy, split_csv = _healthy(tmp_path / "healthy", {"train": 2, "val": 2, "test": 3}, layout=False)
    return {"fuseg": fuseg, "healthy": healthy, "csv": split_csv, "root": tmp_path}


def _coco(out: Path, split: str) -> dict:
    return json.loads((out / "annotations" / f"{split}.json").read_text())


def test_subsets_counts_and_held_out_material(material: dict[str, Path]) -> None:
    out = material["root"] / "shifted"
    for split in ("val", "test"):
        build_shifted(material["fuseg"], material["healthy"], split, out, seed=0, healthy_split=material["csv"])
    n_fuseg, n_feet = {"val": 3, "test": 4}, {"val": 2, "test": 3}
    for split in ("val", "test"):
        coco = _coco(out, split)
        shifts = [e["shift"] for e in coco["images"]]
        assert shifts.count("pasted") == n_feet[split] * len(PASTE_SCALES)
        assert shifts.count("lowres") == shifts.count("color") == n_fuseg[split]
        other = "test" if split == "val" else "val"
        for e in coco["images"]:
            # every photo and every pasted wound comes from this split's material, none from train or the other
            sources = [e["source"]] + [w["source"] for w in e.get("wounds", [])]
            for s in sources:
                assert f"_{split}_" in s and f"_{other}_" not in s and "_train_" not in s, (e["file_name"], s)
            assert e["file_name"].startswith(f"{split}/") and (out / "images" / e["file_name"]).is_file()
            if e["shift"] == "pasted":
                assert 1 <= len(e["wounds"]) <= 2
                assert all(w["on_skin"] for w in e["wounds"])
            if e["shift"] == "lowres":
                assert e["width"] == LOWRES_WIDTH
            if e["shift"] == "color":
                assert e["cast"] in COLOR_CASTS
        # the lowres and colour copies keep every FUSeg wound (1 or 2 per photo here)
        per = {s: sum(1 for a in coco["annotations"] if coco["images"][a["image_id"] - 1]["shift"] == s)
               for s in ("lowres", "color")}
        assert per["lowres"] == per["color"] == sum(1 + k % 2 for k in range(n_fuseg[split]))
        for shift in ("pasted", "lowres", "color"):
            part = json.loads((out / "subsets" / f"{split}-{shift}.json").read_text())
            assert {e["shift"] for e in part["images"]} == {shift}
    readme = (out / "README.md").read_text()
    assert "| val | 0 |" in readme and "| test | 0 |" in readme and "0.5x, 1x, 1.5x" in readme


def test_output_imports_with_masks(material: dict[str, Path]) -> None:
    out = material["root"] / "shifted"
    for split in ("val", "test"):
        build_shifted(material["fuseg"], material["healthy"], split, out, seed=1, healthy_split=material["csv"])
    result = import_dataset("coco", images=out / "images",
                            annotations=[out / "annotations" / "val.json", out / "annotations" / "test.json"],
                            healthy=[], out=material["root"] / "dataset")
    assert result is not None
    records = read_dataset(material["root"] / "dataset")
    coco = {s: _coco(out, s) for s in ("val", "test")}
    assert sorted({r.split for r in records}) == ["test", "val"]
    for split in ("val", "test"):
        mine = [r for r in records if r.split == split]
        assert len(mine) == len(coco[split]["images"])
        assert sum(len(r.boxes) for r in mine) == len(coco[split]["annotations"])
    for r in records:
        assert not r.healthy and r.masks is not None and len(r.masks) == len(r.boxes)
        for box, rle in zip(r.boxes, r.masks):
            m = instance_masks.decode(rle)
            ys, xs = np.nonzero(m)
            assert box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]  # each box is its mask's tight box


def test_same_seed_same_bytes(material: dict[str, Path]) -> None:
    a, b, c = (material["root"] / n for n in ("a", "b", "c"))
    for out, seed in ((a, 3), (b, 3), (c, 4)):
        build_shifted(material["fuseg"], material["healthy"], "val", out, seed=seed, healthy_split=material["csv"])
    assert (a / "annotations" / "val.json").read_bytes() == (b / "annotations" / "val.json").read_bytes()
    names = sorted(p.name for p in (a / "images" / "val").iterdir())
    assert names == sorted(p.name for p in (b / "images" / "val").iterdir())
    assert all((a / "images" / "val" / n).read_bytes() == (b / "images" / "val" / n).read_bytes() for n in names)
    assert _coco(a, "val")["annotations"] != _coco(c, "val")["annotations"]  # another seed: other pastes


def test_healthy_split_from_folders_and_digest_check(material: dict[str, Path]) -> None:
    laid, _ = _healthy(material["root"] / "laid" / "feet", {"val": 2, "test": 1}, layout=True)
    s = build_shifted(material["fuseg"], laid, "test", material["root"] / "o1", seed=0)
    assert s["subsets"]["pasted"]["images"] == len(PASTE_SCALES) and s["healthy_photos"] == 1
    with pytest.raises(DataError, match="no val/ subfolder"):
        build_shifted(material["fuseg"], material["healthy"], "val", material["root"] / "o2")
    victim = material["healthy"] / "foot_val_0.jpg"
    victim.write_bytes(victim.read_bytes() + b"\0")
    with pytest.raises(DataError, match="SHA-256 differs"):
        build_shifted(material["fuseg"], material["healthy"], "val", material["root"] / "o3",
                      healthy_split=material["csv"])


def test_refuses_train_and_missing_masks(material: dict[str, Path]) -> None:
    with pytest.raises(DataError, match="val or test"):
        build_shifted(material["fuseg"], material["healthy"], "train", material["root"] / "o",
                      healthy_split=material["csv"])
    (material["fuseg"] / "masks" / "val" / "fuseg_val_0001.png").unlink()
    with pytest.raises(DataError, match="no mask"):
        build_shifted(material["fuseg"], material["healthy"], "val", material["root"] / "o",
                      healthy_split=material["csv"])


def test_cli(material: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = material["root"] / "cli"
    args = ["data", "shifted", "--fuseg", str(material["fuseg"]), "--healthy", str(material["healthy"]),
            "--healthy-split", str(material["csv"]), "--split", "val", "--out", str(out)]
    assert main(args) == 0
    assert "pasted" in capsys.readouterr().out and (out / "annotations" / "val.json").is_file()
    assert main(args[:-4] + ["--split", "val", "--out", str(out), "--healthy-split", "/nonexistent.csv"]) == 2
    assert "cannot read it" in capsys.readouterr().err


def test_casts_change_colour_not_geometry() -> None:
    grey = np.full((4, 4, 3), 128, np.uint8)
    warm = apply_cast(grey, COLOR_CASTS["tungsten"])
    assert warm[..., 0].mean() > 128 > warm[..., 2].mean() and warm.shape == grey.shape
    assert apply_cast(grey, COLOR_CASTS["dim"]).mean() < 100 < apply_cast(grey, COLOR_CASTS["bright"]).mean() - 50


@pytest.mark.slow
def test_real_val_set(fuseg_dir: Path, tmp_path: Path) -> None:
    """The shifted val set from the real FUSeg val split and the fixed healthy-feet split."""
    repo = Path(__file__).resolve().parents[2]
    healthy = fuseg_dir.parent / "healthy_feet" / "images"
    if not healthy.is_dir():
        skip_or_fail(f"healthy-feet photos not found at {healthy}")
    s = build_shifted(fuseg_dir, healthy, "val", tmp_path, seed=0,
                      healthy_split=repo / "configs" / "splits" / "healthy_feet.csv")
    assert s["subsets"]["pasted"]["images"] == 15 * len(PASTE_SCALES)
    assert s["subsets"]["lowres"] == s["subsets"]["color"] == {"images": 118, "wounds": 162}  # FUSeg val's boxes
    assert s["pasted_on_skin"] >= 0.9 * s["pasted_wounds"]
