"""`dfudet predict`: files and folders in, predictions.json/.csv and annotated copies out, bad files skipped."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dfudet.cli import main
from dfudet.commands.predict import collect_images, read_photo_list, run_predict
from dfudet.data import instance_masks
from dfudet.data.checks import load_image
from dfudet.data.demo import render_sample
from dfudet.errors import ConfigError, DataError, DfudetError
from dfudet.inference.loader import load_backend


def _photo(path: Path, w: int, h: int, seed: int = 0, **save: object) -> Path:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **save)
    return path


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "photos"
    _photo(d / "a.jpg", 120, 80, 1)
    _photo(d / "sub" / "b.PNG", 70, 90, 2)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated: stored 100x60, shown 60x100
    _photo(d / "c.jpg", 100, 60, 3, exif=exif)
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (d / "notes.txt").write_text("not an image")
    return d


def test_collect_images_recurses_and_filters_extensions(folder: Path) -> None:
    found, skipped = collect_images([folder, folder / "notes.txt", folder / "nope.jpg"])
    names = [f.name for f, _ in found]
    assert names == ["a.jpg", "broken.jpg", "c.jpg", "b.PNG", "notes.txt"]  # a named file is always tried
    assert [str(n) for _, n in found][3] == "photos/sub/b.PNG"
    # nothing in a folder is ignored silently: the text file found there is listed with the reason
    assert skipped[0]["file"] == str(folder / "notes.txt") and "not an image file" in skipped[0]["error"]
    assert skipped[1] == {"file": str(folder / "nope.jpg"), "error": f"{folder / 'nope.jpg'}: no such file or folder"}


def test_every_file_not_read_is_reported_with_its_reason(tiny_ckpt: Path, tmp_path: Path) -> None:
    """GIF and JFIF are read; HEIC, other files, broken links and photos over the pixel limit are listed."""
    d = tmp_path / "visit"
    _photo(d / "a.jpg", 120, 80, 1)
    _photo(d / "b.gif", 90, 70, 2)
    _photo(d / "c.jfif", 80, 80, 3, format="JPEG")
    _photo(d / "big.png", 400, 300, 4)
    (d / "d.heic").write_bytes(b"\0\0\0\x18ftypheic")
    (d / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    out = tmp_path / "out"
    assert main(["predict", str(d), "--checkpoint", str(tiny_ckpt), "--out", str(out), "--max-pixels", "100000"]) == 0
    data = json.loads((out / "predictions.json").read_text())
    assert sorted(Path(im["file"]).name for im in data["images"]) == ["a.jpg", "b.gif", "c.jfif"]
    reasons = {Path(x["file"]).name: x["error"] for x in data["skipped"]}
    assert set(reasons) == {"big.png", "d.heic", "gone.jpg"}
    assert "over the pixel limit of 0.1 MP" in reasons["big.png"] and "400x300" in reasons["big.png"]
    assert "HEIC images are not supported" in reasons["d.heic"]
    assert "broken link" in reasons["gone.jpg"]


def test_corrupt_file_is_reported_and_the_rest_predicted(tiny_ckpt: Path, folder: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    s = run_predict([folder], tiny_ckpt, out, progress=False)
    assert s["images"] == 3 and s["skipped"] == 2
    assert "broken.jpg" in capsys.readouterr().err
    data = json.loads((out / "predictions.json").read_text())
    assert [Path(x["file"]).name for x in data["skipped"]] == ["notes.txt", "broken.jpg"]
    assert "broken.jpg" in data["skipped"][1]["error"]
    by_name = {Path(im["file"]).name: im for im in data["images"]}
    assert set(by_name) == {"a.jpg", "b.PNG", "c.jpg"}
    assert (by_name["c.jpg"]["width"], by_name["c.jpg"]["height"]) == (60, 100)  # EXIF orientation applied
    for im in data["images"]:
        assert im["threshold"] == 0.5 == data["threshold"]
        assert all(s >= 0.5 for s in im["scores"]) and len(im["scores"]) == len(im["boxes"])
        for x1, y1, x2, y2 in im["boxes"]:
            assert 0 <= x1 < x2 <= im["width"] and 0 <= y1 < y2 <= im["height"]
        with Image.open(out / im["annotated"]) as a:
            assert a.size == (im["width"], im["height"])
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert sum(len(im["boxes"]) or 1 for im in data["images"]) == len(rows)
    for r in rows:
        if r["x1"]:
            assert float(r["score"]) >= 0.5


def test_images_without_boxes_get_an_empty_csv_row(tiny_ckpt: Path, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_predict([folder / "a.jpg", folder / "sub"], tiny_ckpt, out, operating_threshold=1.0, progress=False)
    rows = list(csv.reader((out / "predictions.csv").open()))
    assert rows[0] == ["file", "label", "x1", "y1", "x2", "y2", "score", "confidence"]
    assert sorted(Path(r[0]).name for r in rows[1:]) == ["a.jpg", "b.PNG"]
    assert all(r[2:] == ["", "", "", "", "", ""] for r in rows[1:])
    assert (out / "annotated" / "a.jpg").is_file() and (out / "annotated" / "sub" / "b.jpg").is_file()


def test_tta_outputs_stay_inside_images(tiny_ckpt: Path, folder: Path, tmp_path: Path) -> None:
    run_predict([folder / "a.jpg"], tiny_ckpt, tmp_path, operating_threshold=0.0, tta=True, progress=False)
    data = json.loads((tmp_path / "predictions.json").read_text())
    assert data["tta"] is True
    im = data["images"][0]
    assert im["boxes"] and all(0 <= b[0] < b[2] <= 120 and 0 <= b[1] < b[3] <= 80 for b in im["boxes"])


def test_nothing_readable_fails_but_still_writes_the_list(tiny_ckpt: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match="none of the 1 image file"):
        run_predict([bad], tiny_ckpt, tmp_path / "out", progress=False)
    assert json.loads((tmp_path / "out" / "predictions.json").read_text())["skipped"][0]["file"].endswith("x.jpg")
    with pytest.raises(DataError, match="no images found"):
        run_predict([tmp_path / "out" / "annotated"], tiny_ckpt, tmp_path / "out2", progress=False)


def test_cli_exit_codes(tiny_ckpt: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["predict", "--checkpoint", str(tiny_ckpt), "--device", "cpu"]
    assert main(base + [str(folder), "--out", str(tmp_path / "o1")]) == 0  # one file skipped: still success
    assert "3 image(s) predicted" in capsys.readouterr().out
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"garbage")
    assert main(base + [str(tmp_path / "bad"), "--out", str(tmp_path / "o2")]) == 2
    assert "none of the 1 image file" in capsys.readouterr().err
    assert main(["predict", str(folder), "--checkpoint", str(tmp_path / "no.pth"), "--out", str(tmp_path)]) == 2
    assert "no.pth: checkpoint file does not exist" in capsys.readouterr().err


def test_real_fuseg_images(fuseg_dir: Path, tmp_path: Path, checkpoint_factory) -> None:
    files = sorted((fuseg_dir / "images" / "val").glob("*.jpg"))[:6]
    ckpt = checkpoint_factory(tmp_path / "best.pth", 128)
    s = run_predict(files, ckpt, tmp_path / "out", operating_threshold=0.0, progress=False)
    data = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert s["images"] == 6 and not data["skipped"]
    assert all((im["width"], im["height"]) == (512, 512) for im in data["images"])
    assert max(b[2] for im in data["images"] for b in im["boxes"]) > 128  # original 512-px coordinates
    assert len(list((tmp_path / "out" / "annotated").glob("*.jpg"))) == 6


# ------------------------------------------------------------------------------------------ outlines and areas
@pytest.fixture(scope="module")
def mask_ckpt(mask_checkpoint: Path) -> Path:
    """A small Mask R-CNN (outline model) trained a few steps on demo images (the session's, tests/conftest.py)."""
    return mask_checkpoint


@pytest.fixture(scope="module")
def demo_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("demo_photos")
    for i, size in enumerate((128, 160)):
        Image.fromarray(render_sample(0, 10 + i, size, healthy=False).image).save(d / f"visit{i}.png")
    return d


def test_outline_model_reports_outlines_and_areas_with_the_given_scale(mask_ckpt: Path, demo_photos: Path,
                                                                       tmp_path: Path) -> None:
    (demo_photos / "list.csv").write_text("photo,scale\nvisit0.png,0.25\nvisit1.png,\n")
    run_predict([], mask_ckpt, tmp_path, photo_list=demo_photos / "list.csv", progress=False)
    data = json.loads((tmp_path / "predictions.json").read_text())
    assert data["outlines"] is True and "pixels only" in data["area_note"]
    backend = load_backend(checkpoint=mask_ckpt)
    by_name = {Path(im["file"]).name: im for im in data["images"]}
    for name, scale in (("visit0.png", 0.25), ("visit1.png", None)):
        im = by_name[name]
        kept = backend.keep(backend.predict_arrays([load_image(demo_photos / name)])[0])
        dets = im["detections"]
        assert kept.masks is not None and len(kept.masks) == len(im["boxes"]) == len(dets) > 0
        areas = [d["area_px"] for d in dets]
        assert areas == [instance_masks.area(m) for m in kept.masks]  # the backend's own outlines
        assert im["mm_per_px"] == scale and im["outlines"] is True
        if scale is None:
            assert [d["area_mm2"] for d in dets] == [None] * len(dets) and "pixels only" in im["area_note"]
        else:
            assert [d["area_mm2"] for d in dets] == pytest.approx([a * scale * scale for a in areas], rel=1e-5)
        assert max(areas) > 0
        for det, (x1, y1, x2, y2) in zip(dets, im["boxes"]):
            xs = [x for p in det["outline"] for x in p[0::2]]
            ys = [y for p in det["outline"] for y in p[1::2]]
            assert bool(xs) == (det["area_px"] > 0)  # every non-empty mask has an outline
            # Mask R-CNN pastes each mask into its box (torchvision widens it by a pixel or two)
            assert not xs or (x1 - 2 <= min(xs) and max(xs) <= x2 + 2 and y1 - 2 <= min(ys) and max(ys) <= y2 + 2)
    rows = list(csv.reader((tmp_path / "predictions.csv").open()))
    assert rows[0][8:] == ["area_px", "area_mm2", "area_source", "area_note"]
    mm2, source = rows[0].index("area_mm2"), rows[0].index("area_source")
    assert {r[mm2] == r[source] == "" for r in rows[1:] if Path(r[0]).name == "visit1.png"} == {True}  # no scale/card
    assert {r[source] for r in rows[1:] if Path(r[0]).name == "visit0.png"} == {"user"}


def test_mm_per_px_applies_to_every_photo_and_a_list_scale_wins(mask_ckpt: Path, demo_photos: Path,
                                                               tmp_path: Path) -> None:
    (demo_photos / "one.csv").write_text("photo,scale\nvisit0.png,0.5\n")
    run_predict([demo_photos / "visit1.png"], mask_ckpt, tmp_path, mm_per_px=0.1,
                photo_list=demo_photos / "one.csv", progress=False)
    data = json.loads((tmp_path / "predictions.json").read_text())
    assert {Path(im["file"]).name: im["mm_per_px"] for im in data["images"]} == {"visit0.png": 0.5,
                                                                                 "visit1.png": 0.1}
    assert "area_note" not in data


@pytest.mark.parametrize(("text", "message"), [
    ("file,scale\nvisit0.png,1\n", "missing required column.s. photo"),
    ("photo,scale\nvisit0.png,abc\n", r"row 2: scale: scale 'abc' is not a number"),
    ("photo,scale\nvisit0.png,0.2\nvisit1.png,-1\n", r"row 3: scale: scale must be a positive number"),
])
def test_bad_photo_lists_name_the_row(mask_ckpt: Path, demo_photos: Path, tmp_path: Path, text: str,
                                      message: str) -> None:
    (demo_photos / "bad.csv").write_text(text)
    with pytest.raises(DfudetError, match=message):
        read_photo_list(demo_photos / "bad.csv")
    with pytest.raises(ConfigError, match="--mm-per-px: scale must be a positive"):
        run_predict([demo_photos], mask_ckpt, tmp_path / "out", mm_per_px=0.0, progress=False)


def test_photo_list_columns_are_read_like_visits_csv(tmp_path: Path) -> None:
    _photo(tmp_path / "a.png", 8, 8)
    _photo(tmp_path / "sub" / "b.png", 8, 8)
    (tmp_path / "list.csv").write_text("Photo,MM_PER_PX\na.png,5 px/mm\n\n,\nsub/b.png,\n")
    photos, scales = read_photo_list(tmp_path / "list.csv")
    assert photos == [tmp_path / "a.png", tmp_path / "sub" / "b.png"]
    assert scales == {str(tmp_path / "a.png"): pytest.approx(0.2)}
    (tmp_path / "both.csv").write_text("photo,Scale,mm_per_px\na.png,0.1,0.1\n")
    with pytest.raises(DataError, match="both a 'scale' and a 'mm_per_px' column"):
        read_photo_list(tmp_path / "both.csv")


def test_photo_list_with_a_missing_photo_or_a_folder_is_refused_naming_the_rows(tmp_path: Path) -> None:
    _photo(tmp_path / "a.png", 8, 8)
    (tmp_path / "sub").mkdir()
    lst = tmp_path / "list.csv"
    lst.write_text("photo,scale\na.png,0.1\n\nmissing.png,0.1\nsub,abc\n,0.1\n")  # rows 2, 4, 5, 6
    with pytest.raises(DataError, match=r"4 problem\(s\) in the photo list") as exc:
        read_photo_list(lst)
    assert exc.value.problems == [
        f"{lst} row 4: photo missing.png does not exist ({tmp_path / 'missing.png'})",
        f"{lst} row 5: photo sub is not a file ({tmp_path / 'sub'})",
        f"{lst} row 5: scale: scale 'abc' is not a number (millimetres per pixel, e.g. 0.2)",
        f"{lst} row 6: empty photo"]


def test_box_models_report_no_areas(tiny_ckpt: Path, demo_photos: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    run_predict([demo_photos / "visit0.png"], tiny_ckpt, tmp_path, mm_per_px=0.2, operating_threshold=0.0,
                progress=False)
    data = json.loads((tmp_path / "predictions.json").read_text())
    assert data["outlines"] is False and "outlines" not in data["images"][0] and data["images"][0]["boxes"]
    assert list(csv.reader((tmp_path / "predictions.csv").open()))[0] == ["file", "label", "x1", "y1", "x2", "y2",
                                                                          "score", "confidence"]
    assert "does not outline ulcers" in capsys.readouterr().err
