"""The detection service: FastAPI app with one model behind a micro-batching queue, and its self-contained page.

Safety decisions (see docs/deploy.md):
- uploads are read from the request stream with a running byte count and refused (413) as soon as they pass the
  limit, so an oversized upload is never buffered whole; only the `file` part is kept, in memory;
- the image header is read first and images over `max_pixels` are refused (413) before decoding (decompression
  bombs); non-images get 415, corrupt images 422; every error is `{"error": ...}` JSON, never a stack trace;
- nothing from the request is written to disk; the optional token is compared with hmac.compare_digest.
Concurrency: handlers only decode; one worker thread owns the model and runs queued images in micro-batches, so N
concurrent uploads never run N copies of the model.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import logging
import queue
import threading
from concurrent.futures import Future
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from dfudet.errors import DfudetError

log = logging.getLogger("dfudet.serve")

STATIC = Path(__file__).with_name("static")
MB = 1024 * 1024
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file bytes


class ApiError(Exception):
    """An error answered as JSON {"error": message} with an HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


# ------------------------------------------------------------------------------------------- inference queue
class InferenceQueue:
    """One worker thread owning the predictor: images from all requests are run in micro-batches of <= max_batch."""

    def __init__(self, predictor: Any, max_batch: int = 4, max_waiting: int = 64) -> None:
        self.predictor = predictor
        self.max_batch = max(1, int(max_batch))
        self._q: queue.Queue[tuple[np.ndarray, Future] | None] = queue.Queue(maxsize=max_waiting)
        self.stats = {"images": 0, "batches": 0, "largest_batch": 0}
        self.worker_threads: set[int] = set()
        self._thread = threading.Thread(target=self._run, name="dfudet-inference", daemon=True)
        self._thread.start()

    def submit(self, image: np.ndarray) -> Future:
        """Queue one image; the Future resolves to Predictor.predict_arrays' result for it."""
        fut: Future = Future()
        try:
            self._q.put_nowait((image, fut))
        except queue.Full:
            raise ApiError(503, "the server is busy (too many images waiting); retry in a moment") from None
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
async def read_upload(request: Request, max_bytes: int, field: str = "file") -> tuple[bytes, str]:
    """Stream a multipart/form-data body, refusing it once it exceeds max_bytes; return the `field` part's bytes."""
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
    try:
        async for chunk in request.stream():
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


