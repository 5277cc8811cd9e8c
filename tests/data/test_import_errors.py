"""Bad input to `dfudet data import`: every problem is listed, named by file and line/entry; skip_bad reports them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dfudet.data.importers import ImportOptions, import_dataset
from dfudet.data.records import read_dataset
from dfudet.errors import ConfigError, DataError


def make_image(path: Path, w: int = 64, h: int = 48, mode: str = "RGB", exif_orientation: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        img = Image.fromarray(np.full((h, w), 40000, dtype=np.uint16))
    else:
        rgb = Image.fromarray(np.random.default_rng(1).integers(0, 255, (h, w, 3), dtype=np.uint8))
        img = rgb if mode == "RGB" else rgb.convert(mode)
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif
    img.save(path, **kwargs)
    return path


def coco(path: Path, images: list[tuple[int, str]], anns: list[tuple[int, int, list[float]]],
         size: tuple[int, int] | None = (64, 48)) -> Path:
    payload = {
        "images": [{"id": i, "file_name": f, **({"width": size[0], "height": size[1]} if size else {})}
                   for i, f in images],
        "annotations": [{"id": a, "image_id": i, "bbox": b, "category_id": 1} for a, i, b in anns],
    }
    path.write_text(json.dumps(payload))
    return path


def problems_of(exc: pytest.ExceptionInfo[DataError]) -> list[str]:
    return exc.value.problems


# ------------------------------------------------------------------------------------- decoding & modes
@pytest.mark.parametrize("name, mode", [("rgba.png", "RGBA"), ("grey.png", "L"), ("deep.png", "I;16"),
                                        ("cmyk.jpg", "CMYK")])
def test_odd_image_modes_import_with_their_size(tmp_path: Path, name: str, mode: str) -> None:
    make_image(tmp_path / "img" / name, mode=mode)
    ann = coco(tmp_path / "a.json", [(1, name)], [(1, 1, [5, 5, 10, 10])])
    res = import_dataset("coco", tmp_path / "img", [ann], [], tmp_path / "out")
    (rec,) = res.records
    assert (rec.width, rec.height, rec.boxes) == (64, 48, [[5, 5, 15, 15]])


def test_exif_rotated_jpeg_boxes_are_read_against_the_rotated_image(tmp_path: Path) -> None:
    make_image(tmp_path / "img" / "r.jpg", 64, 48, exif_orientation=6)  # stored 64x48, displayed 48x64
    ann = coco(tmp_path / "a.json", [(1, "r.jpg")], [(1, 1, [10, 50, 20, 10])], size=(48, 64))
    res = import_dataset("coco", tmp_path / "img", [ann], [], tmp_path / "out")
    (rec,) = res.records
    assert (rec.width, rec.height) == (48, 64)
    assert rec.boxes == [[10, 50, 30, 60]] and res.counts["clipped_boxes"] == 0  # y up to 60 fits only rotated

    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "r.txt").write_text("0 0.5 0.5 0.5 0.25\n")
    res = import_dataset("yolo", tmp_path / "img", [labels], [], tmp_path / "yolo")
    assert res.records[0].boxes == [[12, 24, 36, 40]]

    stored_size = coco(tmp_path / "b.json", [(1, "r.jpg")], [(1, 1, [1, 1, 5, 5])], size=(64, 48))
    with pytest.raises(DataError) as exc:
        import_dataset("coco", tmp_path / "img", [stored_size], [], tmp_path / "out2")
    assert problems_of(exc) == [
        f"{stored_size}: image id 1 ('r.jpg'): annotation says 64x48 but the image is 48x64 after EXIF "
        "orientation - it gives the stored size before EXIF rotation; boxes must be given for the rotated image"
    ]


def test_corrupt_and_truncated_images_are_listed_together(tmp_path: Path) -> None:
    good = make_image(tmp_path / "img" / "good.jpg")
    (tmp_path / "img" / "cut.jpg").write_bytes(good.read_bytes()[:300])
    (tmp_path / "img" / "junk.jpg").write_bytes(b"\x00" * 50)
    ann = coco(tmp_path / "a.json", [(1, "good.jpg"), (2, "cut.jpg"), (3, "junk.jpg")], [])
    with pytest.raises(DataError) as exc:
        import_dataset("coco", tmp_path / "img", [ann], [], tmp_path / "out")
    probs = problems_of(exc)
    assert len(probs) == 2
    assert probs[0].startswith(f"{ann}: image id 2 ('cut.jpg'): {tmp_path / 'img' / 'cut.jpg'}: "
                               "corrupt or truncated image")
    assert probs[1].startswith(f"{ann}: image id 3 ('junk.jpg'): {tmp_path / 'img' / 'junk.jpg'}: not a readable image")
    assert "failed with 2 problem(s) in 2 image(s)" in str(exc.value)


# ------------------------------------------------------------------------------------------------ boxes
def test_box_outside_is_clipped_and_reported(tmp_path: Path) -> None:
    make_image(tmp_path / "img" / "a.jpg")
    ann = coco(tmp_path / "a.json", [(1, "a.jpg")], [(9, 1, [50, 40, 30, 30])])
    res = import_dataset("coco", tmp_path / "img", [ann], [], tmp_path / "out")
    assert res.records[0].boxes == [[50, 40, 64, 48]]
    line = (f"clipped: {ann}: annotation id 9 (image 'a.jpg', bbox xywh [50, 40, 30, 30]): box [50, 40, 80, 70] "
            "extends outside the 64x48 image; clipped to [50, 40, 64, 48]")
    assert res.report_lines == [line]
    assert line in (tmp_path / "out" / "import_report.txt").read_text().splitlines()
    assert "clipped boxes: 1" in res.summary_text()


def test_all_problems_are_listed_with_file_and_entry(tmp_path: Path) -> None:
    make_image(tmp_path / "img" / "a.jpg")
    make_image(tmp_path / "img" / "b.jpg")
    ann = coco(tmp_path / "a.json", [(1, "a.jpg"), (2, "b.jpg"), (3, "b.jpg"), (4, "missing.jpg")],
               [(1, 1, [5, 5, 0, 10]), (2, 1, [70, 50, 5, 5]), (3, 99, [1, 1, 2, 2])])
    with pytest.raises(DataError) as exc:
        import_dataset("coco", tmp_path / "img", [ann], [], tmp_path / "out")
    assert problems_of(exc) == [
        f"{ann}: annotation id 3: refers to image id 99, which is not in 'images'",
        f"{ann}: annotation id 1 (image 'a.jpg', bbox xywh [5, 5, 0, 10]): box [5, 5, 5, 15] has zero "
        "or negative area (needs x2 > x1 and y2 > y1)",
        f"{ann}: annotation id 2 (image 'a.jpg', bbox xywh [70, 50, 5, 5]): box [70, 50, 75, 55] lies "
        "outside the 64x48 image (zero area after clipping)",
        f"{ann}: image id 2 ('b.jpg'): image 'b.jpg' is listed more than once in this import "
        f"(also: {ann}: image id 3 ('b.jpg'))",
        f"{ann}: image id 3 ('b.jpg'): image 'b.jpg' is listed more than once in this import "
        f"(also: {ann}: image id 2 ('b.jpg'))",
        f"{ann}: image id 4 ('missing.jpg'): {tmp_path / 'img' / 'missing.jpg'}: image file does not exist",
    ]
    assert not (tmp_path / "out" / "dataset.json").exists()
    assert (tmp_path / "out" / "import_errors.txt").read_text().count("\n") == 7


def test_skip_bad_skips_whole_images_and_writes_the_report(tmp_path: Path) -> None:
    make_image(tmp_path / "img" / "a.jpg")
    make_image(tmp_path / "img" / "b.jpg")
    ann = coco(tmp_path / "a.json", [(1, "a.jpg"), (2, "b.jpg"), (3, "gone.jpg")],
               [(1, 1, [5, 5, 10, 10]), (2, 1, [5, 5, -3, 10]), (3, 2, [1, 1, 3, 3]), (4, 42, [1, 1, 3, 3])])
    res = import_dataset("coco", tmp_path / "img", [ann], [], tmp_path / "out", skip_bad=True)
    # a.jpg has one bad box: the whole image is skipped so it never appears with a box missing
    assert [Path(r.path).name for r in res.records] == ["b.jpg"]
    report = (tmp_path / "out" / "import_report.txt").read_text().splitlines()
    assert report[1:] == [
        f"skipped: {ann}: annotation id 4: refers to image id 42, which is not in 'images'",
        f"skipped: {ann}: annotation id 2 (image 'a.jpg', bbox xywh [5, 5, -3, 10]): box [5, 5, 2, 15] "
        "has zero or negative area (needs x2 > x1 and y2 > y1)",
        f"skipped: {ann}: image id 3 ('gone.jpg'): {tmp_path / 'img' / 'gone.jpg'}: image file does not exist",
    ]
    assert res.counts == {"clipped_boxes": 0, "dropped_components": 0, "skipped_images": 2,
                          "skipped_entries": 1, "negative_crops": 0, "masked_ulcers": 0}


def test_failed_import_keeps_the_existing_dataset(tmp_path: Path) -> None:
    make_image(tmp_path / "img" / "a.jpg")
    good = coco(tmp_path / "good.json", [(1, "a.jpg")], [(1, 1, [1, 1, 5, 5])])
    out = tmp_path / "out"
    import_dataset("coco", tmp_path / "img", [good], [], out)
    before = (out / "dataset.json").read_bytes(), (out / "import_report.txt").read_bytes()
    bad = coco(tmp_path / "bad.json", [(1, "a.jpg")], [(1, 1, [1, 1, 0, 0])])
    with pytest.raises(DataError):
        import_dataset("coco", tmp_path / "img", [bad], [], out)
    assert ((out / "dataset.json").read_bytes(), (out / "import_report.txt").read_bytes()) == before
    assert len(read_dataset(out)) == 1


# ------------------------------------------------------------------------------- per-format bad labels
def test_yolo_label_without_image_and_bad_lines(tmp_path: Path) -> None:
    make_image(tmp_path / "img" / "a.jpg")
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.5 0.5\n0 0.5 x 0.2 0.2\n")
    (labels / "orphan.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError) as exc:
        import_dataset("yolo", tmp_path / "img", [labels], [], tmp_path / "out")
    assert problems_of(exc) == [
        f"{labels / 'orphan.txt'}: label file has no image 'orphan.*' under {tmp_path / 'img'}",
        f"{labels / 'a.txt'}:2: expected 5 values 'class cx cy w h', got 3",
        f"{labels / 'a.txt'}:3: values must be an integer class and 4 numbers, got '0 0.5 x 0.2 0.2'",
    ]


def test_dfuc_csv_row_for_no_image_names_the_line(tmp_path: Path) -> None:
    make_image(tmp_path / "img" / "1.jpg")
    csv_path = tmp_path / "gt.csv"
    csv_path.write_text("name,xmin,ymin,xmax,ymax\n1.jpg,1,1,9,9\n2.jpg,1,1,9,9\n1.jpg,4,4,4,8\n1.jpg,a,1,2,3\n")
    with pytest.raises(DataError) as exc:
        import_dataset("dfuc-csv", tmp_path / "img", [csv_path], [], tmp_path / "out")
    assert problems_of(exc) == [
        f"{csv_path}:3: '2.jpg' is not an image file under {tmp_path / 'img'}",
        f"{csv_path}:5: coordinates ['a', '1', '2', '3'] must be 4 numbers (xmin, ymin, xmax, ymax)",
        f"{csv_path}:4: box [4, 4, 4, 8] has zero or negative area (needs x2 > x1 and y2 > y1)",
    ]


def test_voc_bad_bndbox_and_unparsable_xml(tmp_path: Path) -> None:
    make_image(tmp_path / "img" / "a.jpg")
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "a.xml").write_text("<annotation><filename>a.jpg</filename><object><name>u</name><bndbox>"
                               "<xmin>1</xmin><ymin>1</ymin><xmax>9</xmax></bndbox></object></annotation>")
    (ann / "b.xml").write_text("<annotation><filename>")
    with pytest.raises(DataError) as exc:
        import_dataset("voc", tmp_path / "img", [ann], [], tmp_path / "out")
    probs = problems_of(exc)
    assert probs[0].startswith(f"{ann / 'b.xml'}: cannot read VOC XML")
    assert probs[1] == f"{ann / 'a.xml'}: object 1 ('u'): <bndbox><ymax> is missing or not a number (None)"


def test_masks_size_mismatch_and_unpaired_files(tmp_path: Path) -> None:
    imgs, masks = tmp_path / "img", tmp_path / "masks"
    make_image(imgs / "a.jpg")
    make_image(imgs / "nomask.jpg")
    masks.mkdir()
    Image.new("L", (32, 32)).save(masks / "a.png")
    Image.new("L", (64, 48)).save(masks / "extra.png")
    with pytest.raises(DataError) as exc:
        import_dataset("masks", imgs, [masks], [], tmp_path / "out")
    assert problems_of(exc) == [
        f"{masks / 'extra.png'}: mask has no image 'extra.*' under {imgs}",
        f"{masks / 'a.png'}: mask is 32x32 but image {imgs / 'a.jpg'} is 64x48 (after EXIF orientation); "
        "a mask must have its image's size",
        f"{imgs / 'nomask.jpg'}: no mask 'nomask.png' under {masks}",
    ]


def test_patient_regex_must_match_and_have_one_group(tmp_path: Path) -> None:
    make_image(tmp_path / "img" / "p1_a.jpg")
    make_image(tmp_path / "img" / "odd.jpg")
    ann = coco(tmp_path / "a.json", [(1, "p1_a.jpg"), (2, "odd.jpg")], [])
    with pytest.raises(ConfigError, match="must have exactly one capture group"):
        import_dataset("coco", tmp_path / "img", [ann], [], tmp_path / "o", options=ImportOptions(patient_regex="p1"))
    with pytest.raises(DataError) as exc:
        import_dataset("coco", tmp_path / "img", [ann], [], tmp_path / "o",
                       options=ImportOptions(patient_regex=r"^(p\d+)_"))
    assert problems_of(exc) == [f"{ann}: image id 2 ('odd.jpg'): "
                                "--patient-regex '^(p\\\\d+)_' does not match 'odd.jpg'"]


def test_bad_arguments_fail_fast(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--images is required"):
        import_dataset("coco", None, [tmp_path / "x.json"], [], tmp_path / "o")
    with pytest.raises(DataError, match=r"--annotations .*nope\.json: file or folder does not exist"):
        import_dataset("coco", tmp_path, [tmp_path / "nope.json"], [], tmp_path / "o")
    with pytest.raises(ConfigError, match="val_fraction \\+ test_fraction must be < 1"):
        import_dataset("coco", tmp_path, [], [], tmp_path / "o",
                       options=ImportOptions(val_fraction=0.5, test_fraction=0.5))
    with pytest.raises(DataError, match=r"--healthy .*empty: no image files found"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "x.json").write_text('{"images": []}')
        import_dataset("coco", tmp_path, [tmp_path / "x.json"], [tmp_path / "empty"], tmp_path / "o")
