"""Fault injection: damaged cache records and indexes, errors inside DataLoader workers, a full disk and the temp
files of killed writes end in one clear error naming the file (or are cleaned up), never in silent bad input."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from test_cache import _entries, make_dataset  # noqa: E402  (tests/data is on sys.path under pytest's rootdir)
from torch.utils.data import DataLoader

from _require import skip_or_fail
from dfudet.cli import main, user_message
from dfudet.data.cache import pack_entry, prepare_cache, read_split_meta, release_envs, verify_cache
from dfudet.data.dataset import DetectionDataset, collate_detection
from dfudet.errors import CheckpointError, DataError


@pytest.fixture()
def cache(tmp_path: Path) -> Path:
    out = tmp_path / "cache"
    prepare_cache(make_dataset(tmp_path), out, img_size=0)
    return out


def _damage(cache: Path, split: str, needle: bytes, offset: int = 0, n: int = 16) -> None:
    """Overwrite n bytes of the split's data.mdb where `needle` is stored (as a disk error or a stray write would)."""
    release_envs(cache)
    path = cache / split / "data.mdb"
    raw = bytearray(path.read_bytes())
    at = bytes(raw).find(needle)
    assert at >= 0, "bytes to damage not found in data.mdb"
    raw[at + offset:at + offset + n] = bytes(255 - b for b in raw[at + offset:at + offset + n])
    path.write_bytes(bytes(raw))


def _damage_image_of_entry0(cache: Path) -> None:
    header, data = _entries(cache, "train")[0]
    value = pack_entry(header, data)  # stored contiguously; its JSON header (with the path) makes it unique
    _damage(cache, "train", value[:48], offset=len(value) - len(data) + 300)


def test_flipped_bytes_in_a_cached_image_are_a_clear_error_never_a_training_input(cache: Path, capsys) -> None:
    ds = DetectionDataset(cache, "train")
    ds[0]  # intact: reads
    _damage_image_of_entry0(cache)
    with pytest.raises(DataError, match=r"entry 0 \(.*a\.jpg\): damaged record in split 'train'"):
        DetectionDataset(cache, "train")[0]
    DetectionDataset(cache, "train")[1]  # the other records still read
    report = verify_cache(cache)
    assert report["records"] == 5 and len(report["damaged"]) == 1 and "a.jpg" in report["damaged"][0]
    assert main(["data", "verify", str(cache)]) == 1
    out = capsys.readouterr().out
    assert "5 record(s) checked, 1 damaged" in out and "a.jpg" in out


def test_intact_cache_verifies_clean(cache: Path, capsys) -> None:
    assert verify_cache(cache) == {"cache": str(cache), "records": 5, "damaged": [], "without_checksum": 0}
    assert main(["data", "verify", str(cache)]) == 0
    assert "5 record(s) checked, 0 damaged" in capsys.readouterr().out


def test_a_damaged_index_is_a_clear_error(cache: Path) -> None:
    needle = b'"count":4'
    _damage(cache, "train", needle, offset=len(needle) - 1, n=1)  # "count":4 -> "count":\xcb
    with pytest.raises(DataError, match=r"train/data.mdb: the index of split 'train' is damaged \(it does not match"):
        DetectionDataset(cache, "train")
    with pytest.raises(DataError, match="the index of split 'train' is unreadable"):
        read_split_meta(cache, "train")  # without the manifest's digest: still no raw UnicodeDecodeError


def test_a_damaged_lmdb_file_is_a_data_error(cache: Path) -> None:
    release_envs(cache)
    path = cache / "val" / "data.mdb"
    raw = bytearray(path.read_bytes())
    raw[:4096 * 2] = bytes(4096 * 2)  # both meta pages of the env
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"val"):
        DetectionDataset(cache, "val")[0]


