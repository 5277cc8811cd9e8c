"""Small shared helpers: atomic file writes and content hashing."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

_UMASK = os.umask(0)  # read once: mkstemp creates 0600 files, the renamed file gets the usual 0666 & ~umask
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes to `path` via a temp file in the same directory and an atomic rename."""
    atomic_write_with(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_with(path: Path, writer: Callable[[Path], object]) -> None:
    """Call `writer(tmp_path)` then fsync and rename onto `path`; a crash never leaves a half-written `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def torch_load_reason(exc: BaseException, head: bytes | None = None) -> str:
    """The real reason a `torch.load(weights_only=True)` failed, without PyTorch's advice to load unsafely.

    PyTorch's message for a refused pickle starts with how to re-run with `weights_only=False` (which would execute
    whatever the file holds) and ends with the reason ("Unsupported global: GLOBAL posix.system"): keep the reason.
    `head`, the file's first bytes, tells a file that is no PyTorch file at all (text, an image) from a refused one.
    """
    if head is not None and not (head.startswith(b"PK") or head.startswith(b"\x80")):
        return f"not a PyTorch file at all (it starts with {head[:8]!r})"
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        reason = text.split(marker, 1)[1].strip().splitlines()[0]
        reason = reason.split(". Please file an issue")[0].strip()
        return f"it holds objects a safe load refuses ({reason})"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln]
    first = lines[0] if lines else type(exc).__name__
    if "invalid load key" in first or "could not find" in first.lower() or "central directory" in first:
        return f"not a PyTorch file at all ({first[:160]})"
    return f"{type(exc).__name__}: {first[:300]}"


def is_disk_full(exc: BaseException) -> bool:
    """True for the ways a full disk shows up: OSError ENOSPC, lmdb's DiskError, torch's failed zip write."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "unexpected pos" in text or "file write failed" in text


def disk_free_text(path: Path) -> str:
    """'1.23 GB free on /mount' for the file system holding `path` (its nearest existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    usage = shutil.disk_usage(p)
    return f"{usage.free / 1e9:.2f} GB free on the file system of {p}"
