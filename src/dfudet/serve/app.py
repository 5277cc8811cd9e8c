"""The detection service: FastAPI app with one model behind a micro-batching queue, and its self-contained page.

Safety decisions (see docs/deploy.md):
- uploads are read from the request stream with a running byte count and refused (413) as soon as they pass the
  limit, so an oversized upload is never buffered whole; only the `file` part is kept, in memory;
- the body must arrive within `body_timeout` seconds (408 otherwise), so half-sent uploads do not hold the server;
- the image header is read first and images over `max_pixels` (the same limit as predict/evaluate/import) are
  refused (413) before decoding (decompression bombs); non-images get 415, corrupt images 422; every error is
  `{"error": ...}` JSON, never a stack trace;
- memory is bounded by a pixel budget: an image is decoded only when its pixels fit in `pixels_in_flight` (decoded
  and not yet answered, over all requests); a request that cannot get its pixels within `busy_timeout` seconds gets
  503 with Retry-After;
- nothing from the request is written to disk; the optional token is compared with hmac.compare_digest and is read
  from a file or the environment (a command-line token is visible to every user in `ps`).
Concurrency: handlers only decode; one worker thread owns the model and runs queued images in micro-batches, so N
concurrent uploads never run N copies of the model.
Outline models (Mask R-CNN) also answer each detection's outline (COCO polygons) and area: pixels always, mm² only
when the request gives the photo's scale (`mm_per_px`) or the photo shows an accepted calibration card, never guessed
(dfudet.inference.area; `area_source` says which, `area_note` why there is none).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import logging
import os
import queue
import threading
from collections.abc import AsyncIterator
from concurrent.futures import Future
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from dfudet.data.checks import TooManyPixels, decode_image_bytes
from dfudet.data.checks import max_pixels as default_max_pixels
from dfudet.errors import ConfigError, DfudetError
from dfudet.inference.area import check_mm_per_px, outline_fields
from dfudet.inference.backend import Backend, Detections
from dfudet.inference.loader import load_backend
from dfudet.utils import sha256_file

log = logging.getLogger("dfudet.serve")

STATIC = Path(__file__).with_name("static")
MB = 1024 * 1024
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file bytes


class ApiError(Exception):
    """An error answered as JSON {"error": message} with an HTTP status (and optional headers, e.g. Retry-After)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


# ------------------------------------------------------------------------------------------- memory bound
class PixelBudget:
    """Pixels of decoded images in flight (decoded, not yet answered), shared by all requests of one app.

    `acquire(n)` waits until n pixels fit in the capacity, first come first served; an image larger than the whole
    capacity is given the budget alone (it still passed the per-image limit). Waiting longer than `timeout` is a 503.
    """

    def __init__(self, capacity: int, timeout: float) -> None:
        self.capacity, self.timeout = int(capacity), float(timeout)
        self.in_use = 0
        self.peak = 0
        self._cond: asyncio.Condition | None = None  # created in the server's event loop
        self._waiting = 0

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    def _fits(self, n: int) -> bool:
        return self.in_use == 0 or self.in_use + n <= self.capacity

    async def acquire(self, n: int) -> None:
        cond = self._condition()
        async with cond:
            self._waiting += 1
            try:
                await asyncio.wait_for(cond.wait_for(lambda: self._fits(n)), self.timeout)
            except TimeoutError:
                retry = max(1, int(round(self.timeout / 2)))
                raise ApiError(503, f"the server is busy (images of {self.in_use / 1e6:.0f} MP being processed, "
                                    f"{self._waiting - 1} more waiting); retry in {retry} s",
                               headers={"Retry-After": str(retry)}) from None
            finally:
                self._waiting -= 1
            self.in_use += n
            self.peak = max(self.peak, self.in_use)

    async def release(self, n: int) -> None:
        cond = self._condition()
        async with cond:
            self.in_use -= n
            cond.notify_all()


