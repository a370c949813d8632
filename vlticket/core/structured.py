"""Structured selection: whole attention heads and FFN neurons, as index sets over named tensors.

A *block* (one attention module, one FFN) holds ``count`` *units* (heads or neurons). Unit ``u``
is the same slice of several tensors: rows ``u*size : (u+1)*size`` of the query, key and value
weights (of each of ``parts`` stacked chunks when q/k/v are fused into one tensor) and the same
columns of the output weight. Nothing here knows a model family: adapters say where the blocks
are (:mod:`vlticket.adapters`), this module scores units, selects the lowest with exact counts
and writes the result as an ordinary :class:`Mask` with whole rows and columns False.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..errors import ArgumentError, ShapeMismatchError
from .mask import Mask
from .selection import fraction

SCOPES = ("global", "layer", "stream")
NORMS = ("l1", "l2")


@dataclass(frozen=True)
class Axis:
    """One tensor's share of a block: its units run along ``dim`` (0 rows, 1 columns), in
    ``parts`` stacked chunks (3 for a fused q/k/v weight, else 1)."""

    name: str
    dim: int
    parts: int = 1


@dataclass(frozen=True)
class Block:
    """``count`` units of ``size`` rows/columns each, shared by the tensors in ``axes``.

    Args:
        name: the block's name, e.g. ``"encoder.layer.0.attention"``.
        kind: ``"head"`` or ``"neuron"``.
        count: number of units (heads or neurons) in the block.
        size: rows (or columns) per unit and part: the head size, or 1 for a neuron.
        axes: the tensors and dimensions the units run along.
        stream: the stream of the block, for per-stream budgets (``"language"`` ...).
    """

    name: str
    kind: str
    count: int
    size: int
    axes: tuple[Axis, ...]
    stream: str = "all"

    def check(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Every axis exists with ``parts * count * size`` entries along its dim."""
        for axis in self.axes:
            shape = shapes.get(axis.name)
            want = axis.parts * self.count * self.size
            if shape is None:
                raise ShapeMismatchError(f"block {self.name!r}: tensor {axis.name!r} is missing")
            if len(shape) <= axis.dim or shape[axis.dim] != want:
                raise ShapeMismatchError(
                    f"block {self.name!r}: tensor {axis.name!r} should have {want} "
                    f"({axis.parts} x {self.count} {self.kind}s x {self.size}) entries along dim "
                    f"{axis.dim}, found shape {tuple(shape)}"
                )

    def entries(self, units: torch.Tensor, axis: Axis) -> torch.Tensor:
        """Indices along ``axis.dim`` of these units' entries, in order (every part)."""
        offsets = torch.arange(axis.parts)[:, None, None] * (self.count * self.size)
        within = units[None, :, None] * self.size + torch.arange(self.size)[None, None, :]
        return (offsets + within).flatten().sort().values

    def per_unit(self, lines: torch.Tensor, axis: Axis) -> torch.Tensor:
        """Fold one value per row (or column) of ``axis``' tensor into one per unit (summed
        over the unit's rows or columns in every part)."""
        return lines.reshape(axis.parts, self.count, self.size).sum(dim=(0, 2))


