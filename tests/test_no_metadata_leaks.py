"""End to end: phone photos carrying GPS, time, device, maker notes, XMP, IPTC, an ICC profile and a trailing second
picture go through import (with hard-negative crops), prepare, evaluate (galleries), predict, track and serve; no
file any of them writes, and no response, may carry any of it, and a photo stored sideways (EXIF orientation 6)
comes out upright.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from _images import LEAKS, leaks_in, phone_jpeg
from dfudet.cli import main
from dfudet.data.cache import read_entry, read_manifest, read_split_meta
from dfudet.data.checks import decode_image_bytes

W, H = 160, 120  # stored size of every photo; the sideways one is displayed H x W (120 wide, 160 tall)

def _scene(rng: np.random.Generator, h: int, w: int, ulcer: bool) -> tuple[np.ndarray, np.ndarray]:
    """A skin-toned photo (h x w, displayed orientation) with a dark-red wound, and the wound's mask."""
    img = np.empty((h, w, 3), np.float64)
    img[:] = (205, 160, 135)
    img += rng.normal(0, 12, img.shape)
    mask = np.zeros((h, w), np.uint8)
    if ulcer:
        yy, xx = np.mgrid[:h, :w]
        inside = ((yy - h * 0.45) / (h * 0.12)) ** 2 + ((xx - w * 0.5) / (w * 0.15)) ** 2 <= 1
        img[inside] = (120, 30, 35)
        mask[inside] = 255
    return np.clip(img, 0, 255).astype(np.uint8), mask


def _scan(root: Path) -> list[str]:
    """'<file>: <what>' for every file under root carrying one of the LEAKS patterns."""
    found = []
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        found += [f"{f.relative_to(root)}: {what}" for what in leaks_in(f.read_bytes())]
    return found


@pytest.mark.slow
def test_no_written_file_or_response_carries_photo_metadata(tmp_path: Path, mask_checkpoint: Path) -> None:
    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    (raw / "images" / "test").mkdir(parents=True)
    (raw / "masks" / "test").mkdir(parents=True)
    photos = {}
    for name, orientation, ulcer in (("sideways", 6, True), ("upright", 1, True), ("nowound", 1, False)):
        shown_h, shown_w = (W, H) if orientation == 6 else (H, W)
        shown, mask = _scene(rng, shown_h, shown_w, ulcer)
        # orientation 6: a viewer turns the stored pixels 90 degrees clockwise, so store them turned anticlockwise
        stored = np.rot90(shown, 1) if orientation == 6 else shown
        assert stored.shape[:2] == (H, W)
        path = raw / "images" / "test" / f"{name}.jpg"
        path.write_bytes(phone_jpeg(np.ascontiguousarray(stored), orientation))
        Image.fromarray(mask).save(raw / "masks" / "test" / f"{name}.png")
        photos[name] = path
    # the inputs do carry all of it (else the test would prove nothing)
    assert set(leaks_in(photos["upright"].read_bytes())) == {w for w in LEAKS if not w.startswith("PNG")}

    out = tmp_path / "out"
    ckpt = mask_checkpoint  # the session's small Mask R-CNN (tests/conftest.py)
    run = [
        ["data", "import", "--format", "masks", "--images", str(raw / "images"), "--annotations", str(raw / "masks"),
         "--negative-crops", "1", "--crop-size", "32", "--crop-margin", "4", "--out", str(out / "dataset")],
        # img_size 0 keeps every photo at its size: the cache may keep a photo's own JPEG data
        ["data", "prepare", str(out / "dataset"), "--out", str(out / "cache"), "--img-size", "0"],
        # a threshold no box reaches: both ulcer photos are in the missed-ulcer gallery
        ["evaluate", "--checkpoint", str(ckpt), "--data", str(out / "cache"), "--split", "test",
         "--out", str(out / "evaluate"), "--bootstrap", "0", "--operating-threshold", "0.999"],
        ["predict", str(raw / "images"), "--checkpoint", str(ckpt), "--out", str(out / "predict")],
    ]
    visits = raw / "visits.csv"
    visits.write_text("patient,date,photo\np1,2024-01-01,images/test/sideways.jpg\n"
                      "p1,2024-01-29,images/test/upright.jpg\n")
    run.append(["track", str(visits), "--checkpoint", str(ckpt), "--out", str(out / "track")])
    for argv in run:
        assert main(argv) == 0, argv

    # every file of every command, cache included, is free of it
    leaks = _scan(out)
    assert not leaks, "written files carry photo metadata:\n" + "\n".join(leaks)

    # the writers did write photos, and the sideways one upright
    assert len(list((out / "dataset" / "negatives").rglob("*.png"))) >= 1
    manifest = read_manifest(out / "cache")
    meta = read_split_meta(out / "cache", "test", manifest["splits"]["test"]["index_sha256"])
    stored = {}
    for i, e in enumerate(meta["entries"]):
        _, data = read_entry(out / "cache", "test", i, e)
        stored[Path(e["path"]).stem] = decode_image_bytes(data).shape[:2]
    assert stored["sideways"] == (W, H) and stored["upright"] == (H, W)
    missed = sorted((out / "evaluate" / "gallery" / "missed_ulcers").glob("*.jpg"))
    assert {p.name.split("_", 1)[1] for p in missed} == {"sideways.jpg", "upright.jpg"}
    for p in missed:
        with Image.open(p) as im:  # galleries enlarge small photos and add a legend strip below: still portrait
            assert (im.height > im.width) == ("sideways" in p.name), (p, im.size)
    with Image.open(out / "predict" / "annotated" / "images" / "test" / "sideways.jpg") as im:
        assert im.size == (H, W)
    with Image.open(out / "predict" / "annotated" / "images" / "test" / "upright.jpg") as im:
        assert im.size == (W, H)
    assert list((out / "track").rglob("area.png"))

    # the service: JSON answers only, sizes of the upright photo, nothing of the metadata
    from dfudet.inference.loader import load_backend
    from dfudet.serve.app import create_app

    with TestClient(create_app(load_backend(checkpoint=ckpt))) as client:
        bodies = [client.get("/").content]
        for name, path in photos.items():
            resp = client.post("/v1/detect", files={"file": (path.name, path.read_bytes(), "image/jpeg")})
            assert resp.status_code == 200, resp.text
            assert resp.headers["content-type"].startswith("application/json")
            body = resp.json()
            assert (body["width"], body["height"]) == ((H, W) if name == "sideways" else (W, H))
            bodies.append(resp.content)
    for body_bytes in bodies:
        text = body_bytes.decode("utf-8", "replace")
        assert [w for w, p in LEAKS.items() if p.decode("latin-1") in text] == []
        # no image travels back in an answer (base64 JPEG / PNG starts)
        assert "/9j/" not in text and "iVBORw0KGgo" not in text
    assert json.loads(bodies[1])["filename"] == "sideways.jpg"
