"""Host memory: keep freed memory in the process for reuse, and read this process's resident set size.

glibc's malloc serves every block above its mmap threshold (at most 32 MiB) with a fresh `mmap` and gives it back to the
kernel with `munmap` when it is freed. A CPU detection step at 512 px allocates and frees hundreds of activations and
gradients that large, so every step the kernel maps, faults in and zeroes the same gigabytes again: the FUSeg FCOS
recipe took 342 M minor page faults and 805 s of system time in an hour of training (docs/benchmarks.md).
`keep_freed_memory` asks glibc to serve such blocks from its heap and not to return freed memory, so the next step
reuses it. Only where the bytes live changes (that recipe computed identical numbers with and without it); the
resident set is higher (the heap keeps its high-water mark) and, at a fixed input size, flat from the first epochs
on, which `rss_mib` in metrics.csv shows.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import sys

log = logging.getLogger("dfudet")

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def glibc() -> ctypes.CDLL | None:
    """The process's glibc, or None on another C library or OS."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Make glibc malloc keep freed memory for reuse: trimming of the heap off, then no mmap-backed blocks.

    Process-wide and lasting: DataLoader workers forked later inherit it, and nothing here undoes it. Returns False,
    changing nothing, when the C library is not glibc (musl, macOS, Windows: their allocators need no such setting or
    take none), and warns when glibc refuses a setting.
    """
    libc = glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # trimming first: blocks served from the heap while trimming is still on would be returned to the kernel as
    # soon as they are freed, which is worse than glibc's defaults. mallopt returns 1 on success.
    ok = mallopt(M_TRIM_THRESHOLD, -1) == 1 and mallopt(M_MMAP_MAX, 0) == 1
    if not ok:
        log.warning("host memory: glibc refused mallopt (M_TRIM_THRESHOLD -1 / M_MMAP_MAX 0); glibc's defaults apply")
    return ok


def rss_mib() -> float:
    """Resident set size of this process in MiB (from /proc; NaN where there is no /proc)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")
