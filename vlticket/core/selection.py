"""Exact selection of the lowest scores across many tensors: the engine behind every pruner.

A *score* is any non-negative floating-point tensor shaped like the weight it ranks: ``|w|`` for
magnitude pruning (the weight itself is passed; its sign is ignored without a copy), or a
precomputed salience such as ``|w * grad|``. :func:`select` prunes the lowest scores with exact
counts and deterministic ties, globally or per tensor, from the tensors this process holds;
``reduce`` combines counts over processes, which is how :mod:`vlticket.distributed` prunes
sharded weights with the same code.

How many entries are pruned is exact:

* ``amount=a`` prunes ``round(a * kept)`` of the currently kept entries, with Python's
  round-half-to-even, as ``torch.nn.utils.prune`` does (IMP's 10% per round is ``amount=0.1``);
* ``sparsity=s`` prunes until ``round(s * numel)`` entries are pruned in all.

With ``scope="tensor"`` the same rule applies to each tensor on its own, with ``scope="stream"``
or ``scope="layer"`` to each of an adapter's groups (``adapter.groups(names, by=scope)``): a
language stream pre-trained and vision/cross streams freshly initialised have magnitudes of
different scales, and a global threshold would prune the fresh ones far more. Entries already pruned
stay pruned. Ties are broken by the order of the names, then by position in the tensor
(row-major): the earlier entry is pruned first, so the result is the same on every machine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .._naming import AdapterArg, Weights, check_layout, prunable_tensors
from ..errors import ArgumentError
from ..registry import Naming
from ._passes import KeySpace, Piece, Reduce, count_true, local_reduce
from ._select import keep_smallest_pruned
from .mask import Mask

SCOPES = ("global", "tensor", "stream", "layer")
GROUPED_SCOPES = ("stream", "layer")  # one pool per group of the adapter's partition


@dataclass(frozen=True)
class TensorPart:
    """What this process holds of one named tensor's scores: all of it, or shard ``shard`` of
    ``shards`` along dim 0 (in row order). ``counted`` is False on replicas another rank counts.
    """

    scores: torch.Tensor
    keep: torch.Tensor | None
    numel: int  # of the whole tensor
    shard: int = 0
    shards: int = 1
    counted: bool = True


def check_request(sparsity: float | None, amount: float | None, scope: str) -> None:
    """Exactly one of ``sparsity`` and ``amount``, each in [0, 1), and a known ``scope``."""
    if (sparsity is None) == (amount is None):
        raise ArgumentError(
            "give exactly one of `sparsity` (target fraction pruned in all) or `amount` "
            f"(fraction of the kept weights to prune now); found sparsity={sparsity!r}, "
            f"amount={amount!r}"
        )
    for param, value in (("sparsity", sparsity), ("amount", amount)):
        if value is not None:
            fraction(value, param)
    check_scope(scope)


def check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise ArgumentError(f"`scope`: expected one of {SCOPES}, found {scope!r}")


def scope_groups(scope: str, adapter: Naming | None, names: Sequence[str]) -> list[list[str]]:
    """The pools of a grouped scope: ``adapter.groups(names, by=scope)``, checked to be a
    partition of ``names``; ``[]`` for "global" and "tensor"."""
    check_scope(scope)
    if scope not in GROUPED_SCOPES:
        return []
    if not callable(getattr(adapter, "groups", None)):
        raise ArgumentError(
            f"`scope`={scope!r} prunes each of an adapter's groups to the same sparsity and needs "
            "an adapter with `groups` (a model of a registered family, or adapter='lxmert' ...); "
            f"found adapter {adapter!r}; use scope='global' or scope='tensor' without one"
        )
    groups = [list(g) for g in adapter.groups(list(names), by=scope).values()]
    flat = [n for g in groups for n in g]
    if sorted(flat) != sorted(names):
        raise ArgumentError(
            f"`scope`={scope!r}: {adapter!r}.groups(by={scope!r}) is not a partition of the names"
        )
    return [g for g in groups if g]


def fraction(value: float, param: str) -> float:
    """``value`` as a float in [0, 1), or an ArgumentError naming ``param``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentError(f"`{param}`: expected a float in [0, 1), found {value!r}")
    if not 0.0 <= float(value) < 1.0:
        raise ArgumentError(f"`{param}`: expected a float in [0, 1), found {value!r}")
    return float(value)


