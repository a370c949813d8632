"""N:M semi-structured sparsity: in every group of M consecutive weights along the last
(input) dimension, at most N are kept.

``"2:4"`` is the pattern NVIDIA's sparse tensor cores run at up to twice the dense speed
(see ``torch.sparse.to_sparse_semi_structured``). :func:`keep_nm` picks the N largest
magnitudes of each group (ties: the earlier entry is pruned first, as in
:mod:`vlticket.core.selection`); weights already pruned stay pruned, so a group with fewer
than N kept weights keeps them all.
"""

from __future__ import annotations

import re

import torch

from ..errors import ArgumentError, ShapeMismatchError

_PATTERN = re.compile(r"(\d+):(\d+)")
# 2^16 groups per chunk: the keys stay in cache between the few passes over them, and each op
# is large enough that torch's per-call overhead stays small (2^15 was 1.2x slower, 2^18 no
# faster, on BERT-base's shapes).
_CHUNK_GROUPS = 1 << 16


def _key(dtype: torch.dtype, int_dtype: torch.dtype) -> tuple[torch.dtype, torch.Tensor]:
    return int_dtype, torch.tensor(float("inf"), dtype=dtype).view(int_dtype)


# Float dtype -> (integer of its width, bits of +inf): a float's magnitude orders as its bits.
_KEYS = {
    torch.float16: _key(torch.float16, torch.int16),
    torch.bfloat16: _key(torch.bfloat16, torch.int16),
    torch.float32: _key(torch.float32, torch.int32),
    torch.float64: _key(torch.float64, torch.int64),
}


def parse_pattern(pattern: object) -> tuple[int, int]:
    """``(N, M)`` of a pattern string ``"N:M"`` with ``0 < N < M``, else an ArgumentError."""
    match = _PATTERN.fullmatch(pattern) if isinstance(pattern, str) else None
    n, m = (int(match[1]), int(match[2])) if match else (0, 0)
    if not 0 < n < m:
        raise ArgumentError(
            f"`pattern`: expected 'N:M' with 0 < N < M (e.g. '2:4'), found {pattern!r}"
        )
    return n, m


def _groups(t: torch.Tensor, m: int, name: str, pattern: str) -> torch.Tensor:
    """``t`` viewed as rows of ``m`` consecutive entries of its last dimension."""
    last = t.shape[-1] if t.dim() else 1
    if t.dim() == 0 or last % m:
        raise ShapeMismatchError(
            f"tensor {name!r}: pattern {pattern!r} groups {m} weights along the last (input) "
            f"dimension, which must be a multiple of {m}; found shape {list(t.shape)}"
        )
    return t.reshape(-1, m)


def check_divides(shapes: dict[str, tuple[int, ...]], pattern: str) -> None:
    """Raise before any work when ``pattern`` cannot tile one of the tensors."""
    _, m = parse_pattern(pattern)
    for name, shape in shapes.items():
        _groups(torch.empty(shape, device="meta"), m, name, pattern)


def keep_nm(
    weight: torch.Tensor,
    keep: torch.Tensor | None,
    pattern: str,
    *,
    name: str = "weight",
    largest: bool = False,
) -> torch.Tensor:
    """The bool keep-mask of ``weight`` under ``pattern`` (see the module docstring).

    Args:
        weight: a floating-point tensor whose last dimension is a multiple of M.
        keep: its current keep-mask (pruned entries stay pruned), or None for all kept.
        pattern: ``"N:M"``.
        name: the tensor's name, for error messages.
        largest: keep the N smallest magnitudes instead (prune the largest).
    """
    n, m = parse_pattern(pattern)
    groups = _groups(weight.detach(), m, name, pattern)
    prior = None if keep is None else _groups(keep, m, name, pattern)
    out = torch.empty(groups.shape, dtype=torch.bool, device=weight.device)
    key_dtype, inf = _KEYS[weight.dtype]
    magnitude = torch.iinfo(key_dtype).max  # every bit but the sign
    network = _sorting_network(m)
    for start in range(0, groups.shape[0], _CHUNK_GROUPS):
        rows = slice(start, start + _CHUNK_GROUPS)
        # |w| ordered as the integers of its bits: one elementwise pass, no float compares.
        keys = torch.bitwise_and(groups[rows].view(key_dtype), magnitude)
        if int(keys.amax()) >= int(inf):  # inf or NaN bits
            raise ArgumentError(f"`weights[{name!r}]` holds NaN or infinite values")
        if largest:
            keys = torch.sub(inf, keys)  # > 0, smallest magnitude largest
        if prior is not None:
            keys.masked_fill_(~prior[rows], -1)
        # A sorting network (a few elementwise min/max over whole columns) finds each group's
        # N-th largest key; far faster than topk or sort over rows of M.
        ranked = _sort_columns(list(keys.unbind(1)), network)
        nth, below = ranked[m - n], ranked[m - n - 1]
        if prior is not None:
            nth = nth.clamp_min(0)  # a group with fewer than N kept keeps them all, no -1
        chunk = out[rows]
        torch.ge(keys, nth.unsqueeze(1), out=chunk)
        # A group whose N-th and (N+1)-th largest tie needs the index order: a stable sort.
        if int(torch.sub(nth, below).amin()) == 0:  # nth >= below always
            tied = torch.eq(nth, below)
            chunk[tied] = _keep_sorted(keys[tied], n)
    return out.reshape(weight.shape)


def _keep_sorted(score: torch.Tensor, n: int) -> torch.Tensor:
    """Keep the last ``n`` of each row in stable ascending order (ties: earlier pruned first),
    never a pruned (negative) entry."""
    m = score.shape[1]
    order = torch.sort(score, dim=1, stable=True).indices
    last = torch.zeros(1, m, dtype=torch.bool, device=score.device)
    last[:, m - n :] = True
    keep = torch.empty_like(order, dtype=torch.bool).scatter_(1, order, last.expand_as(order))
    return keep & (score >= 0)


def _sorting_network(m: int) -> list[tuple[int, int]]:
    """Comparator pairs that sort any ``m`` values (Batcher's merge exchange, Knuth's
    Algorithm 5.2.2M): 5 for m = 4, 19 for m = 8."""
    t = max(1, (m - 1).bit_length())
    pairs, p = [], 1 << (t - 1)
    while p > 0:
        q, r, d = 1 << (t - 1), 0, p
        while True:
            pairs += [(i, i + d) for i in range(m - d) if i & p == r]
            if q == p:
                break
            d, q, r = q - p, q >> 1, p
        p >>= 1
    return pairs


def _sort_columns(cols: list[torch.Tensor], network: list[tuple[int, int]]) -> list[torch.Tensor]:
    """M columns sorted ascending within each row (group)."""
    cols = list(cols)
    for i, j in network:
        cols[i], cols[j] = torch.minimum(cols[i], cols[j]), torch.maximum(cols[i], cols[j])
    return cols


def satisfies(keep: torch.Tensor, pattern: str, *, name: str = "mask") -> bool:
    """Whether every group of M consecutive entries along the last dimension keeps at most N."""
    n, m = parse_pattern(pattern)
    counts = _groups(keep, m, name, pattern).sum(dim=1, dtype=torch.int64)
    return bool((counts <= n).all())


__all__ = ["check_divides", "keep_nm", "parse_pattern", "satisfies"]
