"""The service's bounds: pixel budget (503 + Retry-After), body-read timeout (408), token from a file, and the
memory ceiling of a real `dfudet serve` process under 20 parallel near-limit uploads."""

from __future__ import annotations

import io
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from _serve import dfudet_serve, uvicorn_in_thread
from dfudet.errors import ConfigError
from dfudet.inference.predictor import Predictor
from dfudet.serve.app import create_app, read_token


@pytest.fixture(scope="module")
def predictor(served_checkpoint: Path) -> Predictor:
    return Predictor.from_checkpoint(served_checkpoint)


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def test_requests_over_the_pixel_budget_wait_then_get_503_with_retry_after(predictor: Predictor, demo_photos):
    png = _png(demo_photos[0])
    app = create_app(predictor, max_pixels=1_000_000, pixels_in_flight=1_000_000, busy_timeout=0.3)
    with TestClient(app) as c:
        assert c.get("/healthz").json()["pixels_in_flight"] == 1_000_000
        budget = app.state.budget
        budget.in_use = 999_000  # another request's decoded photo is still in flight
        t0 = time.monotonic()
        r = c.post("/v1/detect", files={"file": ("a.png", png, "image/png")})
        assert r.status_code == 503 and time.monotonic() - t0 >= 0.3, r.text
        assert "busy" in r.json()["error"] and int(r.headers["Retry-After"]) >= 1
        budget.in_use = 0  # that request finished: room again
        r = c.post("/v1/detect", files={"file": ("a.png", png, "image/png")})
        assert r.status_code == 200 and budget.in_use == 0  # the budget is given back after the answer
        assert budget.peak == demo_photos[0].shape[0] * demo_photos[0].shape[1]


@pytest.fixture()
def slow_body_server(predictor: Predictor):
    app = create_app(predictor, body_timeout=1.0)
    with uvicorn_in_thread(app) as port:
        yield port


def test_a_half_sent_upload_is_answered_408_not_held_open(slow_body_server: int):
    boundary = "xyzBOUNDARY"
    body_start = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
                  "Content-Type: image/png\r\n\r\n").encode() + b"\x89PNG\r\n"
    head = (f"POST /v1/detect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={boundary}"
            f"\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n").encode()
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", slow_body_server), timeout=20) as sock:
        sock.sendall(head + body_start)  # ... and the rest never comes
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408"), reply[:300]
    assert b"did not arrive within 1 s" in reply
    assert time.monotonic() - t0 < 10


def test_token_from_a_file_or_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    f = tmp_path / "token"
    f.write_text("  s3cret-from-file \n")
    assert read_token(str(f)) == "s3cret-from-file"
    monkeypatch.setenv("DFUDET_TOKEN", "from-env")
    assert read_token(None) == "from-env"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_token(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="cannot read the token file"):
        read_token(str(tmp_path / "missing"))


NEAR_LIMIT = (2_880, 2_770)  # 7.98 MP, just under the 8 MP limit of the server below


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs /proc to read the server's peak RSS")
def test_twenty_parallel_near_limit_uploads_stay_under_the_memory_ceiling(served_checkpoint: Path, tmp_path: Path):
    """`dfudet serve --max-pixels 8e6` (budget 16 MP in flight): 20 parallel 8 MP uploads all succeed and raise the
    server's peak RSS by less than 400 MB. Each such photo costs ~60 MB while decoded and queued, so 20 at once
    without the budget would cost well over 1 GB (docs/deploy.md has the numbers at the default 50 MP limit)."""
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    headers = {"Authorization": "Bearer t0ken"}
    with dfudet_serve(served_checkpoint, "--max-pixels", "8000000", "--token-file", str(token)) as server:
        url, h = server.url, server.health
        assert h["max_pixels"] == 8_000_000 and h["pixels_in_flight"] == 16_000_000 and h["auth_required"]
        rng = np.random.default_rng(0)
        w, h_ = NEAR_LIMIT
        photo = np.repeat(rng.integers(0, 255, (h_, 1, 3), dtype=np.uint8), w, axis=1)  # compresses to ~100 KB
        body = _png(photo)
        assert httpx.post(f"{url}/v1/detect", files={"file": ("a.png", body)}, timeout=60).status_code == 401
        warm = httpx.post(f"{url}/v1/detect", files={"file": ("a.png", body)}, headers=headers, timeout=120)
        assert warm.status_code == 200, warm.text
        base = server.rss_kb("VmRSS")

        def one(k: int) -> int:
            return httpx.post(f"{url}/v1/detect", files={"file": (f"p{k}.png", body)}, headers=headers,
                              timeout=300).status_code

        with ThreadPoolExecutor(max_workers=20) as pool:
            codes = list(pool.map(one, range(20)))
        peak = server.rss_kb("VmHWM")
        assert codes == [200] * 20
        growth_mb = (peak - base) / 1024
        print(f"server RSS before {base / 1024:.0f} MB, peak {peak / 1024:.0f} MB (+{growth_mb:.0f} MB)")
        assert growth_mb < 400, f"peak RSS grew by {growth_mb:.0f} MB under 20 parallel 8 MP uploads"


def _hold_upload(port: int) -> socket.socket:
    """A connection whose upload has begun and never ends (the server waits for the rest of its body)."""
    boundary = "xyzBOUNDARY"
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall((f"POST /v1/detect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                  f"boundary={boundary}\r\nContent-Length: 100000\r\n\r\n--{boundary}\r\n").encode())
    return sock


def _healthz_status(url: str, wait_for: int | None = None, timeout: float = 20.0) -> int:
    """GET /healthz's status (polled until it is `wait_for`, when given: a closed socket is seen a moment later)."""
    deadline = time.monotonic() + timeout
    while True:
        status = httpx.get(f"{url}/healthz", timeout=10).status_code
        if wait_for is None or status == wait_for or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


@pytest.mark.slow  # a real `dfudet serve` process
def test_max_connections_serves_that_many_at_once_and_answers_503_above(served_checkpoint: Path) -> None:
    with dfudet_serve(served_checkpoint, "--max-connections", "2", "--body-timeout", "60") as server:
        port = int(server.url.rsplit(":", 1)[1])
        first = _hold_upload(port)
        try:
            assert _healthz_status(server.url) == 200  # one open upload + this request: 2 connections, allowed
            second = _hold_upload(port)
            try:
                # a third connection while two are open: refused by uvicorn before any body is read
                r = httpx.get(f"{server.url}/healthz", timeout=10)
                assert r.status_code == 503, r.text
            finally:
                second.close()
            assert _healthz_status(server.url, wait_for=200) == 200  # room again once one closes
        finally:
            first.close()
