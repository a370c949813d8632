"""Exact k-smallest selection over many tensors by counting, without concatenating them.

Magnitudes are compared as exact integer keys (see ``_passes``, which runs the passes). One
pass over the weights writes the candidate keep-masks (``key >= lo``) and collects the few
entries whose key falls in a bracket ``[lo, hi]`` taken from a small sample; the exact k-th key
is then read off those entries by narrowing histograms, and only they are corrected. A miss
(rare) narrows the range with full-pass histograms instead.

Every global quantity is a count, so the same code runs on sharded weights: the caller passes a
``reduce(values, op)`` that sums (or maxes) small int64 arrays over ranks. Ties are pruned in
"slot" order (tensor name order, then shard order, then row-major index inside a shard): an
exclusive prefix of per-slot tie counts tells each piece how many of its ties to prune.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import ArgumentError
from ._passes import (
    KeySpace,
    Piece,
    Reduce,
    bin_counts,
    bin_width,
    chunk_tasks,
    count_true,
    histogram,
    keep_of,
    keys_of,
    local_reduce,
    narrow,
    nonfinite,
    run_tasks,
    scan,
)

_SAMPLE = 1 << 18  # sampled magnitudes used to bracket the k-th one, at most
_MIN_SAMPLE = 1 << 13  # and at least
_BLOCK = 16  # the sample reads runs of 16 neighbours: one cache line of float32
_MIN_CAP = 1 << 16  # entries a pass may collect, at least (else 1/64 of the eligible ones)


def _eligible(piece: Piece) -> int:
    return piece.numel if piece.keep is None else count_true(piece.keep)


def _raise_nonfinite(pieces: Sequence[Piece], bad: np.ndarray, space: KeySpace) -> None:
    """Raise for the first slot holding NaN or inf (every rank sees the same ``bad``)."""
    slot = int(np.flatnonzero(bad)[0])
    local = [p for p in pieces if p.slot == slot]
    name = local[0].name if local else f"slot {slot}"
    count = int(bad[slot])
    raise ArgumentError(
        f"`weights[{name!r}]` holds {count} NaN or inf values; magnitude pruning needs "
        "finite weights"
    )


# -- the selection --------------------------------------------------------------------------
def eligible_total(pieces: Sequence[Piece], reduce: Reduce = local_reduce) -> int:
    counts = np.array([sum(_eligible(p) for p in pieces if p.counted)], np.int64)
    return int(reduce(counts, "sum")[0])


def check_finite(pieces: Sequence[Piece], n_slots: int, space: KeySpace, reduce: Reduce) -> None:
    """Raise if any weight is NaN or inf (the selection passes check this on the way)."""

    def task(job: tuple[int, int, int]) -> int:
        i, s, e = job
        keys = keys_of(pieces[i], s, e, space)
        return nonfinite(keys, space)

    tasks = chunk_tasks(pieces)
    bad = np.zeros(n_slots, np.int64)
    for (i, _, _), b in zip(tasks, run_tasks(task, tasks), strict=True):
        if pieces[i].counted:
            bad[pieces[i].slot] += b
    bad = reduce(bad, "sum")
    if bad.any():
        _raise_nonfinite(pieces, bad, space)


def keep_smallest_pruned(
    pieces: Sequence[Piece],
    k: int,
    n_slots: int,
    space: KeySpace,
    reduce: Reduce = local_reduce,
) -> list[torch.Tensor]:
    """New keep-masks (bool, on each weight's device) pruning the ``k`` smallest eligible keys.

    ``k`` counts over all ranks; every rank must call this with the same ``k`` and ``n_slots``.
    ``_SAMPLE`` keys bracket the k-th one; a pass collects at most
    ``max(_MIN_CAP, eligible // 64)`` entries.
    """
    total = eligible_total(pieces, reduce)
    if k <= 0 or k >= total:
        check_finite(pieces, n_slots, space, reduce)
        return [_constant(p, keep_all=k <= 0) for p in pieces]

    outs_t = [torch.empty(p.numel, dtype=torch.bool) for p in pieces]
    outs = [o.numpy() for o in outs_t]
    cap = max(_MIN_CAP, total // 64)
    r = k - 1  # rank (0-based) of the last key pruned
    lo, hi, c_lo, c_hi = 0, space.inf - 1, 0, total
    b_lo, b_hi = _sample_bracket(pieces, r, total, _sample_size(total, cap), space, reduce)
    t = None
    while t is None:
        found, bad = scan(pieces, outs, b_lo, b_hi, cap, space)
        counts = np.zeros(3 + n_slots, np.int64)
        counts[:3] = found.n_ge, found.n_in, found.collected is None
        for slot, b in bad.items():
            counts[3 + slot] = b
        counts = reduce(counts, "sum")
        if counts[3:].any():
            _raise_nonfinite(pieces, counts[3:], space)
        n_lt = total - int(counts[0])
        n_le = n_lt + int(counts[1])
        if r < n_lt:
            hi, c_hi = b_lo - 1, n_lt
        elif r >= n_le:
            lo, c_lo = b_hi + 1, n_le
        elif not counts[2]:
            counted = [c for c, p in zip(found.collected, pieces, strict=True) if p.counted]
            t, below = _refine(counted, b_lo, b_hi, r - n_lt, reduce)
            _finish_collected(pieces, outs, found.collected, t, k - n_lt - below, n_slots, reduce)
            break
        else:
            lo, hi, c_lo, c_hi = b_lo, b_hi, n_lt, n_le
        while c_hi - c_lo > cap and lo < hi:
            width = bin_width(lo, hi)
            hist = reduce(histogram(pieces, lo, width, hi, space), "sum")
            lo, hi, below, inside = narrow(hist, lo, width, hi, r - c_lo)
            c_lo, c_hi = c_lo + below, c_lo + below + inside
        if lo == hi:
            t = lo
            _finish_threshold(pieces, outs, t, k - c_lo, n_slots, space, reduce)
            break
        b_lo, b_hi = lo, hi
    return [
        o.reshape(p.weight.shape).to(p.weight.device) for o, p in zip(outs_t, pieces, strict=True)
    ]


def _sample_size(total: int, cap: int) -> int:
    """Keys to sample so the bracket (about 5/sqrt(m) of the entries wide) holds at most half
    of what one pass may collect: a small pool (one tensor, ``scope="tensor"``) needs far
    fewer than ``_SAMPLE``, and sampling is most of the cost of selecting in it."""
    return int(min(_SAMPLE, max(_MIN_SAMPLE, (10 * total / max(cap, 1)) ** 2)))


def _constant(p: Piece, keep_all: bool) -> torch.Tensor:
    if not keep_all:
        return torch.zeros_like(p.weight, dtype=torch.bool)
    if p.keep is None:
        return torch.ones_like(p.weight, dtype=torch.bool)
    return p.keep.reshape(p.weight.shape).clone()


def _sample_bracket(
    pieces: Sequence[Piece], r: int, total: int, size: int, space: KeySpace, reduce: Reduce
) -> tuple[int, int]:
    """A key range holding the key of rank ``r`` with high probability, from a sparse sample.

    On several ranks the range spans every rank's local range: the global quantile of a
    mixture lies between the quantiles of its parts.
    """
    counted = [p for p in pieces if p.counted]
    local = sum(p.numel for p in counted)
    fraction = min(1.0, size / max(1, local))
    parts = [_sample_piece(p, fraction, space) for p in counted]
    sample = np.concatenate(parts) if parts else np.empty(0, space.np_int)
    m = sample.size
    lo, hi = space.inf - 1, 0  # neutral for min / max when this rank has no sample
    if m:
        q = (r + 0.5) / total
        # Runs of neighbours are correlated: a wider margin than independent draws need.
        half = 5.0 * math.sqrt(m * q * (1.0 - q)) + 16.0
        i, j = math.floor(q * m - half), math.ceil(q * m + half)
        picks = [x for x in (i, j) if 0 <= x < m]
        part = np.partition(sample, picks) if picks else sample
        lo = int(part[i]) if i >= 0 else 0
        hi = int(part[j]) if j < m else space.inf - 1
    both = reduce(np.array([-lo, hi], np.int64), "max")
    lo, hi = -int(both[0]), int(both[1])
    return (lo, hi) if lo <= hi else (0, space.inf - 1)


def _sample_piece(p: Piece, fraction: float, space: KeySpace) -> np.ndarray:
    """Eligible keys of runs of ``_BLOCK`` neighbours spread evenly over the piece."""
    w = p.weight.reshape(-1)
    keep = p.keep.reshape(-1) if p.keep is not None else None
    blocks = w.numel() // _BLOCK
    if fraction < 1.0 and blocks >= 4:
        step = _coprime_step(max(1, round(1.0 / fraction)), p.weight.shape)
        w = w[: blocks * _BLOCK].view(blocks, _BLOCK)[::step]
        if keep is not None:
            keep = keep[: blocks * _BLOCK].view(blocks, _BLOCK)[::step]
    vals = w.reshape(-1).to("cpu", space.float_dtype).numpy().view(space.np_int)
    keys = np.bitwise_and(vals, space.abs_bits)
    if keep is not None:
        keys = keys[keep.reshape(-1).cpu().numpy()]
    return keys


def _coprime_step(step: int, shape: torch.Size) -> int:
    """A stride of at least ``step`` blocks that reaches every column of a row: one sharing a
    factor with the row's length in blocks samples only some columns, and the columns of a
    gradient (or of a trained weight) differ in scale, so the bracket would miss."""
    row = shape[-1] if len(shape) >= 2 else 0
    period = row // math.gcd(row, _BLOCK) if row else 1
    while math.gcd(step, period) != 1:
        step += 1
    return step


def _refine(
    collected: list[tuple[np.ndarray, np.ndarray]], lo: int, hi: int, rank: int, reduce: Reduce
) -> tuple[int, int]:
    """The key of rank ``rank`` among the collected keys (over all ranks) in [lo, hi], and how
    many collected keys are below it, by histograms of counts only."""
    keys = np.concatenate([c[1] for c in collected]) if collected else np.empty(0, np.int64)
    below = 0
    while lo < hi:
        keys = keys[(keys >= lo) & (keys <= hi)]
        width = bin_width(lo, hi)
        hist = reduce(bin_counts(keys, lo, width), "sum")
        lo, hi, b, _ = narrow(hist, lo, width, hi, rank)
        rank, below = rank - b, below + b
    return lo, below


def _tie_prefix(pieces: Sequence[Piece], ties: Sequence[int], n_slots: int, reduce: Reduce):
    """How many ties come before each slot, in slot order, over all ranks."""
    counts = np.zeros(n_slots, np.int64)
    for p, n in zip(pieces, ties, strict=True):
        if p.counted:
            counts[p.slot] += n
    counts = reduce(counts, "sum")
    return np.cumsum(counts) - counts


def _finish_collected(pieces, outs, collected, t: int, ties: int, n_slots: int, reduce) -> None:
    """Prune the collected entries below ``t`` and the first ``ties`` entries equal to it."""
    tie_idx = []
    for out, (idx, keys) in zip(outs, collected, strict=True):
        out[idx[keys < t]] = False
        tie_idx.append(idx[keys == t])
    before = _tie_prefix(pieces, [x.size for x in tie_idx], n_slots, reduce)
    for p, out, idx in zip(pieces, outs, tie_idx, strict=True):
        take = min(max(ties - int(before[p.slot]), 0), idx.size)
        out[idx[:take]] = False


def _finish_threshold(pieces, outs, t: int, ties: int, n_slots: int, space, reduce) -> None:
    """Two passes when the k-th key is known but its ties were too many to collect."""

    def keys_and_ties(job):
        i, s, e = job
        keys = keys_of(pieces[i], s, e, space)
        eq = keys == t
        np.greater(keys, t, out=outs[i][s:e])
        keep = keep_of(pieces[i], s, e)
        if keep is not None:
            np.logical_and(outs[i][s:e], keep, out=outs[i][s:e])
            eq &= keep
        return eq

    def count(job) -> int:
        return int(np.count_nonzero(keys_and_ties(job)))

    tasks = chunk_tasks(pieces)
    per_task = run_tasks(count, tasks)
    local = [0] * len(pieces)
    offset = []  # ties before each task inside its piece
    for (i, _, _), n in zip(tasks, per_task, strict=True):
        offset.append(local[i])
        local[i] += n
    before = _tie_prefix(pieces, local, n_slots, reduce)

    def unprune(job_offset) -> None:
        (i, s, e), off = job_offset
        take = min(max(ties - int(before[pieces[i].slot]), 0), local[i])
        if off + int(np.count_nonzero(keys_and_ties((i, s, e)))) <= take:
            return
        idx = np.flatnonzero(keys_and_ties((i, s, e)))
        outs[i][s + idx[max(take - off, 0) :]] = True

    run_tasks(unprune, list(zip(tasks, offset, strict=True)))
