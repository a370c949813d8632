"""Timers and an honest peak-memory probe (resident set of this process, torch allocations too)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import re
import statistics
import time
from collections.abc import Callable


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1)) * 1024


def rss() -> int:
    """Resident bytes now (freed memory handed back to the OS first)."""
    gc.collect()
    with contextlib.suppress(OSError):  # not glibc: may count freed-but-kept heap
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return _status("VmRSS")


def peak_extra(fn: Callable[[], object]) -> tuple[int, float, object]:
    """(peak resident bytes above the start, seconds, result) of one call of ``fn``.

    The kernel's high-water mark is reset just before the call (``/proc/self/clear_refs``), so
    the peak is the call's own, and it sees every allocation (tracemalloc misses torch's).
    """
    base = rss()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    return _status("VmHWM") - base, seconds, result


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def summary(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}
