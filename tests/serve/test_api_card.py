"""The service measures with the calibration card in the uploaded photo (outline models)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from _marker_scene import render
from dfudet.inference.loader import load_backend
from dfudet.serve.app import create_app

pytestmark = pytest.mark.slow  # trains a small Mask R-CNN for a few steps (shared with test_api_outlines)


def _post(client: TestClient, image: np.ndarray, **params: str) -> dict:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    resp = client.post("/v1/detect", params=params, files={"file": ("foot.png", buf.getvalue(), "image/png")})
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_the_response_says_the_areas_come_from_the_card(outline_checkpoint: Path):
    image = render(tilt=20, card_px=380).image
    with TestClient(create_app(load_backend(checkpoint=str(outline_checkpoint)))) as client:
        body = _post(client, image)
        assert body["outlines"] is True and body["area_source"] == "card" and "area_note" not in body
        assert body["card"]["accepted"] is True and body["card"]["markers_found"] == 9
        assert all(d["area_mm2"] is not None for d in body["detections"])
        user = _post(client, image, mm_per_px="0.1")
        assert user["area_source"] == "user" and user["card"] is None
        tilted = _post(client, render(tilt=68, card_px=560).image)
        assert tilted["area_source"] is None and tilted["card"]["code"] == "too_tilted"
        assert "degrees from face-on" in tilted["area_note"]
    page = (Path(__file__).parents[2] / "src" / "dfudet" / "serve" / "static" / "index.html").read_text()
    assert "sourceText(body)" in page and "from the calibration card" in page  # the page shows the source