# ------------------------------------------------------------------------------------------- inference queue
class InferenceQueue:
    """One worker thread owning the predictor: images from all requests are run in micro-batches of <= max_batch."""

    def __init__(self, predictor: Backend, max_batch: int = 4, max_waiting: int = 64) -> None:
        self.predictor = predictor
        self.max_batch = max(1, int(max_batch))
        self._q: queue.Queue[tuple[np.ndarray, Future[Detections]] | None] = queue.Queue(maxsize=max_waiting)
        self.stats = {"images": 0, "batches": 0, "largest_batch": 0}
        self.worker_threads: set[int] = set()
        self._thread = threading.Thread(target=self._run, name="dfudet-inference", daemon=True)
        self._thread.start()

    def submit(self, image: np.ndarray) -> Future[Detections]:
        """Queue one image; the Future resolves to the backend's Detections for it."""
        fut: Future[Detections] = Future()
        try:
            self._q.put_nowait((image, fut))
        except queue.Full:
            raise ApiError(503, "the server is busy (too many images waiting); retry in a moment",
                           headers={"Retry-After": "5"}) from None
        return fut

    def close(self) -> None:
        """Stop the worker after the images already queued."""
        self._q.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        self.worker_threads.add(threading.get_ident())
        while True:
            item = self._q.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._q.put(None)  # finish this batch, then stop
                    break
                batch.append(nxt)
            try:
                results = self.predictor.predict_arrays([im for im, _ in batch], batch_size=len(batch))
            except Exception as exc:  # handed to the waiting requests, which answer 500 without details
                for _, fut in batch:
                    fut.set_exception(exc)
                continue
            self.stats["images"] += len(batch)
            self.stats["batches"] += 1
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
            for (_, fut), res in zip(batch, results):
                fut.set_result(res)


# ------------------------------------------------------------------------------------------- upload handling
async def read_upload(request: Request, max_bytes: int, field: str = "file", timeout: float = 60.0
                      ) -> tuple[bytes, str]:
    """Stream a multipart/form-data body, refusing it once it exceeds max_bytes or takes longer than `timeout`
    seconds to arrive; return the `field` part's bytes."""
    # lazy: python-multipart (optional `deploy` extra) is needed only when an upload arrives
    from python_multipart.multipart import MultipartParser, parse_options_header

    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise ApiError(415, f"send the image as multipart/form-data with a field named {field!r}")
    limit = max_bytes + MULTIPART_OVERHEAD
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"upload too large: {int(declared)} bytes, the limit is {max_bytes // MB} MB")

    parts: list[dict[str, Any]] = []
    hdr: dict[str, bytes] = {}
    cur: dict[str, Any] = {}

    def on_part_begin() -> None:
        cur.clear()
        cur.update(headers={}, data=bytearray())
        hdr.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        hdr["field"] = hdr.get("field", b"") + data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        hdr["value"] = hdr.get("value", b"") + data[start:end]

    def on_header_end() -> None:
        cur["headers"][hdr.get("field", b"").lower()] = hdr.get("value", b"")
        hdr.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        cur["data"] += data[start:end]

    def on_part_end() -> None:
        _, disp = parse_options_header(cur["headers"].get(b"content-disposition", b""))
        parts.append({"name": disp.get(b"name", b"").decode("utf-8", "replace"),
                      "filename": disp.get(b"filename", b"").decode("utf-8", "replace"), "data": bytes(cur["data"])})

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_part_data": on_part_data, "on_part_end": on_part_end})
    total = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    stream = request.stream().__aiter__()
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(stream.__anext__(), max(0.0, deadline - loop.time()))
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise ApiError(408, f"the upload did not arrive within {timeout:g} s ({total} bytes received); "
                                    "send it again on a faster connection") from None
            total += len(chunk)
            if total > limit:
                raise ApiError(413, f"upload too large: more than {max_bytes // MB} MB (the limit)")
            parser.write(chunk)
        parser.finalize()
    except ApiError:
        raise
    except Exception as exc:  # python-multipart raises its own parse errors on malformed bodies
        raise ApiError(422, f"malformed multipart body ({type(exc).__name__})") from exc
    for part in parts:
        if part["name"] == field:
            if len(part["data"]) > max_bytes:
                raise ApiError(413, f"upload too large: {len(part['data'])} bytes, the limit is {max_bytes // MB} MB")
            if not part["data"]:
                raise ApiError(422, f"the {field!r} field is empty")
            return part["data"], part["filename"] or "upload"
    raise ApiError(422, f"no {field!r} field in the form; send the image as multipart field {field!r}")


