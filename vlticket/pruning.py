"""Magnitude and random pruning: pure functions from weights (and a current mask) to a new Mask.

How many weights are pruned is exact:

* ``amount=a`` prunes ``round(a * kept)`` of the currently kept weights, with Python's
  round-half-to-even, as ``torch.nn.utils.prune`` does (IMP's 10% per round is ``amount=0.1``);
* ``sparsity=s`` prunes until ``round(s * numel)`` weights are pruned in all.

With ``scope="layer"`` the same rule applies to each tensor on its own. Weights already pruned in
``mask`` stay pruned. Magnitude ties are broken by the order of the names, then by position in
the tensor (row-major): the earlier entry is pruned first. The result is the same on every
machine.

The global threshold is found without concatenating the weights (see ``_select``): a sparse
sample brackets the k-th smallest magnitude, one chunked, multi-threaded pass writes the masks
and collects the few magnitudes inside the bracket, and only those are corrected. Extra memory
is the output masks plus a few small buffers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ._named import NameMap, Weights, check_layout, default_prunable, named_tensors
from ._passes import KeySpace, Piece, Reduce, count_true, local_reduce
from ._select import keep_smallest_pruned
from .errors import ArgumentError, ShapeMismatchError
from .masks import Mask

_SAMPLE_SIZE = 1 << 18  # magnitudes sampled to bracket the threshold
_MIN_COLLECT = 1 << 16  # entries a pass may collect near the threshold, at least
_SCOPES = ("global", "layer")


# -- arguments ------------------------------------------------------------------------------
def _fraction(value: float, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentError(f"`{param}`: expected a float in [0, 1), found {value!r}")
    if not 0.0 <= float(value) < 1.0:
        raise ArgumentError(f"`{param}`: expected a float in [0, 1), found {value!r}")
    return float(value)


def _targets(
    weights: Weights, mask: Mask | None, adapter: NameMap | None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The tensors to prune and their current keep-masks (on the tensors' devices)."""
    if adapter is None and isinstance(weights, nn.Module):
        tensors = default_prunable(weights)
    else:
        tensors = named_tensors(weights, adapter=adapter)
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise ArgumentError(
                f"`weights[{name!r}]`: expected a floating-point tensor, found {t.dtype}"
            )
    if mask is None:
        return tensors, {}
    if not isinstance(mask, Mask):
        raise ArgumentError(f"`mask`: expected a vlticket.Mask, found {type(mask).__name__}")
    check_layout(mask.shapes(), tensors, what="`mask`", where="`weights`")
    return tensors, {n: mask[n].to(t.device) for n, t in tensors.items()}


def _counts_to_prune(
    numel: list[int],
    kept: list[int],
    sparsity: float | None,
    amount: float | None,
    names: list[str],
) -> list[int]:
    """How many more weights to prune, for one pool (lists of length 1) or per tensor."""
    if amount is not None:
        return [round(_fraction(amount, "amount") * k) for k in kept]
    s = _fraction(sparsity, "sparsity")
    out = []
    for name, n, k in zip(names, numel, kept, strict=True):
        more = round(s * n) - (n - k)
        if more < 0:
            raise ArgumentError(
                f"`sparsity`={s}: {name} already has sparsity {(n - k) / n:.6f} in `mask`; "
                "pruned weights stay pruned, so ask for at least that (or use `amount`)"
            )
        out.append(more)
    return out


def _kept_count(t: torch.Tensor, keep: torch.Tensor | None) -> int:
    return t.numel() if keep is None else count_true(keep)


def _labels(names: list[str]) -> list[str]:
    return [f"tensor {n!r}" for n in names]


def _exactly_one(sparsity: float | None, amount: float | None) -> None:
    if (sparsity is None) == (amount is None):
        raise ArgumentError(
            "give exactly one of `sparsity` (target fraction pruned in all) or `amount` "
            f"(fraction of the kept weights to prune now); found sparsity={sparsity!r}, "
            f"amount={amount!r}"
        )


