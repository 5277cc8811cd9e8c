"""`dfudet data fuseg`: rebuilding the shared FUSeg box folder from the public source layout.

The replica test rebuilds ../shared/data/fuseg from a copy of the public source layout made out of that folder. What it
can check honestly, and what it cannot:
- Checked: the split of every one of the 945 shared images (train/val/test membership under the seed), every
  annotation byte of the three COCO files (boxes, mask_area, order, ids, source fields), every mask byte, the set of
  file names, the removed duplicates and which copy is kept, and that the 42 ids the shared folder does not name
  are the module's 40 holdout + 2 train ids (the split reproduces only with 0121 and one of 0566/0569/0571 as the
  train ids; the public repository's file list says 0569, see the module docstring).
- Not checkable here: the JPEG bytes of a rebuild from the real source (the replica's PNGs are decodes of the
  shared JPEGs, so they are encoded a second time; only their closeness is checked); the holdout's boxes (its
  photos and masks are not distributed; the replica synthesises them); which of 0566/0569/0571 is train (all three
  give the same train/val/test).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dfudet.cli import main
from dfudet.data import fuseg_source as fs
from dfudet.errors import DataError

_DUP_LINE = re.compile(r"`(\d{4})` \(would have been (\w+)\) = pixel-identical to `(\d{4})` \(kept, (\w+)\)")


# ------------------------------------------------------------------------------------------- pure rules, no data
def test_split_sizes_follow_the_fractions_and_the_seed() -> None:
    split = fs.assign_splits(list(fs.TRAIN_IDS), list(fs.VALIDATION_IDS))
    counts = {s: sum(v == s for v in split.values()) for s in ("train", "val", "test", "holdout")}
    assert counts == {"train": 688, "val": 122, "test": 160, "holdout": 40}
    assert all(split[i] in ("train", "val") for i in fs.TRAIN_IDS)
    assert all(split[i] in ("test", "holdout") for i in fs.VALIDATION_IDS)
    assert fs.assign_splits(list(reversed(fs.TRAIN_IDS)), list(fs.VALIDATION_IDS)) == split  # sorted before shuffling
    assert fs.assign_splits(list(fs.TRAIN_IDS), list(fs.VALIDATION_IDS), seed=1) != split


def test_component_rule_drops_specks_but_never_the_largest_component() -> None:
    mask = np.zeros((512, 512), dtype=bool)
    mask[10:20, 30:50] = True  # 200 px
    mask[100:105, 100:105] = True  # 25 px: under 0.01 % of 262144 px (26.2), dropped
    mask[200, 200] = mask[201, 201] = mask[202, 202] = True  # diagonal: one 8-connected component of 3 px, dropped
    mask[300:306, 300:305] = True  # 30 px: kept
    boxes, dropped = fs.component_boxes(mask)
    assert boxes == [([30, 10, 20, 10], 200), ([300, 300, 5, 6], 30)]
    assert dropped == 2

    speck = np.zeros((512, 512), dtype=bool)
    speck[5, 7] = speck[6, 8] = True  # only a 2-px component: it is the largest, so it is kept
    speck[50, 50] = True
    assert fs.component_boxes(speck) == ([([7, 5, 2, 2], 2)], 1)
    assert fs.component_boxes(np.zeros((8, 8), dtype=bool)) == ([], 0)


# ------------------------------------------------------------------------------------------- bad input
def _name_only_layout(root: Path) -> Path:
    """Every file name of the snapshot's train/ and validation/ folders, as empty files (nothing decodable)."""
    challenge = root / fs.CHALLENGE_DIR
    for folder, ids in (("train", fs.TRAIN_IDS), ("validation", fs.VALIDATION_IDS)):
        for kind in ("images", "labels"):
            d = challenge / folder / kind
            d.mkdir(parents=True)
            for i in ids:
                (d / f"{i:04d}.png").touch()
    return challenge


def test_a_folder_that_is_not_fuseg_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    src = tmp_path / "photos"
    src.mkdir()
    (src / "a.jpg").write_bytes(b"x")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="not a FUSeg checkout") as err:
        fs.build_fuseg(src, out)
    assert "git clone https://github.com/uwm-bigdata/wound-segmentation" in str(err.value)
    with pytest.raises(DataError, match="no such folder"):
        fs.build_fuseg(tmp_path / "nowhere", out)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


