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
_CHUNK_GROUPS = 1 << 12  # small chunks stay in cache and below torch's threading grain


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
    for start in range(0, groups.shape[0], _CHUNK_GROUPS):
        rows = slice(start, start + _CHUNK_GROUPS)
        score = groups[rows].abs()
        if not torch.isfinite(score.amax()):  # amax propagates NaN
            raise ArgumentError(f"`weights[{name!r}]` holds NaN or infinite values")
        if largest:
            score.neg_()
        if prior is not None:
            score.masked_fill_(~prior[rows], float("-inf"))  # never above any threshold
        # Keep what reaches the group's N-th largest score; a sort settles the rare tied groups.
        top = torch.topk(score, n + 1, dim=1).values
        nth = top[:, n - 1 : n]
        chunk = torch.ge(score, nth, out=out[rows])
        chunk &= score > float("-inf")
        tied = (top[:, n] == nth[:, 0]) & (nth[:, 0] > float("-inf"))
        if tied.any():
            chunk[tied] = _keep_sorted(score[tied], n)
    return out.reshape(weight.shape)


def _keep_sorted(score: torch.Tensor, n: int) -> torch.Tensor:
    """Keep the last ``n`` of each row in stable ascending order (ties: earlier pruned first),
    never a ``-inf`` (already pruned) entry."""
    m = score.shape[1]
    order = torch.sort(score, dim=1, stable=True).indices
    last = torch.zeros(1, m, dtype=torch.bool, device=score.device)
    last[:, m - n :] = True
    keep = torch.empty_like(order, dtype=torch.bool).scatter_(1, order, last.expand_as(order))
    return keep & (score > float("-inf"))


def satisfies(keep: torch.Tensor, pattern: str, *, name: str = "mask") -> bool:
    """Whether every group of M consecutive entries along the last dimension keeps at most N."""
    n, m = parse_pattern(pattern)
    counts = _groups(keep, m, name, pattern).sum(dim=1, dtype=torch.int64)
    return bool((counts <= n).all())


__all__ = ["check_divides", "keep_nm", "parse_pattern", "satisfies"]
