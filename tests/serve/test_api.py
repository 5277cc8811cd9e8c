"""The detection API: correct results, every refusal as clear JSON, and one model shared by concurrent requests."""

from __future__ import annotations

import io
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from _images import png_header_only
from _serve import uvicorn_in_thread
from dfudet.inference.predictor import Predictor
from dfudet.serve.app import create_app


@pytest.fixture(scope="module")
def predictor(served_checkpoint: Path) -> Predictor:
    return Predictor.from_checkpoint(served_checkpoint)


@pytest.fixture(scope="module")
def client(predictor: Predictor):
    with TestClient(create_app(predictor, max_upload_mb=0.25, max_pixels=200_000)) as c:
        yield c


def encode(image: np.ndarray, fmt: str = "PNG") -> bytes:
    """Encode an RGB array (lossless PNG keeps the server's pixels identical to the test's)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


def _post(client: TestClient, data: bytes, name: str = "foot.png", field: str = "file", **kw):
    return client.post("/v1/detect", files={field: (name, data, "application/octet-stream")}, **kw)


def _assert_error(resp, status: int, text: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and text in body["error"], body
    assert "Traceback" not in resp.text


def test_healthz_and_offline_page(client: TestClient):
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["threshold"] == pytest.approx(0.3) and h["auth_required"] is False
    assert h["model_id"].startswith("fasterrcnn_mobilenet_v3_large_320_fpn@") and h["backend"] == "torch"
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "<canvas" in page.text and 'type="range"' in page.text and "Download JSON" in page.text
    assert "http://" not in page.text and "https://" not in page.text, "the page must not load anything from outside"


def test_detect_returns_the_predictors_boxes(client: TestClient, predictor: Predictor, demo_photos):
    image = demo_photos[0]
    direct = predictor.predict_arrays([image])[0]
    every = _post(client, encode(image), params={"min_score": 0}).json()
    assert (every["width"], every["height"]) == (image.shape[1], image.shape[0])
    assert every["threshold"] == pytest.approx(0.3) and every["model_id"] == client.get("/healthz").json()["model_id"]
    assert len(every["boxes"]) == len(direct.boxes) > 0
    np.testing.assert_allclose(every["boxes"], direct.boxes, atol=0.01)
    np.testing.assert_allclose(every["scores"], direct.scores, atol=1e-5)
    default = _post(client, encode(image)).json()  # default: only boxes at or above the operating threshold
    assert len(default["scores"]) == int((direct.scores >= 0.3).sum())
    assert all(s >= 0.3 for s in default["scores"])


def test_upload_too_large_is_413(client: TestClient):
    _assert_error(_post(client, b"\0" * 400_000), 413, "upload too large")


def test_not_an_image_is_415_and_corrupt_image_is_422(client: TestClient, demo_photos):
    _assert_error(_post(client, b"%PDF-1.4 definitely not a photo"), 415, "not an image")
    png = encode(demo_photos[0])
    _assert_error(_post(client, png[: len(png) // 2]), 422, "corrupt or truncated")
    _assert_error(client.post("/v1/detect", json={"file": "x"}), 415, "multipart/form-data")


def test_too_many_pixels_is_refused_before_decoding(client: TestClient):
    _assert_error(_post(client, encode(np.zeros((500, 500, 3), np.uint8))), 413, "too many pixels: 500x500")
    _assert_error(_post(client, png_header_only(60_000, 60_000)), 413, "too many pixels")


def test_missing_file_field_and_bad_parameter_are_422(client: TestClient, demo_photos):
    _assert_error(_post(client, encode(demo_photos[0]), field="image"), 422, "no 'file' field")
    _assert_error(_post(client, encode(demo_photos[0]), params={"min_score": "high"}), 422, "min_score")


def test_token_is_required_when_configured(predictor: Predictor, demo_photos):
    png = encode(demo_photos[1])
    with TestClient(create_app(predictor, token="s3cret-token")) as c:
        assert c.get("/healthz").json()["auth_required"] is True
        _assert_error(_post(c, png), 401, "API token")
        _assert_error(_post(c, png, headers={"Authorization": "Bearer wrong"}), 401, "API token")
        assert _post(c, png, headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        assert _post(c, png, headers={"X-API-Token": "s3cret-token"}).status_code == 200


# ------------------------------------------------------------------------------------------- live server
@pytest.fixture(scope="module")
def live(predictor: Predictor):
    """The app under a real uvicorn on a free loopback port (stopped at the end of the module)."""
    app = create_app(predictor, max_upload_mb=1, max_batch=4)
    with uvicorn_in_thread(app) as port:
        yield app, f"http://127.0.0.1:{port}", port


@pytest.mark.slow
def test_twenty_concurrent_uploads_share_one_model(live, predictor: Predictor, demo_photos):
    app, url, _ = live
    expected = [predictor.predict_arrays([im])[0] for im in demo_photos]
    bodies = [encode(im) for im in demo_photos]
    before = dict(app.state.queue.stats)

    def one(k: int) -> tuple[int, dict]:
        r = httpx.post(f"{url}/v1/detect", params={"min_score": 0}, timeout=120,
                       files={"file": (f"p{k}.png", bodies[k % len(bodies)], "image/png")})
        return k, r.json() | {"_status": r.status_code}

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(one, range(20)))
    for k, body in results:
        assert body["_status"] == 200, body
        ref = expected[k % len(expected)]
        assert len(body["boxes"]) == len(ref.boxes)
        np.testing.assert_allclose(body["boxes"], ref.boxes, atol=0.05)
        np.testing.assert_allclose(body["scores"], ref.scores, atol=1e-4)
    stats = app.state.queue.stats
    assert stats["images"] - before["images"] == 20
    assert len(app.state.queue.worker_threads) == 1, "inference must run in one worker thread"
    assert stats["largest_batch"] <= 4
    assert stats["batches"] - before["batches"] < 20, "concurrent uploads should have been micro-batched"


def test_oversized_stream_is_cut_off_while_reading(live):
    """A chunked upload without Content-Length is refused once it passes the limit, not after it is all sent."""
    _, _, port = live
    boundary = "xyzBOUNDARY"
    head = (f"POST /v1/detect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={boundary}"
            "\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()
    block = b"\0" * 65536
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + f"{len(part):x}\r\n".encode() + part + b"\r\n")
        try:
            for _ in range(400):  # would be 25 MB; the limit is 1 MB
                sock.sendall(f"{len(block):x}\r\n".encode() + block + b"\r\n")
                sent += len(block)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"upload too large" in reply
    assert sent < 20 * 1024 * 1024, f"the server accepted {sent} bytes before refusing"


@pytest.mark.slow
def test_onnx_backend_serves_the_same_boxes(served_checkpoint: Path, predictor: Predictor, demo_photos,
                                            tmp_path: Path):
    from dfudet.export.onnx import export_onnx
    from dfudet.inference.loader import load_backend

    export_onnx(served_checkpoint, tmp_path / "model.onnx")
    onnx_predictor = load_backend(onnx=str(tmp_path / "model.onnx"))
    image = demo_photos[2]
    direct = predictor.predict_arrays([image])[0]
    with TestClient(create_app(onnx_predictor)) as c:
        assert c.get("/healthz").json()["backend"] == "onnxruntime"
        body = _post(c, encode(image), params={"min_score": 0}).json()
    assert len(body["boxes"]) == len(direct.boxes)
    np.testing.assert_allclose(body["boxes"], direct.boxes, atol=1.0)
    np.testing.assert_allclose(body["scores"], direct.scores, atol=1e-3)


def test_a_model_failure_is_a_500_json_answer_logged_on_the_server_and_the_worker_goes_on(
        served_checkpoint: Path, demo_photos, caplog: pytest.LogCaptureFixture):
    """A real failure inside the model (a weight of the wrong shape: torch raises in the box head) reaches the client
    as 500 with a JSON error and no details; the exception is in the server log; the inference thread survives."""
    import torch

    broken = Predictor.from_checkpoint(served_checkpoint)  # its own copy: the module's predictor stays intact
    head = broken.model.roi_heads.box_predictor.cls_score
    good = head.weight.data
    head.weight.data = torch.zeros(good.shape[0], good.shape[1] + 1)
    png = encode(demo_photos[0])
    app = create_app(broken)
    with uvicorn_in_thread(app) as port, caplog.at_level("ERROR", logger="dfudet.serve"):
        url = f"http://127.0.0.1:{port}/v1/detect"
        r = httpx.post(url, files={"file": ("foot.png", png, "image/png")}, timeout=60)
        _assert_error(r, 500, "internal error while running the model (see the server log)")
        assert "mat1 and mat2" not in r.text and "cls_score" not in r.text  # no detail of the failure leaks
        logged = [rec for rec in caplog.records if rec.name == "dfudet.serve" and rec.exc_info]
        assert logged and "internal error while serving /v1/detect" in logged[0].getMessage()
        assert isinstance(logged[0].exc_info[1], RuntimeError)
        head.weight.data = good  # the model is mended: the same worker thread answers the next upload
        r = httpx.post(url, files={"file": ("foot.png", png, "image/png")}, timeout=60)
        assert r.status_code == 200, r.text
        assert app.state.queue.stats["images"] == 1 and len(app.state.queue.worker_threads) == 1
