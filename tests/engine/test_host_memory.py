"""keep_freed_memory: a freed large block is reused by the next allocation instead of being faulted in afresh."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from dfudet.engine.host_memory import glibc, rss_mib

pytestmark = pytest.mark.skipif(glibc() is None, reason="glibc only (the setting is a no-op elsewhere)")

# Six "steps" of a training-like pattern (two large tensors allocated, filled and freed), then the minor page faults
# of five more are counted. A real allocator and real tensors: the count comes from the kernel (getrusage), in a fresh
# process each time.
_PROBE = textwrap.dedent("""
    import ctypes, resource, sys, torch
    from dfudet.engine.host_memory import keep_freed_memory
    ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: 4 KiB pages, so fault counts do not depend on THP
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    n = 64 * 2**20  # float32 elements: 256 MiB
    def step():
        a = torch.ones(n)
        b = a * 2  # a second block while the first is alive
        del a, b
    for _ in range(6):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")
_PAGES = 256 * 2**20 // 4096


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1])


def test_freed_block_is_reused_without_page_faults():
    # glibc's default: each 256 MiB block is unmapped on free, so every page of every step faults in again
    assert _faults("default") > 9 * _PAGES  # 5 steps x 2 blocks
    # kept: once the heap has grown to the pattern's size (a few steps), steps land in the memory earlier ones freed
    assert _faults("keep") < 3 * _PAGES


def test_rss_is_read_from_proc():
    assert 10 < rss_mib() < 64 * 1024