def _check_scope(scope: str) -> None:
    if scope not in _SCOPES:
        raise ArgumentError(f"`scope`: expected one of {_SCOPES}, found {scope!r}")


# -- magnitude selection ---------------------------------------------------------------------
@dataclass(frozen=True)
class LocalPart:
    """What this process holds of one named tensor: all of it, or shard ``shard`` of ``shards``
    along dim 0 (in row order). ``counted`` is False on replicas another rank counts."""

    weight: torch.Tensor
    keep: torch.Tensor | None
    numel: int  # of the whole tensor
    shard: int = 0
    shards: int = 1
    counted: bool = True


def magnitude_masks(
    parts: Mapping[str, LocalPart],
    *,
    sparsity: float | None,
    amount: float | None,
    scope: str,
    largest: bool,
    reduce: Reduce = local_reduce,
) -> dict[str, torch.Tensor]:
    """Local keep-masks of :func:`prune_magnitude`; counts are combined over ranks by ``reduce``."""
    names = list(parts)
    space = KeySpace.for_dtypes([p.weight.dtype for p in parts.values()])
    numel = [parts[n].numel for n in names]
    local_kept = [
        _kept_count(parts[n].weight, parts[n].keep) if parts[n].counted else 0 for n in names
    ]
    kept = [int(x) for x in reduce(np.array(local_kept, np.int64), "sum")] if names else []

    if scope == "layer":
        counts = _counts_to_prune(numel, kept, sparsity, amount, _labels(names))
        pools = [([n], c, e) for n, c, e in zip(names, counts, kept, strict=True)]
    else:
        (count,) = _counts_to_prune([sum(numel)], [sum(kept)], sparsity, amount, ["`weights`"])
        pools = [(names, count, sum(kept))]

    out: dict[str, torch.Tensor] = {}
    for pool, count, eligible in pools:
        pieces, slot = [], 0
        for n in pool:
            p = parts[n]
            pieces.append(Piece(n, p.weight, p.keep, slot + p.shard, p.counted))
            slot += p.shards
        masks = select_masks(
            pieces, count, eligible, largest=largest, n_slots=slot, space=space, reduce=reduce
        )
        out.update(zip(pool, masks, strict=True))
    return out


def select_masks(
    pieces: list[Piece],
    count: int,
    eligible: int,
    *,
    largest: bool,
    n_slots: int,
    space: KeySpace,
    reduce: Reduce = local_reduce,
) -> list[torch.Tensor]:
    """Keep-masks pruning ``count`` of the ``eligible`` weights of ``pieces`` by magnitude."""

    def smallest(k: int) -> list[torch.Tensor]:
        return keep_smallest_pruned(
            pieces, k, n_slots, space, reduce, sample=_SAMPLE_SIZE, min_collect=_MIN_COLLECT
        )

    if not largest:
        return smallest(count)
    # Pruning the k largest keeps the (eligible - k) smallest.
    top = smallest(eligible - count)
    out = []
    for p, t in zip(pieces, top, strict=True):
        t.logical_not_()
        if p.keep is not None:
            t.logical_and_(p.keep.reshape(t.shape))
        out.append(t)
    return out


# -- public API -----------------------------------------------------------------------------
def prune_magnitude(
    weights: Weights,
    *,
    sparsity: float | None = None,
    amount: float | None = None,
    mask: Mask | None = None,
    scope: str = "global",
    largest: bool = False,
    adapter: NameMap | None = None,
) -> Mask:
    """Prune the weights of lowest magnitude; return a new Mask over the same names.

    Args:
        weights: mapping of name to tensor, or an ``nn.Module`` (every floating-point parameter
            with two or more dimensions, or ``adapter.prunable(module)``).
        sparsity: target fraction pruned over all given weights, in [0, 1).
        amount: fraction of the currently kept weights to prune now, in [0, 1).
            Give exactly one of ``sparsity`` and ``amount``.
        mask: the current mask; its pruned weights stay pruned. Default: all kept.
        scope: ``"global"`` ranks all tensors together (the study's IMP); ``"layer"`` prunes
            each tensor on its own.
        largest: prune the largest magnitudes instead (the high-magnitude baseline).
        adapter: name the tensors through this adapter.

    Example:
        >>> import torch, vlticket
        >>> m = vlticket.prune_magnitude({"w": torch.tensor([0.1, 0.9, -0.2, 0.5])}, sparsity=0.5)
        >>> m["w"].tolist()
        [False, True, False, True]
    """
    _exactly_one(sparsity, amount)
    _check_scope(scope)
    tensors, keeps = _targets(weights, mask, adapter)
    parts = {n: LocalPart(t, keeps.get(n), t.numel()) for n, t in tensors.items()}
    out = magnitude_masks(parts, sparsity=sparsity, amount=amount, scope=scope, largest=largest)
    return Mask(out)


