"""Outlines and areas from the service: an outline model's polygons and pixel areas are the backend's own masks,
mm² only with a scale given (`mm_per_px`), bad scales refused as clear JSON, box-only responses unchanged."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dfudet.data import instance_masks
from dfudet.inference.area import NO_SCALE_NOTE
from dfudet.inference.backend import Backend, Detections
from dfudet.inference.loader import load_backend
from dfudet.serve.app import create_app

OUTLINE_FIELDS = {"detections", "mm_per_px", "area_note"}


@pytest.fixture(scope="module")
def client(outline_checkpoint: Path):
    with TestClient(create_app(load_backend(checkpoint=str(outline_checkpoint)))) as c:
        yield c


@pytest.fixture(scope="module")
def reference(outline_checkpoint: Path) -> Backend:
    """A second, independent torch backend of the same checkpoint: what the API's outlines must match."""
    return load_backend(checkpoint=str(outline_checkpoint))


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _detect(client: TestClient, image: np.ndarray, **params: str | float) -> dict:
    resp = client.post("/v1/detect", params=params, files={"file": ("foot.png", _png(image), "image/png")})
    assert resp.status_code == 200, resp.text
    return resp.json()


def _kept(reference: Backend, image: np.ndarray) -> Detections:
    kept = reference.keep(reference.predict_arrays([image])[0])
    assert kept.masks is not None and len(kept.masks) > 0, "the demo outline model should keep some detections"
    return kept


def test_healthz_says_the_model_outlines(client: TestClient):
    h = client.get("/healthz").json()
    assert h["outlines"] is True and h["model_id"].startswith("maskrcnn_efficientnet/resnet10t@")
    assert h["threshold"] == pytest.approx(0.3) and "score_floor" in h  # the old field names stay


def test_outlines_and_pixel_areas_are_the_backends_masks(client: TestClient, reference: Backend, demo_photos):
    for image in demo_photos[:3]:
        height, width = image.shape[:2]
        kept = _kept(reference, image)
        body = _detect(client, image)  # default: detections at or above the operating threshold, as keep()
        assert body["outlines"] is True and body["mm_per_px"] is None and body["area_note"] == NO_SCALE_NOTE
        np.testing.assert_allclose(body["boxes"], kept.boxes, atol=0.01)
        assert len(body["detections"]) == len(body["boxes"]) == len(kept.masks)
        assert [d["area_px"] for d in body["detections"]] == [instance_masks.area(r) for r in kept.masks]
        assert all(d["area_mm2"] is None for d in body["detections"])
        polygons = 0
        for det, rle in zip(body["detections"], kept.masks):
            mask = instance_masks.decode(rle)
            for poly in det["outline"]:
                xs, ys = np.array(poly[0::2]), np.array(poly[1::2])
                assert len(xs) == len(ys) >= 3
                assert (xs >= 0).all() and (xs <= width - 1).all() and (ys >= 0).all() and (ys <= height - 1).all()
                # vertices are boundary pixels of the detection's own mask: x is the column, y the row
                assert mask[ys.astype(int), xs.astype(int)].all()
                polygons += 1
        assert polygons > 0, "some detection should have an outline polygon"


def test_areas_in_mm2_only_with_a_scale(client: TestClient, demo_photos):
    image = demo_photos[1]
    plain = _detect(client, image)
    for scale in (0.25, "0.07"):
        s = float(scale)
        body = _detect(client, image, mm_per_px=scale)
        assert body["mm_per_px"] == s and "area_note" not in body
        assert [d["area_px"] for d in body["detections"]] == [d["area_px"] for d in plain["detections"]]
        assert [d["outline"] for d in body["detections"]] == [d["outline"] for d in plain["detections"]]
        for det in body["detections"]:
            assert det["area_mm2"] == pytest.approx(det["area_px"] * s * s, rel=1e-5)
    assert _detect(client, image, mm_per_px="")["area_note"] == NO_SCALE_NOTE  # an empty form value: no scale


@pytest.mark.parametrize(("value", "why"), [("abc", "is not a number"), ("-1", "must be a positive number"),
                                            ("0", "must be a positive number"), ("nan", "must be a positive number")])
def test_a_bad_scale_is_a_clear_422(client: TestClient, demo_photos, value: str, why: str):
    resp = client.post("/v1/detect", params={"mm_per_px": value},
                       files={"file": ("foot.png", _png(demo_photos[0]), "image/png")})
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert set(body) == {"error"} and body["error"].startswith("mm_per_px: scale") and why in body["error"], body


def test_a_box_only_model_answers_as_before(served_checkpoint: Path, demo_photos):
    with TestClient(create_app(load_backend(checkpoint=str(served_checkpoint)))) as c:
        assert c.get("/healthz").json()["outlines"] is False
        body = _detect(c, demo_photos[0], mm_per_px=0.2)
    assert body["outlines"] is False and not OUTLINE_FIELDS & set(body)
    assert set(body) == {"boxes", "scores", "threshold", "min_score", "model_id", "width", "height", "filename",
                         "sha256", "outlines", "confidence", "label", "label_reasons", "review_threshold", "quality"}
