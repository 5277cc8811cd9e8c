"""The synthetic demo set: layout, COCO validity, boxes that match the drawn lesions, determinism, splits, errors."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from dfudet.data.demo import generate_demo, render_sample, split_counts
from dfudet.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def demo40(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "raw"
    return out, generate_demo(out, n=40, seed=3, size=320)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_counts_and_readme(demo40: tuple[Path, dict]) -> None:
    out, info = demo40
    assert info["ulcer_images"] == 20 and info["healthy_images"] == 20
    for sp in SPLITS:
        assert (out / "annotations" / f"{sp}.json").is_file()
        ulcer = sorted((out / "images" / sp).glob("demo_*.jpg"))
        healthy = sorted((out / "healthy" / sp).glob("healthy_*.jpg"))
        assert len(ulcer) >= 2 and len(healthy) >= 2, sp
    all_ulcer = list(out.glob("images/*/demo_*.jpg"))
    all_healthy = list(out.glob("healthy/*/healthy_*.jpg"))
    assert len(all_ulcer) == 20 and len(all_healthy) == 20
    assert len(list(out.glob("images/train/*.jpg"))) == split_counts(20)["train"] == 14
    readme = (out / "README.md").read_text()
    assert "--n 40 --seed 3 --size 320" in readme and "| train | 14 |" in readme


def test_coco_files_are_valid_and_boxes_inside_images(demo40: tuple[Path, dict]) -> None:
    out, info = demo40
    total_boxes, sides = 0, []
    for sp in SPLITS:
        coco = COCO(str(out / "annotations" / f"{sp}.json"))
        assert coco.loadCats(coco.getCatIds()) == [{"id": 1, "name": "ulcer", "supercategory": "wound"}]
        listed = {im["file_name"] for im in coco.dataset["images"]}
        on_disk = {f"{sp}/{p.name}" for p in (out / "images" / sp).glob("*.jpg")}
        assert listed == on_disk
        for img_id in coco.getImgIds():
            im = coco.loadImgs(img_id)[0]
            pixels = cv2.imread(str(out / "images" / im["file_name"]))
            assert pixels.shape == (320, 320, 3) == (im["height"], im["width"], 3)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
            assert 1 <= len(anns) <= 3, im["file_name"]
            for a in anns:
                x, y, w, h = a["bbox"]
                assert a["category_id"] == 1 and a["iscrowd"] == 0
                assert w > 0 and h > 0 and a["area"] == pytest.approx(w * h)
                assert 0 <= x and 0 <= y and x + w <= 320 and y + h <= 320
                assert 0 < a["mask_area"] <= w * h
                sides.append(max(w, h))
            total_boxes += len(anns)
    assert total_boxes == info["boxes"]
    # varied sizes: tiny lesions like the real data's and large ones (few-percent to ~30 % of the side)
    assert min(sides) <= 16 and max(sides) >= 48


def test_healthy_images_have_no_annotations(demo40: tuple[Path, dict]) -> None:
    out, _ = demo40
    names = {im["file_name"].split("/")[-1] for sp in SPLITS
             for im in json.loads((out / "annotations" / f"{sp}.json").read_text())["images"]}
    healthy = list(out.glob("healthy/*/*.jpg"))
    assert healthy and not names & {p.name for p in healthy}
    for i in range(1, 6):
        sample = render_sample(3, i, 128, healthy=True)
        assert sample.boxes.shape == (0, 4) and sample.masks == []


@pytest.mark.parametrize("index", [1, 2, 3, 4, 5, 6])
def test_boxes_are_tight_around_the_drawn_lesions(index: int) -> None:
    with_l = render_sample(11, index, 192, healthy=False)
    without = render_sample(11, index, 192, healthy=False, draw_lesions=False)
    assert without.boxes.shape == (0, 4) and len(with_l.boxes) >= 1
    diff = np.abs(with_l.image.astype(int) - without.image.astype(int)).sum(axis=2)
    near = np.zeros((192, 192), bool)
    for box, mask in zip(with_l.boxes, with_l.masks):
        ys, xs = np.nonzero(mask)
        assert list(box) == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        x0, y0, x1, y1 = box.astype(int)
        assert diff[mask].mean() > 30, "the lesion is not visibly drawn inside its box"
        assert (diff[y0:y1, x0:x1] > 30).mean() > 0.3
        # halo, blur and rim may spill a little around the box, nothing further
        pad = int(0.5 * max(x1 - x0, y1 - y0)) + 6
        near[max(0, y0 - pad):y1 + pad, max(0, x0 - pad):x1 + pad] = True
    assert diff[~near].max() == 0
    masks = np.stack(with_l.masks)
    assert masks.sum(axis=0).max() == 1, "lesions overlap"


def test_same_arguments_give_identical_files_and_another_seed_differs(tmp_path: Path) -> None:
    generate_demo(tmp_path / "a", n=12, seed=5, size=96)
    generate_demo(tmp_path / "b", n=12, seed=5, size=96)
    generate_demo(tmp_path / "c", n=12, seed=6, size=96)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    for sp in SPLITS:
        key = f"annotations/{sp}.json"
        assert json.loads(a[key]) == json.loads(b[key])
    jpgs = [k for k in a if k.endswith(".jpg")]
    pix = lambda files, k: cv2.imdecode(np.frombuffer(files[k], np.uint8), cv2.IMREAD_COLOR)  # noqa: E731
    assert all(np.array_equal(pix(a, k), pix(b, k)) for k in jpgs)
    assert sum(not np.array_equal(pix(a, k), pix(c, k)) for k in jpgs if k in c) >= len(jpgs) // 2
    assert np.array_equal(render_sample(5, 1, 96, False).image, render_sample(5, 1, 96, False).image)


def test_smallest_n_gets_two_of_each_kind_in_every_split_and_size_is_respected(tmp_path: Path) -> None:
    info = generate_demo(tmp_path, n=13, seed=0, size=64)
    assert info["ulcer_images"] == 7 and info["healthy_images"] == 6
    for sp in SPLITS:
        assert len(list((tmp_path / "images" / sp).glob("*.jpg"))) >= 2
        assert len(list((tmp_path / "healthy" / sp).glob("*.jpg"))) >= 2
    for p in tmp_path.rglob("*.jpg"):
        assert cv2.imread(str(p)).shape == (64, 64, 3)
    for k in range(6, 400):
        counts = split_counts(k)
        assert sum(counts.values()) == k and min(counts.values()) >= 2
        assert abs(counts["train"] / k - 0.7) < 0.1 or k < 30


def test_bad_arguments_and_foreign_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--n 11 is too small"):
        generate_demo(tmp_path / "x", n=11)
    with pytest.raises(ConfigError, match="--size 32 is too small"):
        generate_demo(tmp_path / "x", n=12, size=32)
    foreign = tmp_path / "foreign"
    (foreign / "images" / "train").mkdir(parents=True)
    (foreign / "images" / "train" / "demo_00001.jpg").write_bytes(b"someone else's")
    with pytest.raises(DataError, match=f"{foreign}: already holds demo-like files"):
        generate_demo(foreign, n=12, size=64)
    assert (foreign / "images" / "train" / "demo_00001.jpg").read_bytes() == b"someone else's"


def test_rerun_with_smaller_n_leaves_no_stale_images(tmp_path: Path) -> None:
    generate_demo(tmp_path, n=30, seed=0, size=64)
    (tmp_path / "notes.txt").write_text("mine")
    generate_demo(tmp_path, n=12, seed=0, size=64)
    assert len(list(tmp_path.glob("images/*/*.jpg"))) == 6
    assert len(list(tmp_path.glob("healthy/*/*.jpg"))) == 6
    assert (tmp_path / "notes.txt").read_text() == "mine"
