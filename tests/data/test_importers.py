"""Happy paths of `dfudet data import`: each format, healthy folders, splits, masks, negative crops, real FUSeg, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from dfudet.cli import main
from dfudet.data.importers import ImportOptions, import_dataset
from dfudet.data.records import read_dataset


def make_image(path: Path, w: int = 64, h: int = 48, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def write_coco(path: Path, images: list[tuple[int, str]], anns: list[tuple[int, int, list[float]]],
               size: tuple[int, int] = (64, 48)) -> Path:
    payload = {
        "images": [{"id": i, "file_name": f, "width": size[0], "height": size[1]} for i, f in images],
        "annotations": [{"id": a, "image_id": i, "bbox": b, "category_id": 1} for a, i, b in anns],
        "categories": [{"id": 1, "name": "ulcer"}],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))
    return path


def by_name(records):  # type: ignore[no-untyped-def]
    return {Path(r.path).name: r for r in records}


# ------------------------------------------------------------------------------------------------ coco
def test_coco_happy_path_split_from_file_name(tmp_path: Path) -> None:
    imgs = tmp_path / "images"
    for n in ("a", "b", "c"):
        make_image(imgs / "train" / f"{n}.jpg")
    make_image(imgs / "val" / "d.jpg")
    train = write_coco(tmp_path / "ann" / "instances_train.json",
                       [(1, "train/a.jpg"), (2, "train/b.jpg"), (3, "train/c.jpg")],
                       [(1, 1, [10, 5, 20, 10]), (2, 1, [0, 0, 4, 4]), (3, 2, [30, 20, 30, 28])])
    val = write_coco(tmp_path / "ann" / "val.json", [(7, "val/d.jpg")], [(1, 7, [1, 1, 2, 2])])
    out = tmp_path / "ds"
    res = import_dataset("coco", imgs, [train, val], [], out)

    recs = by_name(read_dataset(out))
    assert set(recs) == {"a.jpg", "b.jpg", "c.jpg", "d.jpg"}
    assert recs["a.jpg"].boxes == [[10, 5, 30, 15], [0, 0, 4, 4]]
    assert recs["b.jpg"].boxes == [[30, 20, 60, 48]]
    assert recs["c.jpg"].healthy and recs["c.jpg"].boxes == []  # listed without annotations = ulcer-free
    assert not recs["a.jpg"].healthy
    assert [recs[n].split for n in ("a.jpg", "b.jpg", "c.jpg", "d.jpg")] == ["train", "train", "train", "val"]
    assert all(Path(r.path).is_absolute() and r.kind == "photo" for r in recs.values())
    assert (recs["a.jpg"].width, recs["a.jpg"].height) == (64, 48)
    assert recs["a.jpg"].source == f"coco:{train.resolve()}"
    assert (out / "import_report.txt").read_text().splitlines()[1] == "nothing was clipped, dropped or skipped"
    text = res.summary_text()
    assert "  train        3       3       2        1          0" in text
    assert "skipped images: 0" in text and str(out / "import_report.txt") in text


def test_coco_seeded_split_is_deterministic(tmp_path: Path) -> None:
    imgs = tmp_path / "images"
    entries = [(i, f"p{i}.png") for i in range(20)]
    for _, f in entries:
        make_image(imgs / f, 16, 12)
    ann = write_coco(tmp_path / "labels.json", entries, [], size=(16, 12))
    opts = ImportOptions(val_fraction=0.2, test_fraction=0.25, seed=3)
    r1 = import_dataset("coco", imgs, [ann], [], tmp_path / "o1", options=opts)
    r2 = import_dataset("coco", imgs, [ann], [], tmp_path / "o2", options=opts)
    s1 = {r.path: r.split for r in r1.records}
    assert s1 == {r.path: r.split for r in r2.records}
    assert sorted(s1.values()).count("val") == 4 and sorted(s1.values()).count("test") == 5
    r3 = import_dataset("coco", imgs, [ann], [], tmp_path / "o3", options=ImportOptions(seed=4))
    assert {r.path: r.split for r in r3.records} != s1


# ------------------------------------------------------------------------------------------------- voc
def _voc(path: Path, filename: str, objects: list[tuple[str, list[float]]]) -> None:
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
        f"<ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><filename>{filename}</filename><size><width>64</width><height>48</height>"
                    f"<depth>3</depth></size>{objs}</annotation>")


def test_voc_any_object_name_is_an_ulcer_and_no_objects_is_healthy(tmp_path: Path) -> None:
    imgs = tmp_path / "JPEGImages"
    make_image(imgs / "x.jpg")
    make_image(imgs / "y.jpg")
    _voc(tmp_path / "Annotations" / "x.xml", "x.jpg", [("ulcer", [3, 4, 20, 30]), ("wound", [40, 1, 60, 10])])
    _voc(tmp_path / "Annotations" / "y.xml", "y.jpg", [])
    res = import_dataset("voc", imgs, [tmp_path / "Annotations"], [], tmp_path / "out")
    recs = by_name(res.records)
    assert recs["x.jpg"].boxes == [[3, 4, 20, 30], [40, 1, 60, 10]] and not recs["x.jpg"].healthy
    assert recs["y.jpg"].healthy and recs["y.jpg"].boxes == []


# ------------------------------------------------------------------------------------------------ yolo
def test_yolo_normalised_boxes_and_unlabelled_images(tmp_path: Path) -> None:
    imgs, labels = tmp_path / "images", tmp_path / "labels"
    make_image(imgs / "train" / "a.jpg")
    make_image(imgs / "train" / "b.jpg")
    make_image(imgs / "val" / "c.png")
    (labels / "train").mkdir(parents=True)
    (labels / "train" / "a.txt").write_text("0 0.5 0.5 0.25 0.5\n\n3 0.125 0.25 0.25 0.5\n")
    (labels / "train" / "b.txt").write_text("")
    (labels / "classes.txt").write_text("ulcer\n")
    res = import_dataset("yolo", imgs, [labels], [], tmp_path / "out")
    recs = by_name(res.records)
    assert recs["a.jpg"].boxes == [[24, 12, 40, 36], [0, 0, 16, 24]]
    assert recs["b.jpg"].healthy and recs["c.png"].healthy  # empty label / no label
    assert (recs["a.jpg"].split, recs["c.png"].split) == ("train", "val")  # folders name the split


# ------------------------------------------------------------------------------------------- dfuc-csv
@pytest.mark.parametrize("header", [True, False])
def test_dfuc_csv_rows_and_rowless_images(tmp_path: Path, header: bool) -> None:
    imgs = tmp_path / "images"
    for n in ("100001.jpg", "100002.jpg", "200001.jpg"):
        make_image(imgs / n)
    rows = ["100001.jpg,1,2,10,20", "100001.jpg,30,30,40,44", "100002.jpg,5,5,9,9"]
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("\n".join((["name,xmin,ymin,xmax,ymax"] if header else []) + rows) + "\n")
    res = import_dataset("dfuc-csv", imgs, [csv_path], [], tmp_path / "out")
    recs = by_name(res.records)
    assert recs["100001.jpg"].boxes == [[1, 2, 10, 20], [30, 30, 40, 44]]
    assert recs["100002.jpg"].boxes == [[5, 5, 9, 9]]
    assert recs["200001.jpg"].healthy
    assert {r.split for r in res.records} == {"train"}  # one CSV named train: every image is train


def test_dfuc_csv_patient_column_keeps_patients_in_one_split(tmp_path: Path) -> None:
    imgs = tmp_path / "images"
    lines = ["name,xmin,ymin,xmax,ymax,patient"]
    for i in range(24):
        make_image(imgs / f"{i:03d}.jpg", 16, 12)
        lines.append(f"{i:03d}.jpg,1,1,5,5,P{i % 6}")
    (tmp_path / "gt.csv").write_text("\n".join(lines))
    res = import_dataset("dfuc-csv", imgs, [tmp_path / "gt.csv"], [], tmp_path / "out",
                         options=ImportOptions(patient_column="patient", val_fraction=0.2, test_fraction=0.2))
    splits: dict[str, set[str]] = {}
    for r in res.records:
        splits.setdefault(str(r.patient), set()).add(r.split)
    assert len(splits) == 6 and all(len(s) == 1 for s in splits.values())
    assert {r.split for r in res.records} == {"train", "val", "test"}


# --------------------------------------------------------------------------------- patient regex splits
def test_patient_regex_never_puts_one_patient_in_two_splits(tmp_path: Path) -> None:
    imgs = tmp_path / "images"
    entries = []
    for i in range(40):
        name = f"pat{i % 8:02d}_visit{i}.png"
        make_image(imgs / name, 16, 12)
        entries.append((i, name))
    ann = write_coco(tmp_path / "all.json", entries, [(i, i, [1, 1, 4, 4]) for i in range(40)], size=(16, 12))
    opts = ImportOptions(patient_regex=r"^(pat\d+)_", val_fraction=0.25, test_fraction=0.25, seed=1)
    res = import_dataset("coco", imgs, [ann], [], tmp_path / "out", options=opts)
    patients: dict[str, set[str]] = {}
    for r in res.records:
        patients.setdefault(str(r.patient), set()).add(r.split)
    assert sorted(patients) == [f"pat{i:02d}" for i in range(8)]
    assert all(len(s) == 1 for s in patients.values())
    assert sorted(next(iter(s)) for s in patients.values()).count("test") == 2


# ---------------------------------------------------------------------------------------------- healthy
def test_healthy_folder_subfolders_set_the_split(tmp_path: Path) -> None:
    imgs = tmp_path / "images"
    make_image(imgs / "u.jpg")
    ann = write_coco(tmp_path / "train.json", [(1, "u.jpg")], [(1, 1, [2, 2, 8, 8])])
    h = tmp_path / "healthy"
    make_image(h / "train" / "h1.jpg")
    make_image(h / "val" / "deep" / "h2.png")
    make_image(h / "test" / "h3.jpg")
    (h / "train" / "README.txt").write_text("not an image")
    res = import_dataset("coco", imgs, [ann], [h], tmp_path / "out")
    recs = by_name(res.records)
    assert [(recs[n].split, recs[n].healthy) for n in ("h1.jpg", "h2.png", "h3.jpg")] == [
        ("train", True), ("val", True), ("test", True)]
    assert recs["u.jpg"].split == "train" and not recs["u.jpg"].healthy
    assert any(line.startswith(f"ignored: {h}: 1 file(s)") and "README.txt" in line for line in res.report_lines)


# ------------------------------------------------------------------------------------------------ masks
def _mask(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8) * 255).save(path)


def test_masks_components_min_area_and_keep_largest(tmp_path: Path) -> None:
    imgs, masks = tmp_path / "images", tmp_path / "masks"
    m1 = np.zeros((48, 64), bool)
    m1[5:15, 10:20] = True  # 100 px
    m1[30, 40] = m1[31, 41] = True  # 2 px, diagonal = one 8-connected component -> dropped
    m1[40:43, 50:53] = True  # 9 px -> dropped
    m2 = np.zeros((48, 64), bool)
    m2[2:4, 2:4] = True  # 4 px: the largest of a mask with only tiny parts is kept
    m2[20, 20] = True  # 1 px -> dropped
    for name, m in (("a", m1), ("b", m2), ("c", np.zeros((48, 64), bool))):
        make_image(imgs / f"{name}.jpg")
        _mask(masks / f"{name}.png", m)
    res = import_dataset("masks", imgs, [masks], [], tmp_path / "out", options=ImportOptions(min_area=26))
    recs = by_name(res.records)
    assert recs["a.jpg"].boxes == [[10, 5, 20, 15]]
    assert recs["b.jpg"].boxes == [[2, 2, 4, 4]]
    assert recs["c.jpg"].healthy and recs["c.jpg"].boxes == []  # empty mask: wound just healed
    assert res.counts["dropped_components"] == 3
    assert f"dropped: {(masks / 'a.png').resolve()}: 2 component(s) below 26 px (sizes 2, 9)" in res.report_lines
    assert f"dropped: {(masks / 'b.png').resolve()}: 1 component(s) below 26 px (sizes 1)" in res.report_lines


def test_negative_crops_stay_away_from_the_mask(tmp_path: Path) -> None:
    imgs, masks = tmp_path / "images", tmp_path / "masks"
    m = np.zeros((96, 128), bool)
    m[40:56, 56:72] = True
    make_image(imgs / "val" / "w.png", 128, 96)
    _mask(masks / "val" / "w.png", m)
    opts = ImportOptions(negative_crops=3, crop_size=32, crop_margin=8, seed=5)
    out = tmp_path / "out"
    res = import_dataset("masks", imgs, [masks], [], out, options=opts)
    crops = [r for r in res.records if r.kind == "negative_crop"]
    assert len(crops) == 3
    dist = ndimage.distance_transform_edt(~m)
    source = np.asarray(Image.open(imgs / "val" / "w.png"))
    for r in crops:
        assert r.healthy and r.split == "val" and r.boxes == [] and (r.width, r.height) == (32, 32)
        assert Path(r.path).parent == (out / "negatives" / "val").resolve()
        x, y = map(int, r.source.rsplit("@", 1)[1].split(","))
        assert dist[y:y + 32, x:x + 32].min() >= 8
        assert np.array_equal(np.asarray(Image.open(r.path)), source[y:y + 32, x:x + 32])
    again = import_dataset("masks", imgs, [masks], [], tmp_path / "out2", options=opts)
    assert [r.source for r in again.records] == [r.source for r in res.records]


# --------------------------------------------------------------------------------------- real FUSeg data
def test_fuseg_slice_coco_and_masks_agree(fuseg_dir: Path, tmp_path: Path) -> None:
    val = json.loads((fuseg_dir / "annotations" / "val.json").read_text())
    images = val["images"][:20]
    ids = {im["id"] for im in images}
    sliced = dict(val, images=images, annotations=[a for a in val["annotations"] if a["image_id"] in ids])
    ann = tmp_path / "val.json"
    ann.write_text(json.dumps(sliced))
    coco = import_dataset("coco", fuseg_dir / "images", [ann], [], tmp_path / "coco")
    assert len(coco.records) == 20 and {r.split for r in coco.records} == {"val"}
    assert sum(len(r.boxes) for r in coco.records) == len(sliced["annotations"])

    # images 10-19 of val include an empty mask (0131), a 4-box image (0135) and a dropped 24 px fragment (0179)
    last10 = [Path(im["file_name"]).stem for im in images[10:]]
    img_dir, mask_dir = tmp_path / "img", tmp_path / "mask"
    img_dir.mkdir()
    mask_dir.mkdir()
    for stem in last10:  # symlinks: a 10-image slice of the real folders without copying
        (img_dir / f"{stem}.jpg").symlink_to(fuseg_dir / "images" / "val" / f"{stem}.jpg")
        (mask_dir / f"{stem}.png").symlink_to(fuseg_dir / "masks" / "val" / f"{stem}.png")
    masked = import_dataset("masks", img_dir, [mask_dir], [], tmp_path / "masks",
                            options=ImportOptions(min_area=26.2))
    coco_boxes = {Path(r.path).stem: sorted(r.boxes) for r in coco.records}
    assert len(masked.records) == 10
    for r in masked.records:
        stem = Path(r.path).stem
        assert sorted(r.boxes) == coco_boxes[stem], stem
        assert (r.width, r.height) == (512, 512)
        assert r.healthy == (stem == "fuseg_0131")
    assert max(len(r.boxes) for r in masked.records) == 4
    assert masked.counts["dropped_components"] == 1
    assert any("fuseg_0179.png: 1 component(s) below 26.2 px (sizes 24)" in line for line in masked.report_lines)


# -------------------------------------------------------------------------------------------------- CLI
def test_cli_import_ok_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    imgs = tmp_path / "images"
    make_image(imgs / "a.jpg")
    ann = write_coco(tmp_path / "train.json", [(1, "a.jpg")], [(1, 1, [1, 1, 10, 10])])
    assert main(["data", "import", "--format", "coco", "--images", str(imgs), "--annotations", str(ann),
                 "--out", str(tmp_path / "ok")]) == 0
    assert "dataset written to" in capsys.readouterr().out
    assert len(read_dataset(tmp_path / "ok")) == 1

    bad = write_coco(tmp_path / "bad.json", [(1, "a.jpg"), (2, "gone.jpg")], [])
    code = main(["data", "import", "--format", "coco", "--images", str(imgs), "--annotations", str(bad),
                 "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 2
    assert "error: import of coco annotations failed with 1 problem(s)" in err
    assert "gone.jpg: image file does not exist" in err and "Traceback" not in err