def unit_scores(
    blocks: list[Block],
    weights: Mapping[str, torch.Tensor],
    *,
    norm: str = "l1",
    mask: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Each unit's norm over all its entries (masked entries count as zero).

    Args:
        blocks: the blocks, from an adapter.
        weights: the tensors the blocks name.
        norm: ``"l1"`` (sum of ``|w|``) or ``"l2"`` (root of the sum of squares).
        mask: optional current mask; pruned entries do not count.
    """
    if norm not in NORMS:
        raise ArgumentError(f"`score`: expected one of {NORMS} or a mapping, found {norm!r}")
    p = 1 if norm == "l1" else 2
    out = {}
    for block in blocks:
        total = torch.zeros(block.count, dtype=torch.float64)
        for axis in block.axes:
            keep = None if mask is None else mask.get(axis.name)
            lines = _line_sums(weights[axis.name].detach(), keep, axis.dim, p)
            total += block.per_unit(lines.double().cpu(), axis)
        out[block.name] = total if norm == "l1" else total.sqrt()
    return out


def _line_sums(w: torch.Tensor, keep: torch.Tensor | None, dim: int, p: int) -> torch.Tensor:
    """``sum |w|**p`` of each row (``dim=0``) or column (``dim=1``) of a 2-D ``w``; entries
    ``keep`` prunes count as zero.

    One elementwise temporary of ``w``'s size, then a plain sum: ``vector_norm`` over a
    dimension runs 4-10x slower on the CPU, and the mask multiplies in as uint8 (bool -> float
    conversions, ``where`` and ``masked_fill`` are 10-30x slower).
    """
    w = w.reshape(w.shape[0], -1)
    a = w.abs() if p == 1 else w.square()
    if keep is not None:
        bits = keep.reshape(a.shape).view(torch.uint8)
        if int(bits.amin()) == 0:  # only where entries are pruned
            a.mul_(bits.to(a.device))
    return a.sum(dim=1 - dim)


def unit_state(blocks: list[Block], mask: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per block, each unit's state in ``mask``: 1 kept whole, 0 pruned whole, -1 partial.

    Tensors the mask does not hold count as kept.
    """
    out = {}
    for block in blocks:
        kept = torch.ones(block.count, dtype=torch.bool)
        pruned = torch.ones(block.count, dtype=torch.bool)
        for axis in block.axes:
            if axis.name not in mask:
                pruned[:] = False
                continue
            # amin and amax over uint8 bytes: each a fast vectorised pass (bool reductions and
            # aminmax along a dimension are 20-40x slower on the CPU).
            m = mask[axis.name].view(torch.uint8)
            m = m.reshape(m.shape[0], -1)
            low = block.per_unit(m.amin(dim=1 - axis.dim).cpu().long(), axis)
            high = block.per_unit(m.amax(dim=1 - axis.dim).cpu().long(), axis)
            kept &= low == axis.parts * block.size
            pruned &= high == 0
        state = torch.full((block.count,), -1, dtype=torch.int8)
        state[kept] = 1
        state[pruned] = 0
        out[block.name] = state
    return out


def select_units(
    blocks: list[Block],
    scores: Mapping[str, torch.Tensor],
    *,
    sparsity: float | None = None,
    amount: float | None = None,
    scope: str = "global",
    min_per_block: int = 1,
    budgets: Mapping[str, float] | None = None,
    pruned: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Which units to keep: the lowest scores are pruned, with exact counts.

    Counts follow :mod:`vlticket.core.selection`: ``sparsity=s`` prunes until ``round(s * n)`` of
    the ``n`` units of a scope are pruned, ``amount=a`` prunes ``round(a * kept)`` more. Ties go
    to the earlier block, then the lower unit index. Units in ``pruned`` stay pruned, and no
    block keeps fewer than ``min_per_block`` units (or fewer than it has, if fewer).

    Args:
        blocks: the blocks of one kind (heads or neurons).
        scores: ``{block name: one float per unit}``.
        scope: ``"global"`` (all blocks together), ``"layer"`` (each block on its own) or
            ``"stream"`` (each stream on its own).
        budgets: ``{stream: sparsity}`` per stream; implies ``scope="stream"`` and streams not
            named use ``sparsity``.
        pruned: ``{block name: bool per unit}`` already pruned.

    Returns:
        ``{block name: bool tensor, True = unit kept}``.

    Example:
        >>> from vlticket.core.structured import Axis, Block, select_units
        >>> b = Block("attn", "head", 4, 2, (Axis("q", 0),))
        >>> select_units([b], {"attn": torch.tensor([3.0, 1.0, 2.0, 1.0])}, sparsity=0.5)
        {'attn': tensor([ True, False,  True, False])}
    """
    budgets = dict(budgets or {})
    streams = {b.stream for b in blocks}
    if budgets and amount is not None:
        raise ArgumentError(
            f"`budgets` sets each stream's final sparsity; give `sparsity` (for streams not "
            f"named), not amount={amount!r}"
        )
    every_stream = bool(budgets) and streams <= set(budgets)  # then no sparsity is needed
    if (sparsity is None) == (amount is None) and not (sparsity is None and every_stream):
        raise ArgumentError(
            f"give exactly one of `sparsity` and `amount`; found sparsity={sparsity!r}, "
            f"amount={amount!r}"
        )
    if scope not in SCOPES:
        raise ArgumentError(f"`scope`: expected one of {SCOPES}, found {scope!r}")
    if isinstance(min_per_block, bool) or not isinstance(min_per_block, int) or min_per_block < 0:
        raise ArgumentError(f"`min_per_layer`: expected an int >= 0, found {min_per_block!r}")
    if sparsity is not None or amount is not None:
        fraction(
            sparsity if sparsity is not None else amount, "sparsity" if amount is None else "amount"
        )
    for stream, value in budgets.items():
        if stream not in streams:
            raise ArgumentError(
                f"`budgets`: unknown stream {stream!r}; the blocks are in {sorted(streams)}"
            )
        fraction(value, f"budgets[{stream!r}]")
    if budgets:
        scope = "stream"
    for block in blocks:
        s = scores.get(block.name)
        if s is None or tuple(s.shape) != (block.count,):
            found = "nothing" if s is None else f"shape {tuple(s.shape)}"
            raise ShapeMismatchError(
                f"`score`: block {block.name!r} needs {block.count} scores, found {found}"
            )
    dead = {b.name: torch.zeros(b.count, dtype=torch.bool) for b in blocks}
    for name, p in (pruned or {}).items():
        dead[name] = p.cpu().bool().clone()
    if scope == "global":
        scopes = {"all": blocks}
    elif scope == "layer":
        scopes = {b.name: [b] for b in blocks}
    else:
        scopes = {}
        for b in blocks:
            scopes.setdefault(b.stream, []).append(b)
    for key, members in scopes.items():
        target = budgets.get(key, sparsity) if scope == "stream" else sparsity
        _prune_scope(members, scores, dead, target, amount, min_per_block)
    return {name: ~d for name, d in dead.items()}


def _prune_scope(blocks, scores, dead, sparsity, amount, minimum) -> None:
    total = sum(b.count for b in blocks)
    already = sum(int(dead[b.name].sum()) for b in blocks)
    if amount is not None:
        todo = round(amount * (total - already))
    else:
        todo = max(0, round(sparsity * total) - already)
    if todo == 0:
        return
    values = torch.cat([scores[b.name].detach().double().cpu() for b in blocks])
    if torch.isnan(values).any():
        raise ArgumentError("`score`: found NaN among the unit scores")
    counts = torch.tensor([b.count for b in blocks])
    owner = torch.repeat_interleave(torch.arange(len(blocks)), counts)
    was_dead = torch.cat([dead[b.name] for b in blocks])
    order = torch.sort(values, stable=True).indices  # stable: ties keep block order
    order = order[~was_dead[order]]
    # Going up the order, a unit is pruned while its block has room left above the minimum
    # and units remain to prune: the first `room` live units of each block qualify, and the
    # first `todo` qualifying ones are pruned. A unit's rank within its block comes from a
    # stable sort by block, which keeps the score order inside each block.
    live = counts - torch.bincount(owner[was_dead], minlength=len(blocks))
    room = live - counts.clamp(max=minimum)
    who = owner[order]
    grouped = torch.sort(who, stable=True).indices
    starts = torch.cumsum(live, 0) - live
    rank = torch.empty_like(who)
    rank[grouped] = torch.arange(len(who)) - starts[who[grouped]]
    chosen = order[rank < room[who]][:todo]
    newly = torch.zeros(len(values), dtype=torch.bool)
    newly[chosen] = True
    for b, part in zip(blocks, torch.split(newly, counts.tolist()), strict=True):
        dead[b.name] |= part
    if len(chosen) < todo:
        raise ArgumentError(
            f"cannot prune {todo - len(chosen)} more units of {[b.name for b in blocks][:3]}... "
            f"while keeping {minimum} per block; lower the sparsity or `min_per_layer`"
        )


def units_mask(
    blocks: list[Block],
    keep: Mapping[str, torch.Tensor],
    base: Mapping[str, torch.Tensor | torch.Size],
) -> Mask:
    """``base`` with every entry of each pruned unit set False (whole rows / columns).

    A ``torch.Size`` in ``base`` stands for an all-True tensor of that shape (never allocated
    twice); ``base``'s tensors are not modified. Each tensor is written once (an outer product
    of its kept rows and columns), and ANDed with ``base`` where that is a tensor.
    """
    lines: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for block in blocks:
        drop = (~keep[block.name].cpu()).nonzero().flatten()
        if len(drop):
            for axis in block.axes:
                lines.setdefault(axis.name, []).append((axis.dim, block.entries(drop, axis)))
    out = {}
    for name, value in base.items():
        given = isinstance(value, torch.Tensor)
        shape = value.shape if given else torch.Size(value)
        along = lines.get(name)
        if not along:
            out[name] = value.clone() if given else torch.ones(shape, dtype=torch.bool)
            continue
        kept = [torch.ones(shape[0], dtype=torch.uint8), torch.ones(shape[1], dtype=torch.uint8)]
        for dim, entries in along:
            kept[dim][entries] = 0
        # uint8 0/1 products are valid bools; a bool broadcast along columns is ~30x slower.
        lattice = torch.outer(*kept).view(torch.bool)
        if given:
            lattice = lattice.to(value.device).logical_and_(value)
        out[name] = lattice
    return Mask(out)


def check_count(value: int, what: str) -> int:
    """A head count read from a config or given: a positive int."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ArgumentError(f"{what}: expected a positive int, found {value!r}")
    return value


def head_size(rows: int, parts: int, heads: int, where: str) -> int:
    """Rows per head of an attention block, or a ShapeMismatchError naming the block."""
    if rows % (parts * heads):
        raise ShapeMismatchError(
            f"{where}: {rows} rows do not split into {parts} x {heads} heads; is `num_heads` right?"
        )
    return rows // (parts * heads)


__all__ = [
    "Axis",
    "Block",
    "check_count",
    "head_size",
    "select_units",
    "unit_scores",
    "unit_state",
    "units_mask",
]
