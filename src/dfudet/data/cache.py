"""LMDB cache: atomic write of a dataset dir (one env per split + manifest.json) and a worker-safe reader.

Layout of a cache dir:
  manifest.json     {"format": "dfudet-lmdb", "version": 1, "img_size", "jpeg_quality", "splits", "content_hash", ...}
  {split}/data.mdb  one LMDB env per split; keys b"00000000".. hold entries, b"__meta__" holds the per-split index
Integrity: the index records each entry's CRC-32 (checked on every read) and the manifest records each index's
SHA-256 (checked when a split is opened); `dfudet data verify` checks everything. Caches written before these
existed are read without the checks.
An entry is `u32 big-endian header length | JSON header | encoded image bytes` (no pickle: caches may be shared).
The header holds boxes (xyxy in the stored image, float32 values), healthy flag, source path, original width/height,
the cache resize factor `scale` and the encoding. The manifest is written last, so a cache without a complete
manifest is never read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any

import cv2
import lmdb
import numpy as np

from dfudet.data import instance_masks
from dfudet.data.checks import decode_image_bytes, load_image, open_image
from dfudet.data.privacy import encode_image, strip_jpeg_metadata
from dfudet.data.records import ImageRecord, read_dataset, summarize
from dfudet.errors import DataError
from dfudet.utils import atomic_write_bytes, disk_free_text, is_disk_full
from dfudet.version import __version__

log = logging.getLogger("dfudet")

MANIFEST_FILE = "manifest.json"
CACHE_FORMAT = "dfudet-lmdb"
CACHE_VERSION = 1
META_KEY = b"__meta__"
_MANIFEST_KEYS = ("format", "version", "img_size", "jpeg_quality", "splits", "content_hash", "created_with")
_HEADER = struct.Struct(">I")


def entry_key(i: int) -> bytes:
    """LMDB key of entry `i` (zero-padded so keys sort in index order)."""
    return b"%08d" % i


def pack_entry(header: dict[str, Any], image_bytes: bytes) -> bytes:
    """Serialise one entry as length-prefixed JSON header + raw image bytes."""
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return _HEADER.pack(len(head)) + head + image_bytes


def unpack_entry(value: bytes | memoryview, name: str = "<entry>") -> tuple[dict[str, Any], bytes]:
    """Split an entry back into its JSON header and image bytes; errors name the entry."""
    buf = bytes(value)
    try:
        (n,) = _HEADER.unpack_from(buf, 0)
        header = json.loads(buf[_HEADER.size : _HEADER.size + n].decode("utf-8"))
    except (struct.error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{name}: corrupt cache entry ({exc})") from exc
    return header, buf[_HEADER.size + n :]


# ---------------------------------------------------------------------------------------------- reading
def read_manifest(cache_dir: Path) -> dict[str, Any]:
    """Load and check a cache manifest; a missing or incomplete one (half-written cache) is refused clearly."""
    cache_dir = Path(cache_dir)
    path = cache_dir / MANIFEST_FILE
    if not path.is_file():
        raise DataError(
            f"{cache_dir} is not a complete dfudet LMDB cache: {MANIFEST_FILE} is missing "
            "(the cache was not written or its writing was interrupted; run `dfudet data prepare` again)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read cache manifest ({exc}); run `dfudet data prepare` again") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise DataError(f"{path}: not a dfudet LMDB cache manifest (format is {got!r}, expected {CACHE_FORMAT!r})")
    if manifest.get("version") != CACHE_VERSION:
        raise DataError(f"{path}: cache version {manifest.get('version')} is not supported (expected {CACHE_VERSION}); "
                        "run `dfudet data prepare` again")
    missing = [k for k in _MANIFEST_KEYS if k not in manifest]
    if missing or not isinstance(manifest["splits"], dict):
        raise DataError(f"{path}: incomplete cache manifest (missing {', '.join(missing) or 'splits'}); "
                        "run `dfudet data prepare` again")
    for split in manifest["splits"]:
        if not (cache_dir / split / "data.mdb").is_file():
            raise DataError(f"{cache_dir / split / 'data.mdb'}: missing although {path} lists split {split!r}; "
                            "run `dfudet data prepare` again")
    return manifest


# py-lmdb refuses to open one path twice in a process, so read envs are shared per process: {path: (pid, env)}.
_ENVS: dict[str, tuple[int, lmdb.Environment]] = {}


def open_env(split_dir: Path) -> lmdb.Environment:
    """This process's read env of a split, opened on first use (no lock file, no readahead: fork/spawn safe).

    An env inherited through fork (recorded under another pid) is closed and reopened, never shared.
    """
    key = os.path.realpath(split_dir)
    pid = os.getpid()
    held = _ENVS.get(key)
    if held is not None:
        if held[0] == pid:
            return held[1]
        held[1].close()
    try:
        env = lmdb.open(key, readonly=True, lock=False, readahead=False, meminit=False, max_readers=512)
    except lmdb.Error as exc:
        raise DataError(f"{split_dir}: cannot open LMDB env ({exc}); run `dfudet data prepare` again") from exc
    _ENVS[key] = (pid, env)
    return env


def release_envs(under: Path) -> None:
    """Close this process's read envs below `under` (before a cache there is replaced)."""
    root = os.path.realpath(under)
    for key in [k for k in _ENVS if k == root or k.startswith(root + os.sep)]:
        pid, env = _ENVS.pop(key)
        if pid == os.getpid():
            env.close()


