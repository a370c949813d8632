"""Chunked passes over many tensors, reading magnitudes as integer keys.

The bit pattern of ``|w|`` read as a signed integer orders non-negative floats exactly and makes
ties exact. A pass splits every tensor into cache-sized chunks and runs them on a few threads
(NumPy releases the GIL in its loops), reusing per-thread scratch buffers. The selection in
``_select`` is built from these passes: :func:`scan` writes candidate masks and collects the
entries in a key bracket; :func:`histogram` counts keys in bins to narrow a range.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

Reduce = Callable[[np.ndarray, str], np.ndarray]

CHUNK = 1 << 19  # elements per task: few enough tasks that Python overhead stays small
BINS = 1024  # histogram bins per narrowing round (4 rounds span float32's keys)


def local_reduce(values: np.ndarray, op: str) -> np.ndarray:
    """The single-process reduction: nothing to combine."""
    return values


@dataclass(frozen=True)
class KeySpace:
    """Non-negative floats as integers: float32 keys unless some tensor is float64."""

    float_dtype: torch.dtype
    np_int: type
    abs_bits: int  # clears the sign bit
    inf: int  # key of +inf; NaN keys are above it

    @classmethod
    def for_dtypes(cls, dtypes: Sequence[torch.dtype]) -> KeySpace:
        if torch.float64 in dtypes:
            return cls(torch.float64, np.int64, (1 << 63) - 1, 0x7FF0000000000000)
        return cls(torch.float32, np.int32, (1 << 31) - 1, 0x7F800000)


@dataclass
class Piece:
    """A tensor (or the local shard of one) taking part in a selection.

    ``slot`` is its position in the global tie order; ``counted`` is False on replicas whose
    entries another rank already counts.
    """

    name: str
    weight: torch.Tensor
    keep: torch.Tensor | None
    slot: int
    counted: bool = True

    def __post_init__(self) -> None:
        # Chunks are slices of the flat tensor: make it flat-addressable once, not per chunk.
        self.weight = self.weight.detach().contiguous()
        if self.keep is not None:
            self.keep = self.keep.contiguous()

    @property
    def numel(self) -> int:
        return self.weight.numel()


class _Scratch(threading.local):
    """Per-thread chunk buffers, reused across tasks."""

    def get(self, n: int, np_int: type) -> tuple[np.ndarray, np.ndarray]:
        keys, band = getattr(self, "buffers", (None, None))
        if keys is None or keys.size < n or keys.dtype != np_int:
            keys, band = np.empty(CHUNK, np_int), np.empty(CHUNK, bool)
            self.buffers = (keys, band)
        return keys[:n], band[:n]


_scratch = _Scratch()


def _flat_numpy(t: torch.Tensor, start: int, stop: int, dtype: torch.dtype) -> np.ndarray:
    """Entries ``[start, stop)`` of flat ``t`` as a CPU array of ``dtype`` (a view if possible)."""
    c = t.detach().reshape(-1)[start:stop]
    if c.device.type != "cpu" or c.dtype != dtype:
        c = c.to("cpu", dtype)
    return c.numpy()


def keys_of(piece: Piece, start: int, stop: int, space: KeySpace) -> np.ndarray:
    keys, _ = _scratch.get(stop - start, space.np_int)
    raw = _flat_numpy(piece.weight, start, stop, space.float_dtype).view(space.np_int)
    return np.bitwise_and(raw, space.abs_bits, out=keys)


def keep_of(piece: Piece, start: int, stop: int) -> np.ndarray | None:
    if piece.keep is None:
        return None
    return _flat_numpy(piece.keep, start, stop, torch.bool)


def chunk_tasks(pieces: Sequence[Piece]) -> list[tuple[int, int, int]]:
    return [
        (i, s, min(s + CHUNK, p.numel))
        for i, p in enumerate(pieces)
        for s in range(0, p.numel, CHUNK)
    ]


def run_tasks(fn: Callable, tasks: list) -> list:
    # numpy releases the GIL in its loops, so chunks run in parallel on torch's thread budget.
    workers = min(torch.get_num_threads(), len(tasks))
    if workers <= 1:
        return [fn(t) for t in tasks]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, tasks))


def count_true(t: torch.Tensor) -> int:
    """Number of True entries of a bool tensor (NumPy's count is far faster on CPU)."""
    if t.device.type == "cpu" and t.is_contiguous() and type(t) is torch.Tensor:
        return int(np.count_nonzero(t.detach().numpy()))
    return int(t.count_nonzero())


def nonfinite(keys: np.ndarray, space: KeySpace) -> int:
    """How many keys are inf or NaN (a max first: almost always none)."""
    return int(np.count_nonzero(keys >= space.inf)) if keys.max() >= space.inf else 0


# -- passes over the weights ----------------------------------------------------------------
@dataclass
class Scan:
    n_ge: int  # eligible keys >= lo (counted pieces)
    n_in: int  # eligible keys in [lo, hi] (counted pieces)
    collected: list[tuple[np.ndarray, np.ndarray]] | None  # per piece: (flat index, key)


def scan(
    pieces: Sequence[Piece],
    outs: Sequence[np.ndarray],
    lo: int,
    hi: int,
    cap: int,
    space: KeySpace,
) -> tuple[Scan, dict[int, int]]:
    """Write ``outs = eligible & key >= lo``; count, and collect entries with key in [lo, hi]."""
    lock = threading.Lock()
    state = {"collected": 0, "overflow": False}

    def task(job: tuple[int, int, int]):
        i, s, e = job
        p = pieces[i]
        keys = keys_of(p, s, e, space)
        _, band = _scratch.get(e - s, space.np_int)
        out = outs[i][s:e]
        np.greater_equal(keys, lo, out=out)
        keep = keep_of(p, s, e)
        if keep is not None:
            np.logical_and(out, keep, out=out)
        np.less_equal(keys, hi, out=band)
        np.logical_and(band, out, out=band)
        idx = np.flatnonzero(band)
        bad = nonfinite(keys, space)
        with lock:
            state["collected"] += idx.size
            if state["collected"] > cap:
                state["overflow"] = True
            keep_it = not state["overflow"]
        got = None
        if keep_it:
            # Positions as int32 when they fit: the collected entries are most of the scratch.
            at = idx.astype(np.int32 if p.numel < 2**31 else np.int64)
            at += s
            got = (at, keys[idx])
        return np.count_nonzero(out), idx.size, bad, got

    tasks = chunk_tasks(pieces)
    results = run_tasks(task, tasks)
    n_slots_bad: dict[int, int] = {}
    n_ge = n_in = 0
    for (i, _, _), (ge, inside, bad, _) in zip(tasks, results, strict=True):
        if pieces[i].counted:
            n_ge, n_in = n_ge + ge, n_in + inside
        if bad:
            n_slots_bad[pieces[i].slot] = n_slots_bad.get(pieces[i].slot, 0) + bad
    collected = None
    if not state["overflow"]:
        per_piece: list[list] = [[] for _ in pieces]
        for (i, _, _), r in zip(tasks, results, strict=True):
            per_piece[i].append(r[3])
        collected = [_concat(parts, space) for parts in per_piece]
    return Scan(n_ge, n_in, collected), n_slots_bad


def _concat(parts: list, space: KeySpace) -> tuple[np.ndarray, np.ndarray]:
    if not parts:
        return np.empty(0, np.int64), np.empty(0, space.np_int)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def histogram(pieces: Sequence[Piece], lo: int, width: int, hi: int, space: KeySpace) -> np.ndarray:
    """Counts of eligible keys of counted pieces in ``BINS`` bins of ``width`` from ``lo``."""

    def task(job: tuple[int, int, int]) -> np.ndarray:
        i, s, e = job
        p = pieces[i]
        keys = keys_of(p, s, e, space)
        sel = (keys >= lo) & (keys <= hi)
        keep = keep_of(p, s, e)
        if keep is not None:
            sel &= keep
        return bin_counts(keys[sel], lo, width)

    jobs = [t for t in chunk_tasks(pieces) if pieces[t[0]].counted]
    return sum(run_tasks(task, jobs), np.zeros(BINS, np.int64))


def bin_counts(keys: np.ndarray, lo: int, width: int) -> np.ndarray:
    b = (keys.astype(np.int64) - lo) // width
    return np.bincount(b, minlength=BINS).astype(np.int64)


def narrow(
    counts: np.ndarray, lo: int, width: int, hi: int, rank: int
) -> tuple[int, int, int, int]:
    """The bin holding the entry of rank ``rank`` in the histogram: its key range, the number
    of entries below it and in it."""
    cum = np.cumsum(counts)
    b = int(np.searchsorted(cum, rank, side="right"))
    below = int(cum[b - 1]) if b else 0
    b_lo = lo + b * width
    return b_lo, min(hi, b_lo + width - 1), below, int(counts[b])


def bin_width(lo: int, hi: int) -> int:
    return -(-(hi - lo + 1) // BINS)