def decode_upload(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode uploaded bytes to HWC uint8 RGB in display orientation, refusing too many pixels before decoding."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from dfudet.data.checks import _to_rgb8

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ApiError(413, f"image has too many pixels: {w}x{h} = {w * h}, the limit is {max_pixels}")
            im.load()
            im = ImageOps.exif_transpose(im) or im
            return np.asarray(_to_rgb8(im, Path("upload")), dtype=np.uint8).copy()
    except ApiError:
        raise
    except UnidentifiedImageError:
        raise ApiError(415, "the upload is not an image format this server can read (JPEG, PNG, WebP, BMP, TIFF)")
    except Image.DecompressionBombError:
        raise ApiError(413, f"image has too many pixels (decompression bomb guard, limit {max_pixels})")
    except (OSError, SyntaxError, ValueError, DfudetError) as exc:
        raise ApiError(422, f"the image is corrupt or truncated ({type(exc).__name__})")


# ------------------------------------------------------------------------------------------- the app
def model_id(predictor: Any) -> str:
    """A short, stable name of the loaded model: name/backbone@first 12 hex of its file's sha256."""
    info = predictor.info
    digest = info.get("onnx_sha256") or info.get("source_checkpoint_sha256")
    if not digest and info.get("path"):
        from dfudet.utils import sha256_file

        digest = sha256_file(Path(info["path"]))
    name = info.get("model_name") or "model"
    backbone = info.get("backbone")
    return f"{name}{'/' + backbone if backbone and backbone != name else ''}@{(digest or 'unknown')[:12]}"


def create_app(predictor: Any, token: str | None = None, max_upload_mb: float = 20.0,
               max_pixels: int = 50_000_000, max_batch: int = 4) -> FastAPI:
    """The FastAPI app serving `predictor` (Predictor or OnnxPredictor) behind one inference queue."""
    max_bytes = int(max_upload_mb * MB)
    ident = model_id(predictor)
    backend = getattr(predictor, "backend", "torch")
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    token_bytes = token.encode("utf-8") if token else None
    work = InferenceQueue(predictor, max_batch=max_batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        work.close()

    app = FastAPI(title="dfudet", version=str(predictor.info.get("dfudet_version", "")), lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.queue = work
    app.state.predictor = predictor

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

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
        return {"status": "ok", "model_id": ident, "backend": backend, "threshold": predictor.score_threshold,
                "score_floor": predictor.floor, "img_size": predictor.img_size, "auth_required": bool(token),
                "max_upload_mb": max_upload_mb, "max_pixels": max_pixels}

    @app.post("/v1/detect")
    async def detect(request: Request) -> dict[str, Any]:
        if token_bytes is not None:
            given = request.headers.get("authorization", "")
            given = given[7:] if given[:7].lower() == "bearer " else request.headers.get("x-api-token", "")
            if not hmac.compare_digest(given.encode("utf-8"), token_bytes):
                raise ApiError(401, "missing or wrong API token (send Authorization: Bearer <token>)")
        min_score = request.query_params.get("min_score")
        try:
            floor = predictor.score_threshold if min_score is None else float(min_score)
        except ValueError:
            raise ApiError(422, f"min_score must be a number, got {min_score!r}") from None
        data, filename = await read_upload(request, max_bytes)
        image = await run_in_threadpool(decode_upload, data, max_pixels)
        result = await asyncio.wrap_future(work.submit(image))
        keep = np.asarray(result["scores"]) >= floor
        return {
            "boxes": [[round(float(v), 2) for v in b] for b in np.asarray(result["boxes"])[keep]],
            "scores": [round(float(s), 5) for s in np.asarray(result["scores"])[keep]],
            "threshold": predictor.score_threshold, "min_score": floor, "model_id": ident,
            "width": result["width"], "height": result["height"], "filename": Path(filename).name[:200],
            "sha256": hashlib.sha256(data).hexdigest(),
        }

    return app


def load_predictor(checkpoint: str | None = None, onnx: str | None = None, device: str = "cpu",
                   score_threshold: float | None = None) -> Any:
    """A Predictor for --checkpoint or an OnnxPredictor for --onnx (exactly one of them)."""
    if bool(checkpoint) == bool(onnx):
        from dfudet.errors import ConfigError

        raise ConfigError("give exactly one of --checkpoint or --onnx")
    if onnx:
        from dfudet.inference.onnx_predictor import OnnxPredictor

        return OnnxPredictor.from_onnx(onnx, score_threshold=score_threshold)
    from dfudet.inference.predictor import Predictor

    return Predictor.from_checkpoint(checkpoint, device=device, score_threshold=score_threshold)


def serve(checkpoint: str | None = None, onnx: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          token: str | None = None, max_upload_mb: float = 20.0, max_pixels: int = 50_000_000,
          device: str = "cpu", score_threshold: float | None = None) -> None:
    """Load the model and run uvicorn until interrupted (`dfudet serve`)."""
    import uvicorn

    predictor = load_predictor(checkpoint, onnx, device, score_threshold)
    app = create_app(predictor, token=token, max_upload_mb=max_upload_mb, max_pixels=max_pixels)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding to %s: the service is reachable from other machines%s", host,
                    "" if token else " WITHOUT an API token (set --token or DFUDET_TOKEN)")
    print(f"dfudet serving {model_id(predictor)} on http://{host}:{port}/ (Ctrl+C to stop)")
    uvicorn.run(app, host=host, port=port, log_level="info", server_header=False)