def targets(
    weights: Weights, mask: Mask | None, adapter: AdapterArg, param: str = "weights"
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The floating-point tensors to prune and their current keep-masks (on their devices)."""
    tensors = prunable_tensors(weights, adapter=adapter, param=param)
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise ArgumentError(
                f"`{param}[{name!r}]`: expected a floating-point tensor, found {t.dtype}"
            )
        if t.device.type == "meta":
            raise ArgumentError(
                f"`{param}[{name!r}]` is on the meta device, with no values to rank; "
                "load the weights first"
            )
    if mask is None:
        return tensors, {}
    if not isinstance(mask, Mask):
        raise ArgumentError(f"`mask`: expected a vlticket.Mask, found {type(mask).__name__}")
    check_layout(mask.shapes(), tensors, what="`mask`", where="`weights`")
    return tensors, {n: mask[n].to(t.device) for n, t in tensors.items()}


def counts_to_prune(
    numel: list[int],
    kept: list[int],
    sparsity: float | None,
    amount: float | None,
    labels: list[str],
) -> list[int]:
    """How many more entries to prune, for one pool (lists of length 1) or per tensor."""
    if amount is not None:
        return [round(fraction(amount, "amount") * k) for k in kept]
    s = fraction(sparsity, "sparsity")
    out = []
    for label, n, k in zip(labels, numel, kept, strict=True):
        more = round(s * n) - (n - k)
        if more < 0:
            raise ArgumentError(
                f"`sparsity`={s}: {label} already has sparsity {(n - k) / n:.6f} in `mask`; "
                "pruned weights stay pruned, so ask for at least that (or use `amount`)"
            )
        out.append(more)
    return out


def select(
    parts: Mapping[str, TensorPart],
    *,
    sparsity: float | None,
    amount: float | None,
    scope: str = "global",
    largest: bool = False,
    reduce: Reduce = local_reduce,
    groups: Sequence[Sequence[str]] = (),
) -> dict[str, torch.Tensor]:
    """Keep-masks pruning the lowest scores of ``parts`` (the highest with ``largest``).

    Every rank calls it with the same arguments; counts are combined by ``reduce``. A grouped
    scope ("stream", "layer") prunes each of ``groups`` (see :func:`scope_groups`) on its own.
    """
    check_request(sparsity, amount, scope)
    names = list(parts)
    space = KeySpace.for_dtypes([p.scores.dtype for p in parts.values()])
    numel = [parts[n].numel for n in names]
    local_kept = [
        (parts[n].scores.numel() if parts[n].keep is None else count_true(parts[n].keep))
        if parts[n].counted
        else 0
        for n in names
    ]
    kept = [int(x) for x in reduce(np.array(local_kept, np.int64), "sum")] if names else []

    if scope == "tensor":
        labels = [f"tensor {n!r}" for n in names]
        counts = counts_to_prune(numel, kept, sparsity, amount, labels)
        pools = [([n], c, e) for n, c, e in zip(names, counts, kept, strict=True)]
    elif scope in GROUPED_SCOPES:
        if not groups:
            raise ArgumentError(f"`scope`={scope!r} needs the adapter's groups")
        index = {n: i for i, n in enumerate(names)}
        pools = []
        for group in groups:
            g_numel = sum(numel[index[n]] for n in group)
            g_kept = sum(kept[index[n]] for n in group)
            (c,) = counts_to_prune([g_numel], [g_kept], sparsity, amount, [f"group {group[0]!r}"])
            pools.append((list(group), c, g_kept))
    else:
        (count,) = counts_to_prune([sum(numel)], [sum(kept)], sparsity, amount, ["`weights`"])
        pools = [(names, count, sum(kept))]

    out: dict[str, torch.Tensor] = {}
    for pool, count, eligible in pools:
        pieces, slot = [], 0
        for n in pool:
            p = parts[n]
            pieces.append(Piece(n, p.scores, p.keep, slot + p.shard, p.counted))
            slot += p.shards
        masks = _select_pieces(pieces, count, eligible, largest, slot, space, reduce)
        out.update(zip(pool, masks, strict=True))
    return out


def _select_pieces(
    pieces: list[Piece],
    count: int,
    eligible: int,
    largest: bool,
    n_slots: int,
    space: KeySpace,
    reduce: Reduce,
) -> list[torch.Tensor]:
    """Keep-masks pruning ``count`` of the ``eligible`` entries of ``pieces`` by score."""
    if not largest:
        return keep_smallest_pruned(pieces, count, n_slots, space, reduce)
    # Pruning the k largest keeps the (eligible - k) smallest.
    top = keep_smallest_pruned(pieces, eligible - count, n_slots, space, reduce)
    out = []
    for p, t in zip(pieces, top, strict=True):
        t.logical_not_()
        if p.keep is not None:
            t.logical_and_(p.keep.reshape(t.shape))
        out.append(t)
    return out


__all__ = [
    "GROUPED_SCOPES",
    "SCOPES",
    "Reduce",
    "TensorPart",
    "check_request",
    "local_reduce",
    "scope_groups",
    "select",
    "targets",
]
