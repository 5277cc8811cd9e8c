"""Atomic writes: content, no temp files left, permissions like a normal write (not mkstemp's 0600)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dfudet.utils import atomic_write_bytes, atomic_write_with


def test_atomic_write_replaces_content_and_gets_normal_permissions(tmp_path: Path):
    normal = tmp_path / "normal.txt"
    normal.write_bytes(b"x")  # what open() gives under this process's umask
    target = tmp_path / "sub" / "report.json"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert (target.stat().st_mode & 0o777) == (normal.stat().st_mode & 0o777)
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]


def test_failed_write_keeps_the_old_file(tmp_path: Path):
    target = tmp_path / "a.bin"
    atomic_write_bytes(target, b"old")

    def boom(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_with(target, boom)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.bin"]