def test_missing_and_extra_files_are_named_and_nothing_is_written(tmp_path: Path) -> None:
    challenge = _name_only_layout(tmp_path / "clone")
    (challenge / "train" / "labels" / "0012.png").unlink()
    (challenge / "validation" / "images" / "0001.png").unlink()
    (challenge / "train" / "images" / "1011.png").touch()
    shutil.rmtree(challenge / "validation" / "labels")
    out = tmp_path / "out"
    with pytest.raises(DataError) as err:
        fs.build_fuseg(tmp_path / "clone", out)
    text = str(err.value)
    assert "nothing was written" in text
    assert f"{challenge / 'train' / 'labels' / '0012.png'}: missing" in text
    assert f"{challenge / 'validation' / 'images' / '0001.png'}: missing" in text
    assert f"{challenge / 'train' / 'images' / '1011.png'}: not in the FUSeg snapshot" in text
    assert f"{challenge / 'validation' / 'labels'}: folder missing" in text
    assert len(err.value.problems) == 4
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["clone"]


def test_cli_prints_the_problem_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    challenge = _name_only_layout(tmp_path / "clone")
    (challenge / "validation" / "labels" / "0233.png").unlink()
    out = tmp_path / "out"
    assert main(["data", "fuseg", str(challenge), "--out", str(out)]) == 2  # the challenge folder itself is accepted
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert "0233.png: missing" in err
    assert not out.exists()


# ------------------------------------------------------------------------------------------- a small full source
def _save_rgb_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, compress_level=1)


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, str]]:
    """The snapshot's 1010 ids as 16x16 noise photos with a square mask each, plus three groups of exact copies."""
    root = tmp_path_factory.mktemp("tiny") / "clone"
    challenge = root / fs.CHALLENGE_DIR
    split = fs.assign_splits(list(fs.TRAIN_IDS), list(fs.VALIDATION_IDS))
    rng = np.random.default_rng(0)
    photos = {i: rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for i in fs.ALL_IDS}
    first = {s: sorted(i for i, v in split.items() if v == s) for s in ("train", "val", "test", "holdout")}
    # copies: a val and a train photo (val kept), a test and a holdout photo (holdout kept), two train photos (lower id)
    photos[first["train"][0]] = photos[first["val"][0]]
    photos[first["test"][0]] = photos[first["holdout"][0]]
    photos[first["train"][2]] = photos[first["train"][1]]
    for i in fs.ALL_IDS:
        folder = "validation" if i in fs.VALIDATION_IDS else "train"
        _save_rgb_png(challenge / folder / "images" / f"{i:04d}.png", photos[i])
        mask = np.zeros((16, 16, 3), np.uint8)
        if i % 10:  # every tenth mask empty
            mask[2:2 + i % 7 + 1, 3:9] = 255
        _save_rgb_png(challenge / folder / "labels" / f"{i:04d}.png", mask)
    (challenge / "test" / "images").mkdir(parents=True)  # the unlabelled source test folder is ignored
    _save_rgb_png(challenge / "test" / "images" / "0001.png", photos[1])
    return root, split


def test_small_source_is_split_deduplicated_and_written(tiny_source: tuple[Path, dict[int, str]],
                                                        tmp_path: Path) -> None:
    root, split = tiny_source
    first = {s: sorted(i for i, v in split.items() if v == s) for s in ("train", "val", "test", "holdout")}
    out = tmp_path / "fuseg"
    result = fs.build_fuseg(root, out)
    assert result.removed == sorted([
        (first["train"][0], "train", first["val"][0], "val"),
        (first["test"][0], "test", first["holdout"][0], "holdout"),
        (first["train"][2], "train", first["train"][1], "train"),
    ])
    assert result.holdout_ids == first["holdout"]
    assert {s: c["images"] for s, c in result.counts.items()} == {"train": 686, "val": 122, "test": 159}
    for s in fs.SPLITS:
        coco = json.loads((out / "annotations" / f"{s}.json").read_text())
        kept = [i for i in first[s] if i not in {r[0] for r in result.removed}]
        assert [im["id"] for im in coco["images"]] == kept
        assert sorted(p.name for p in (out / "images" / s).iterdir()) == [f"fuseg_{i:04d}.jpg" for i in kept]
        for im in coco["images"]:
            i = im["id"]
            anns = [a for a in coco["annotations"] if a["image_id"] == i]
            assert im["source_mask_empty"] == (i % 10 == 0)
            assert [a["bbox"] for a in anns] == ([] if i % 10 == 0 else [[3, 2, 6, i % 7 + 1]])
            assert im["source_file"] == f"{fs.CHALLENGE_DIR}/{im['source_split']}/images/{i:04d}.png"
        assert [a["id"] for a in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))
    mask = np.asarray(Image.open(out / "masks" / "train" / f"fuseg_{first['train'][1]:04d}.png"))
    assert mask.dtype == np.uint8 and mask.ndim == 2 and set(np.unique(mask)) <= {0, 255}
    sums = (out / "SHA256SUMS").read_text().splitlines()
    assert len(sums) == 2 * (686 + 122 + 159) + 3
    assert [ln.split("  ")[1] for ln in sums] == sorted(ln.split("  ")[1] for ln in sums)
    assert "122 images" in result.summary_text()
    with pytest.raises(DataError, match="not an empty folder"):  # never overwrites
        fs.build_fuseg(root, out)


