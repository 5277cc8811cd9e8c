"""Live servers for the service tests and bench/serve_memory.py: the app under uvicorn in a thread, or a real
`dfudet serve` process polled until it answers, and its RSS read from /proc.

tests/ is on sys.path through tests/conftest.py; bench/serve_memory.py puts it there itself.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import uvicorn

HOST = "127.0.0.1"


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextmanager
def uvicorn_in_thread(app: Any, timeout: float = 30.0) -> Iterator[int]:
    """Run `app` under a real uvicorn on a free loopback port in a daemon thread; yields the port once it listens,
    stops the server on exit."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "uvicorn did not start"
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    """A memory field of /proc/PID/status in kB: VmRSS (resident now) or VmHWM (peak resident)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def wait_until_healthy(url: str, proc: subprocess.Popen, timeout: float, log: IO[bytes] | None = None,
                       poll: float = 0.2) -> dict[str, Any]:
    """Poll GET url/healthz until it answers; its JSON. RuntimeError (with the end of `log`) when the process exits
    or `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(f"{url}/healthz", timeout=2).json()
        except httpx.HTTPError as exc:
            exited = proc.poll()
            if exited is not None or time.monotonic() > deadline:
                why = f"exited with code {exited}" if exited is not None else f"did not answer within {timeout:.0f} s"
                tail = ""
                if log is not None:
                    log.seek(0)
                    tail = "\n" + log.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"the server at {url} {why}{tail}") from exc
            time.sleep(poll)


@dataclass
class ServeProcess:
    proc: subprocess.Popen
    url: str
    health: dict[str, Any]  # /healthz as first answered

    def rss_kb(self, field: str = "VmRSS") -> int:
        return rss_kb(self.proc.pid, field)


@contextmanager
def dfudet_serve(checkpoint: str | os.PathLike[str], *args: str, timeout: float = 120.0,
                 env: dict[str, str] | None = None) -> Iterator[ServeProcess]:
    """`dfudet serve --checkpoint CHECKPOINT --port <free> ARGS...` in a subprocess of this interpreter, yielded once
    /healthz answers, terminated on exit. Its output goes to a temporary file (never a pipe nobody reads, which
    could fill and stall the server) and is shown if it fails to start."""
    port = free_port()
    cmd = [sys.executable, "-m", "dfudet.cli", "serve", "--checkpoint", str(checkpoint), "--port", str(port), *args]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            url = f"http://{HOST}:{port}"
            yield ServeProcess(proc, url, wait_until_healthy(url, proc, timeout, log))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