def prune_random(
    weights: Weights,
    *,
    sparsity: float | None = None,
    amount: float | None = None,
    mask: Mask | None = None,
    scope: str = "global",
    like: Mask | None = None,
    seed: int | None = None,
    adapter: NameMap | None = None,
) -> Mask:
    """Prune weights uniformly at random: the study's random-pruning baseline.

    Arguments as in :func:`prune_magnitude`, plus:

    Args:
        like: reproduce this mask's kept count in every tensor (random pruning "matched per
            tensor"); then give neither ``sparsity`` nor ``amount``.
        seed: seed for NumPy's PCG64 generator; the same seed gives the same mask.

    With ``scope="global"`` the pruned set is a uniformly random subset of the kept weights
    (per-tensor counts follow the multivariate hypergeometric law).

    Example:
        >>> import torch, vlticket
        >>> m = vlticket.prune_random({"w": torch.ones(10, 10)}, sparsity=0.3, seed=0)
        >>> m.num_pruned
        30
    """
    _check_scope(scope)
    tensors, keeps = _targets(weights, mask, adapter)
    names = list(tensors)
    numel = [tensors[n].numel() for n in names]
    kept = [_kept_count(tensors[n], keeps.get(n)) for n in names]
    rng = np.random.default_rng(seed)

    if like is not None:
        if sparsity is not None or amount is not None:
            raise ArgumentError("`like` sets the counts: give neither `sparsity` nor `amount`")
        if not isinstance(like, Mask):
            raise ArgumentError(f"`like`: expected a vlticket.Mask, found {type(like).__name__}")
        check_layout(like.shapes(), tensors, what="`like`", where="`weights`")
        counts = []
        for n, e in zip(names, kept, strict=True):
            target = count_true(like[n])
            if target > e:
                raise ShapeMismatchError(
                    f"tensor {n!r}: `like` keeps {target} weights but only {e} are kept in `mask`"
                )
            counts.append(e - target)
    else:
        _exactly_one(sparsity, amount)
        if scope == "layer":
            counts = _counts_to_prune(
                numel, kept, sparsity, amount, [f"tensor {n!r}" for n in names]
            )
        else:
            (total,) = _counts_to_prune([sum(numel)], [sum(kept)], sparsity, amount, ["`weights`"])
            counts = _split_uniformly(rng, kept, total)

    out = {}
    for n, count in zip(names, counts, strict=True):
        t = tensors[n]
        keep = (
            keeps[n].detach().to("cpu").reshape(-1).clone()
            if n in keeps
            else torch.ones(t.numel(), dtype=torch.bool)
        )
        if count:
            eligible = keep.nonzero().reshape(-1) if n in keeps else None
            chosen = torch.from_numpy(rng.choice(count_true(keep), count, replace=False))
            keep[chosen if eligible is None else eligible[chosen]] = False
        out[n] = keep.reshape(t.shape).to(t.device)
    return Mask(out)


def _split_uniformly(rng: np.random.Generator, kept: list[int], total: int) -> list[int]:
    """Per-tensor counts of a uniformly random ``total``-subset of the pooled kept weights."""
    if total == 0 or not kept:
        return [0] * len(kept)
    return [int(c) for c in rng.multivariate_hypergeometric(np.array(kept, dtype=np.int64), total)]