def test_cli_builds_from_the_source_and_prints_the_counts(tiny_source: tuple[Path, dict[int, str]], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fuseg"
    out.mkdir()  # an empty folder is fine
    assert main(["data", "fuseg", str(tiny_source[0]), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"FUSeg boxes written to {out}" in text
    assert "3 exact duplicate(s) removed; 40 holdout images not written" in text
    assert json.loads((out / "annotations" / "val.json").read_text())["info"]["split_seed"] == 20210312


def test_an_unreadable_file_stops_the_build_before_anything_is_written(tiny_source: tuple[Path, dict[int, str]],
                                                                       tmp_path: Path) -> None:
    root = tmp_path / "clone"
    shutil.copytree(tiny_source[0], root)
    bad = root / fs.CHALLENGE_DIR / "validation" / "labels" / "0566.png"
    bad.write_bytes(b"not a png")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="nothing was written") as err:
        fs.build_fuseg(root, out)
    assert err.value.problems == [err.value.problems[0]] and str(bad) in err.value.problems[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clone"]  # no out, no hidden partial folder


# ------------------------------------------------------------------------------------------- the real shared folder
def _shared_images(fuseg_dir: Path) -> dict[int, dict]:
    """id -> COCO image entry (plus its split) of the shared folder."""
    out = {}
    for split in fs.SPLITS:
        for im in json.loads((fuseg_dir / "annotations" / f"{split}.json").read_text())["images"]:
            out[im["id"]] = im | {"split": split}
    return out


def _build_replica(fuseg_dir: Path, root: Path) -> tuple[list[tuple[int, str, int, str]], list[int], list[int]]:
    """The public source layout under `root`, made from the shared folder.

    Shared photos are written as PNG under their `source_file`, shared masks as RGB PNG (equal channels, as in the
    source) under `source_mask`; the duplicates the shared README lists get their kept copy's pixels (and a shifted
    mask: the source's copies have different masks); the 42 ids the shared folder does not name get synthetic photos,
    two of them (the train ids) exact copies of holdout photos. Returns the README's duplicates, the holdout ids and
    the two train ids.
    """
    images = _shared_images(fuseg_dir)
    listed = [(int(a), b, int(c), d) for a, b, c, d in _DUP_LINE.findall((fuseg_dir / "README.md").read_text())]
    assert len(listed) == 23, "the shared README's duplicate list changed"
    for i, im in images.items():
        rgb = np.asarray(Image.open(fuseg_dir / "images" / im["file_name"]).convert("RGB"))
        _save_rgb_png(root / im["source_file"], rgb)
        mask = np.asarray(Image.open(fuseg_dir / "masks" / im["file_name"].replace(".jpg", ".png")))
        mask = np.repeat(mask[..., None], 3, axis=2).copy()
        if i == 233:  # the source mask 0233 also has pixels of value 32, below the threshold
            mask[:4, :21][mask[:4, :21] == 0] = 32
        _save_rgb_png(root / im["source_mask"], mask)
    challenge = root / fs.CHALLENGE_DIR
    for removed, would_be, kept, _ in listed:
        folder = "validation" if would_be == "test" else "train"
        kept_im = images[kept]
        shutil.copyfile(root / kept_im["source_file"], challenge / folder / "images" / f"{removed:04d}.png")
        mask = np.roll(np.asarray(Image.open(root / kept_im["source_mask"])), 3, axis=1)
        _save_rgb_png(challenge / folder / "labels" / f"{removed:04d}.png", mask)
    unnamed = sorted(set(fs.ALL_IDS) - set(images) - {r[0] for r in listed})
    holdout = [i for i in unnamed if i in fs.VALIDATION_IDS]
    train_copies = [i for i in unnamed if i not in fs.VALIDATION_IDS]
    rng = np.random.default_rng(20210312)
    for i in holdout:
        photo = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
        _save_rgb_png(challenge / "validation" / "images" / f"{i:04d}.png", photo)
        mask = np.zeros((512, 512, 3), np.uint8)
        mask[100:150, 200:260] = 255
        _save_rgb_png(challenge / "validation" / "labels" / f"{i:04d}.png", mask)
    for copy_of, i in zip(holdout, train_copies, strict=False):
        shutil.copyfile(challenge / "validation" / "images" / f"{copy_of:04d}.png",
                        challenge / "train" / "images" / f"{i:04d}.png")
        shutil.copyfile(challenge / "validation" / "labels" / f"{copy_of:04d}.png",
                        challenge / "train" / "labels" / f"{i:04d}.png")
    return listed, holdout, train_copies


def test_the_id_lists_agree_with_the_shared_folder(fuseg_dir: Path) -> None:
    images = _shared_images(fuseg_dir)
    listed = _DUP_LINE.findall((fuseg_dir / "README.md").read_text())
    for i, im in images.items():
        assert (i in fs.VALIDATION_IDS) == (im["source_split"] == "validation"), i
    for removed, would_be, _, _ in listed:
        assert (int(removed) in fs.VALIDATION_IDS) == (would_be == "test"), removed
    unnamed = set(fs.ALL_IDS) - set(images) - {int(r[0]) for r in listed}
    assert len(unnamed) == 42 and len(unnamed & set(fs.VALIDATION_IDS)) == 40  # 40 holdout + 2 removed train copies
    # the seeded split puts every shared image where the shared folder has it
    split = fs.assign_splits(list(fs.TRAIN_IDS), list(fs.VALIDATION_IDS))
    assert {i: split[i] for i in images} == {i: im["split"] for i, im in images.items()}
    assert all(split[int(r)] == w for r, w, _, _ in listed)
    assert all(split[i] == "holdout" for i in unnamed & set(fs.VALIDATION_IDS))


@pytest.mark.slow
def test_rebuild_from_a_source_replica_equals_the_shared_folder(fuseg_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "wound-segmentation"
    listed, holdout, train_copies = _build_replica(fuseg_dir, root)
    out = tmp_path / "fuseg"
    result = fs.build_fuseg(root, out)
    # the duplicates the shared README lists, plus the two train copies of holdout photos, and nothing else
    assert result.removed == sorted([*listed, *((i, "train", h, "holdout") for i, h in zip(train_copies, holdout,
                                                                                             strict=False))])
    assert result.holdout_ids == holdout
    # the shared README's counts: images, boxes, box-less images, components under 0.01 % dropped
    assert result.counts == {"train": {"images": 668, "boxes": 835, "negatives": 15, "dropped_components": 30},
                             "val": {"images": 118, "boxes": 162, "negatives": 3, "dropped_components": 2},
                             "test": {"images": 159, "boxes": 204, "negatives": 5, "dropped_components": 5}}

    # COCO files: equal byte for byte (every box, mask_area, id, order and source field)
    for split in fs.SPLITS:
        ours = (out / "annotations" / f"{split}.json").read_bytes()
        theirs = (fuseg_dir / "annotations" / f"{split}.json").read_bytes()
        if ours != theirs:  # say where, box for box, before failing on the bytes
            a, b = json.loads(ours), json.loads(theirs)
            assert [im["id"] for im in a["images"]] == [im["id"] for im in b["images"]], split
            assert a["images"] == b["images"], split
            assert a["annotations"] == b["annotations"], split
        assert ours == theirs, split

    # masks and annotations: the same sha256 as the shared SHA256SUMS; images: the same names
    ours = dict(ln.split("  ")[::-1] for ln in (out / "SHA256SUMS").read_text().splitlines())
    theirs = dict(ln.split("  ")[::-1] for ln in (fuseg_dir / "SHA256SUMS").read_text().splitlines())
    assert set(ours) == set(theirs) - {"README.md"}
    assert {p: h for p, h in ours.items() if not p.startswith("images/")} == \
        {p: h for p, h in theirs.items() if p != "README.md" and not p.startswith("images/")}
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert on_disk == sorted([*ours, "SHA256SUMS"])

    # images: JPEG of the (here twice-compressed) photo at its size, close to the shared one
    for rel in sorted(p for p in ours if p.startswith("images/"))[::40]:
        a = np.asarray(Image.open(out / rel), dtype=np.int16)
        b = np.asarray(Image.open(fuseg_dir / rel), dtype=np.int16)
        assert a.shape == b.shape == (512, 512, 3)
        assert np.abs(a - b).mean() < 0.5, rel  # measured: at most 0.1