def read_split_meta(cache_dir: Path, split: str, expected_sha256: str | None = None) -> dict[str, Any]:
    """The per-split index (headers of all entries, no image bytes) stored under __meta__, checked against the
    manifest's digest of it when the cache has one."""
    split_dir = Path(cache_dir) / split
    where = split_dir / "data.mdb"
    again = "run `dfudet data prepare` again"
    try:
        with open_env(split_dir).begin() as txn:
            raw = txn.get(META_KEY)
            raw = bytes(raw) if raw is not None else None
    except lmdb.Error as exc:
        raise DataError(f"{where}: the LMDB file of split {split!r} is damaged ({type(exc).__name__}: {exc}); "
                        f"{again}") from None
    if raw is None:
        raise DataError(f"{where}: index entry is missing (incomplete cache); {again}")
    if expected_sha256 is not None and hashlib.sha256(raw).hexdigest() != expected_sha256:
        raise DataError(f"{where}: the index of split {split!r} is damaged (it does not match the digest in "
                        f"{MANIFEST_FILE}); {again}")
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{where}: the index of split {split!r} is unreadable "
                        f"({type(exc).__name__}); {again}") from None
    if not isinstance(meta, dict) or meta.get("count") != len(meta.get("entries", [])):
        raise DataError(f"{where}: index is inconsistent (count != entries); {again}")
    return meta