def test_an_error_inside_a_dataloader_worker_reaches_the_user_unwrapped(cache: Path) -> None:
    _damage_image_of_entry0(cache)
    loader = DataLoader(DetectionDataset(cache, "train"), batch_size=2, num_workers=1, collate_fn=collate_detection)
    with pytest.raises(DataError) as exc:
        next(iter(loader))
    assert str(exc.value).startswith("Caught DataError in DataLoader worker")  # what torch makes of it
    msg = user_message(exc.value)
    assert msg.startswith(f"{cache / 'train'} entry 0") and "damaged record in split 'train'" in msg
    assert "Traceback" not in msg


def test_stale_temp_files_of_killed_writes_are_removed_at_start(tmp_path: Path, caplog) -> None:
    from dfudet.engine.runner import remove_stale_temp_files

    run = tmp_path / "run"
    run.mkdir()
    stale = [run / ".last.ckpt.k3j2.tmp", run / ".best_model.pth.x9.tmp"]
    keep = [run / "last.ckpt", run / "notes.tmp", run / ".other.file.tmp"]
    for p in stale + keep:
        p.write_bytes(b"x" * 100)
    with caplog.at_level("INFO", logger="dfudet"):
        assert sorted(remove_stale_temp_files(run)) == sorted(stale)
    assert all(not p.exists() for p in stale) and all(p.exists() for p in keep)
    assert "left by an interrupted write" in caplog.text
    # an interrupted `data prepare` leaves .NAME.tmp-* beside its output: removed by the next one
    ds = make_dataset(tmp_path / "src")
    leftover = tmp_path / ".cache.tmp-abc123"
    (leftover / "train").mkdir(parents=True)
    prepare_cache(ds, tmp_path / "cache", img_size=0)
    assert not leftover.exists() and (tmp_path / "cache" / "manifest.json").is_file()


@pytest.fixture()
def tiny_disk(tmp_path: Path):
    """A 2 MB tmpfs (root only); skips, saying why, where it cannot be mounted."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        skip_or_fail(f"cannot mount a small tmpfs here to fill: {proc.stderr.strip() or proc.stdout.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_full_disk_is_a_clear_error_naming_the_path_and_space(tiny_disk: Path, tmp_path: Path) -> None:
    from dfudet.checkpoint import atomic_torch_save

    ckpt = tiny_disk / "best_model.pth"
    atomic_torch_save({"w": torch.zeros(1000)}, ckpt)  # a previous, intact checkpoint
    with pytest.raises(CheckpointError, match=r"best_model.pth: could not write the checkpoint, no space left on the "
                                              r"device \(.* GB free .*; it needs about 16 MB\); the previous"):
        atomic_torch_save({"w": torch.zeros(4_000_000)}, ckpt)
    assert torch.load(ckpt, weights_only=True)["w"].shape == (1000,)
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["best_model.pth"]  # no temp file left behind
    big = tmp_path / "big"
    big.mkdir()
    import numpy as np
    from PIL import Image

    from dfudet.data.records import ImageRecord, write_dataset

    records = []
    for i in range(6):  # noisy photos: ~1 MB each as JPEG, more than the disk holds
        p = big / f"{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (600, 600, 3), dtype=np.uint8)).save(p)
        records.append(ImageRecord(path=str(p), width=600, height=600, boxes=[[1, 1, 50, 50]], split="train",
                                   healthy=False, source="test"))
    write_dataset(tmp_path / "ds", records)
    with pytest.raises(DataError, match=r"cache: no space left on the device while writing the cache: .* GB free"):
        prepare_cache(tmp_path / "ds", tiny_disk / "cache", img_size=0)
    assert not (tiny_disk / "cache").exists()
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["best_model.pth"]


def test_cli_debug_shows_the_traceback(tmp_path: Path, capsys) -> None:
    assert main(["data", "verify", str(tmp_path / "nope")]) == 2
    assert "error: " in capsys.readouterr().err
    with pytest.raises(DataError):
        main(["--debug", "data", "verify", str(tmp_path / "nope")])