def upload_size(data: bytes, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the image header, without decoding; 413 over max_pixels, 415 for a non-image."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except UnidentifiedImageError:
        raise ApiError(415, "the upload is not an image format this server can read (JPEG, PNG, WebP, BMP, TIFF, "
                            "GIF)") from None
    except Image.DecompressionBombError:
        raise ApiError(413, f"image has too many pixels (decompression bomb guard, limit {max_pixels})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ApiError(422, f"the image is corrupt or truncated ({type(exc).__name__})") from None
    if w * h > max_pixels:
        raise ApiError(413, f"image has too many pixels: {w}x{h} = {w * h}, the limit is {max_pixels}")
    return w, h


def decode_upload(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode uploaded bytes to HWC uint8 RGB in display orientation, refusing too many pixels before decoding."""
    upload_size(data, max_pixels)
    try:
        return decode_image_bytes(data, "upload", exif=True, limit=max_pixels)
    except TooManyPixels as exc:
        raise ApiError(413, f"image has too many pixels ({exc})") from None
    except DfudetError as exc:
        raise ApiError(422, f"the image is corrupt or truncated ({type(exc.__cause__ or exc).__name__})") from None


# ------------------------------------------------------------------------------------------- outlines and areas
def request_scale(value: str | None) -> float | None:
    """The request's `mm_per_px` (None when absent or empty); 422 naming the parameter on a bad value."""
    try:
        return check_mm_per_px(value, "mm_per_px")
    except ConfigError as exc:
        raise ApiError(422, str(exc)) from None


# ------------------------------------------------------------------------------------------- the app
def model_id(predictor: Backend) -> str:
    """A short, stable name of the loaded model: name/backbone@first 12 hex of its file's sha256."""
    info = predictor.info
    digest = info.digest or sha256_file(Path(info.path))
    name = info.identity.model_name or "model"
    backbone = info.identity.backbone
    return f"{name}{'/' + backbone if backbone and backbone != name else ''}@{(digest or 'unknown')[:12]}"


def create_app(predictor: Backend, token: str | None = None, max_upload_mb: float = 20.0,
               max_pixels: int | None = None, max_batch: int = 4, pixels_in_flight: int | None = None,
               busy_timeout: float = 30.0, body_timeout: float = 60.0) -> FastAPI:
    """The FastAPI app serving `predictor` (any inference backend) behind one inference queue.

    max_pixels: per-image limit (default: the tool-wide limit, dfudet.data.checks.max_pixels()); pixels_in_flight:
    the decoded-pixel budget over all requests (default 2 x max_pixels).
    """
    max_pixels = int(max_pixels or default_max_pixels())
    budget = PixelBudget(int(pixels_in_flight or 2 * max_pixels), busy_timeout)
    max_bytes = int(max_upload_mb * MB)
    ident = model_id(predictor)
    backend = predictor.name
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    token_bytes = token.encode("utf-8") if token else None
    work = InferenceQueue(predictor, max_batch=max_batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        work.close()

    app = FastAPI(title="dfudet", version=str(predictor.info.dfudet_version or ""), lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.queue = work
    app.state.predictor = predictor
    app.state.budget = budget

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "invalid request parameters"}, status_code=422)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error while serving %s", request.url.path)
        return JSONResponse({"error": "internal error while running the model (see the server log)"}, status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "model_id": ident, "backend": backend, "threshold": predictor.operating_threshold,
                "score_floor": predictor.min_score, "img_size": predictor.img_size, "auth_required": bool(token),
                "max_upload_mb": max_upload_mb, "max_pixels": max_pixels, "pixels_in_flight": budget.capacity,
                "outlines": predictor.info.outlines}

    @app.post("/v1/detect")
    async def detect(request: Request) -> dict[str, Any]:
        if token_bytes is not None:
            given = request.headers.get("authorization", "")
            given = given[7:] if given[:7].lower() == "bearer " else request.headers.get("x-api-token", "")
            if not hmac.compare_digest(given.encode("utf-8"), token_bytes):
                raise ApiError(401, "missing or wrong API token (send Authorization: Bearer <token>)")
        min_score = request.query_params.get("min_score")
        try:
            floor = predictor.operating_threshold if min_score is None else float(min_score)
        except ValueError:
            raise ApiError(422, f"min_score must be a number, got {min_score!r}") from None
        mm_per_px = request_scale(request.query_params.get("mm_per_px"))
        data, filename = await read_upload(request, max_bytes, timeout=body_timeout)
        width, height = upload_size(data, max_pixels)
        await budget.acquire(width * height)
        try:  # the outlines are decoded at the photo's size: their memory stays within the pixel budget too
            image = await run_in_threadpool(decode_upload, data, max_pixels)
            result = await asyncio.wrap_future(work.submit(image))
            kept = result.above(floor)
            trust = await run_in_threadpool(predictor.photo_fields, result, kept, image)
            # the photo is searched for the calibration card when no scale is given (outline models only)
            outlines = await run_in_threadpool(outline_fields, kept, mm_per_px, image)
            del image
        finally:
            await budget.release(width * height)
        return {
            "boxes": [[round(float(v), 2) for v in b] for b in kept.boxes],
            "scores": [round(float(s), 5) for s in kept.scores],
            "threshold": predictor.operating_threshold, "min_score": floor, "model_id": ident,
            "width": result.width, "height": result.height, "filename": Path(filename).name[:200],
            "sha256": hashlib.sha256(data).hexdigest(), **outlines, **trust,
        }

    return app


def read_token(token_file: str | None = None, env: str = "DFUDET_TOKEN") -> str | None:
    """The API token from a file (first line, surrounding whitespace removed) or the environment, else None."""
    if token_file:
        path = Path(token_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the token file ({type(exc).__name__}: {exc})") from None
        lines = text.strip().splitlines()
        if not lines or not lines[0].strip():
            raise ConfigError(f"{path}: the token file is empty")
        return lines[0].strip()
    return os.environ.get(env) or None


def serve(checkpoint: str | None = None, onnx: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          token: str | None = None, max_upload_mb: float = 20.0, max_pixels: int | None = None,
          device: str = "cpu", operating_threshold: float | None = None, pixels_in_flight: int | None = None,
          busy_timeout: float = 30.0, body_timeout: float = 60.0, max_connections: int = 32) -> None:
    """Load the model and run uvicorn until interrupted (`dfudet serve`)."""
    import uvicorn  # lazy: optional `deploy` extra, needed only to run the server (create_app works without it)

    predictor = load_backend(checkpoint=checkpoint, onnx=onnx, device=device, operating_threshold=operating_threshold)
    app = create_app(predictor, token=token, max_upload_mb=max_upload_mb, max_pixels=max_pixels,
                     pixels_in_flight=pixels_in_flight, busy_timeout=busy_timeout, body_timeout=body_timeout)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding to %s: the service is reachable from other machines%s", host,
                    "" if token else " WITHOUT an API token (set --token-file or DFUDET_TOKEN)")
    budget = app.state.budget
    print(f"dfudet serving {model_id(predictor)} on http://{host}:{port}/ (Ctrl+C to stop); limits: "
          f"{budget.capacity / 1e6:g} MP decoded in flight, {max_connections} connections, body within "
          f"{body_timeout:g} s")
    # limit_concurrency: connections over it get 503 from uvicorn before any body is read. uvicorn refuses a request
    # when its open connections, the requesting one included, reach the limit, so N would serve only N - 1 at once
    uvicorn.run(app, host=host, port=port, log_level="info", server_header=False,
                limit_concurrency=max_connections + 1)