def read_entry(cache_dir: Path, split: str, i: int, meta_entry: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """Entry `i` of a split, checked against the CRC-32 its index recorded (caches written before checksums: not
    checked). Any damage is a DataError naming the split, the record and its source photo."""
    split_dir = Path(cache_dir) / split
    name = f"{split_dir} entry {i} ({meta_entry.get('path', '?')})"
    try:
        with open_env(split_dir).begin() as txn:
            raw = txn.get(entry_key(i))
            raw = bytes(raw) if raw is not None else None
    except lmdb.Error as exc:
        raise DataError(f"{name}: the LMDB file is damaged ({type(exc).__name__}: {exc}); run `dfudet data prepare` "
                        "again") from None
    if raw is None:
        raise DataError(f"{name}: missing from the cache; run `dfudet data prepare` again")
    crc = meta_entry.get("crc32")
    if crc is not None and zlib.crc32(raw) != crc:
        raise DataError(f"{name}: damaged record in split {split!r} (its bytes do not match the checksum written with "
                        "them); run `dfudet data verify` for the full list and `dfudet data prepare` again")
    return unpack_entry(raw, name)


def verify_cache(cache_dir: Path) -> dict[str, Any]:
    """Check every record of every split (checksum, header, image decode); returns counts and the damaged records."""
    cache_dir = Path(cache_dir)
    manifest = read_manifest(cache_dir)
    damaged: list[str] = []
    checked = unchecked = 0
    for split, info in manifest["splits"].items():
        try:
            meta = read_split_meta(cache_dir, split, info.get("index_sha256"))
        except DataError as exc:
            damaged.append(str(exc))
            continue
        for i, e in enumerate(meta["entries"]):
            try:
                _, data = read_entry(cache_dir, split, i, e)
                decode_image_bytes(data, f"{cache_dir / split} entry {i} ({e.get('path', '?')})")
            except DataError as exc:
                damaged.append(str(exc))
            checked += 1
            unchecked += "crc32" not in e
    return {"cache": str(cache_dir), "records": checked, "damaged": damaged, "without_checksum": unchecked}


# ---------------------------------------------------------------------------------------------- writing
def _resize_factor(width: int, height: int, img_size: int | None) -> float:
    """Downscale factor so the long side is at most img_size (never upscale; 0/None keeps the size)."""
    if not img_size or max(width, height) <= img_size:
        return 1.0
    return img_size / max(width, height)


def _reusable_original(path: Path, record: ImageRecord) -> bytes | None:
    """The file's own compressed data when it needs no change (a JPEG of the right size without EXIF rotation),
    with its metadata segments removed (GPS, time, device: dfudet.data.privacy); None when it must be re-encoded.

    Keeping the data avoids a second lossy JPEG pass, so cache and folder decode to identical pixels.
    """
    try:
        with open_image(path) as im:
            if im.format != "JPEG" or im.mode not in ("RGB", "L"):
                return None
            if im.getexif().get(0x0112, 1) != 1 or im.size != (record.width, record.height):
                return None
    except OSError:
        return None
    return strip_jpeg_metadata(path.read_bytes())


def _encode(image: np.ndarray, kind: str, jpeg_quality: int) -> tuple[bytes, str]:
    """Encode photos as JPEG at the requested quality; other kinds (small crops) losslessly as PNG; no metadata."""
    if kind == "photo":
        return encode_image(image, "JPEG", quality=jpeg_quality), "jpeg"
    return encode_image(image, "PNG", compress_level=1), "png"


def encode_record(record: ImageRecord, img_size: int | None, jpeg_quality: int) -> tuple[dict[str, Any], bytes]:
    """Decode one record's image, resize it for the cache and return (entry header, encoded bytes)."""
    path = Path(record.path)
    factor = _resize_factor(record.width, record.height, img_size)
    raw = _reusable_original(path, record) if factor == 1.0 else None
    if raw is not None:
        # Decode once anyway: a corrupt file must fail now, naming the file, not later inside a worker.
        image = decode_image_bytes(raw, str(path))
        encoding = "original"
    else:
        image = load_image(path)
    h, w = image.shape[:2]
    if (w, h) != (record.width, record.height):
        raise DataError(f"{path}: image is {w}x{h} but the dataset record says {record.width}x{record.height}; "
                        "re-import the dataset")
    if factor != 1.0:
        nw, nh = max(1, round(w * factor)), max(1, round(h * factor))
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    else:
        nw, nh = w, h
    if raw is None:
        raw, encoding = _encode(image, record.kind, jpeg_quality)
    boxes = np.asarray(record.boxes, dtype=np.float64).reshape(-1, 4)
    # Scale x and y by the exact pixel ratios so boxes follow the rounded image size.
    boxes = boxes * np.array([nw / w, nh / h, nw / w, nh / h])
    header = {
        "path": str(path),
        "width": record.width,
        "height": record.height,
        "stored_width": nw,
        "stored_height": nh,
        "scale": factor,
        "boxes": boxes.astype(np.float32).tolist(),
        # wound masks resized with the image (nearest), one RLE per box; absent for box-only records
        **({"masks": [instance_masks.resize(m, nw, nh) for m in record.masks]} if record.masks is not None else {}),
        "healthy": bool(record.healthy),
        "kind": record.kind,
        "encoding": encoding,
    }
    return header, raw


def _map_size(records: list[ImageRecord], img_size: int | None) -> int:
    """Upper bound of the env size: raw RGB bytes of the stored images (JPEG/PNG stay below it) plus headroom."""
    total = 0
    for r in records:
        f = _resize_factor(r.width, r.height, img_size)
        total += int(r.width * f + 1) * int(r.height * f + 1) * 3 + 4096 + 64 * len(r.boxes)
    return int(total * 1.25) + (32 << 20)


def _put(env: lmdb.Environment, key: bytes, value: bytes) -> None:
    """Put one value, growing the map when the size estimate was too small."""
    while True:
        try:
            with env.begin(write=True) as txn:
                txn.put(key, value)
            return
        except lmdb.MapFullError:
            env.set_mapsize(env.info()["map_size"] * 2)


def _write_split(split_dir: Path, records: list[ImageRecord], img_size: int | None, jpeg_quality: int,
                 hasher: Any) -> str:
    """Write one split's env: entries in record order, then the index; returns the index's SHA-256."""
    split_dir.mkdir(parents=True)
    # meminit=True: LMDB zeroes the unused bytes of every page it writes; without it they are whatever the heap
    # held, which here was the photos' files as read, GPS and time included (seen in tests/test_no_metadata_leaks.py)
    env = lmdb.open(str(split_dir), map_size=_map_size(records, img_size), subdir=True, lock=True,
                    readahead=False, meminit=True, max_dbs=0)
    try:
        entries = []
        for i, record in enumerate(records):
            header, data = encode_record(record, img_size, jpeg_quality)
            hasher.update(json.dumps(record.to_dict(), sort_keys=True).encode("utf-8"))
            hasher.update(data)
            value = pack_entry(header, data)
            _put(env, entry_key(i), value)
            entries.append({**header, "crc32": zlib.crc32(value)})  # checked on every read (dataset, verify)
        meta = json.dumps({"count": len(entries), "entries": entries}, separators=(",", ":")).encode("utf-8")
        _put(env, META_KEY, meta)
        env.sync(True)
    finally:
        env.close()
    (split_dir / "lock.mdb").unlink(missing_ok=True)  # readers open with lock=False
    return hashlib.sha256(meta).hexdigest()


def _is_cache_dir(path: Path) -> bool:
    try:
        read_manifest(path)
        return True
    except DataError:
        return False


def prepare_cache(dataset_dir: Path, out: Path, img_size: int | None = 512, jpeg_quality: int = 95) -> dict:
    """Write a dataset dir into an LMDB cache at `out` atomically and return the manifest."""
    dataset_dir, out = Path(dataset_dir), Path(out)
    if img_size is not None and img_size < 0:
        raise DataError(f"img_size must be >= 0 (0 keeps the original size), got {img_size}")
    if not 1 <= jpeg_quality <= 100:
        raise DataError(f"jpeg_quality must be between 1 and 100, got {jpeg_quality}")
    records = read_dataset(dataset_dir)
    if not records:
        raise DataError(f"{dataset_dir}: the dataset has no records; nothing to cache")
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or _is_cache_dir(out))):
        raise DataError(f"{out} exists and is not a dfudet LMDB cache; refusing to overwrite it (choose another --out)")
    by_split: dict[str, list[ImageRecord]] = {}
    for r in records:
        by_split.setdefault(r.split, []).append(r)
    # ordered train/val/test first; each split's entry gets its index hash below
    splits: dict[str, dict[str, Any]] = {split: dict(counts) for split, counts in summarize(records).items()}

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        hasher = hashlib.sha256()
        hasher.update(json.dumps({"img_size": img_size or 0, "jpeg_quality": jpeg_quality}).encode("utf-8"))
        for split in splits:
            hasher.update(split.encode("utf-8"))
            splits[split]["index_sha256"] = _write_split(tmp / split, by_split[split], img_size, jpeg_quality, hasher)
        manifest = {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "img_size": img_size or 0,
            "jpeg_quality": jpeg_quality,
            "splits": splits,
            "content_hash": hasher.hexdigest(),
            "created_with": {"dataset_dir": str(dataset_dir.resolve()), "dfudet": __version__},
        }
        atomic_write_bytes(tmp / MANIFEST_FILE, json.dumps(manifest, indent=1).encode("utf-8"))
        _swap_into_place(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        need = sum(_map_size(r, img_size) for r in by_split.values())
        # lmdb reports a full disk as ENOSPC, or as an I/O error from its commit: then the free space decides
        if is_disk_full(exc) or (isinstance(exc, lmdb.Error) and shutil.disk_usage(out.parent).free < need):
            raise DataError(f"{out}: no space left on the device while writing the cache: "
                            f"{disk_free_text(out.parent)}, the cache needs up to {need / 1e9:.2f} GB (nothing was "
                            "written; free some space or choose another --out)") from None
        raise
    return manifest


def remove_stale_temp(out: Path) -> list[Path]:
    """Remove what an interrupted `data prepare` of `out` left beside it (.NAME.tmp-*, .NAME.old-*), with a note."""
    stale = [p for pat in (f".{out.name}.tmp-*", f".{out.name}.old-*") for p in out.parent.glob(pat) if p.is_dir()]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
        log.info("removed %s, left by an interrupted `dfudet data prepare`", p)
    return stale


def _swap_into_place(new: Path, out: Path) -> None:
    """Rename the finished cache onto `out`; an old cache is moved aside first and removed only afterwards."""
    if not out.exists():
        os.rename(new, out)
        return
    release_envs(out)
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rmdir(old)
    os.rename(out, old)
    try:
        os.rename(new, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
