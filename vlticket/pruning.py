"""Magnitude and random pruning: pure functions from weights (and a current mask) to a new Mask.

How many weights are pruned is exact:

* ``amount=a`` prunes ``round(a * kept)`` of the currently kept weights, with Python's
  round-half-to-even, as ``torch.nn.utils.prune`` does (IMP's 10% per round is ``amount=0.1``);
* ``sparsity=s`` prunes until ``round(s * numel)`` weights are pruned in all.

With ``scope="layer"`` the same rule applies to each tensor on its own. Weights already pruned in
``mask`` stay pruned. Magnitude ties are broken by the order of the names, then by position in
the tensor (row-major): the earlier entry is pruned first. The result is the same on every
machine.

The global threshold is found without concatenating the weights: a strided sample brackets the
k-th smallest magnitude, one counting pass over each tensor (in turn) checks the bracket and
collects the few magnitudes inside it, and a last pass writes the masks. Extra memory is the
output masks plus one tensor's worth of scratch space.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ._named import NameMap, Weights, check_layout, default_prunable, named_tensors
from .errors import ArgumentError, ShapeMismatchError
from .masks import Mask

_SAMPLE_SIZE = 1 << 20
_MIN_COLLECT = 1 << 16
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
    return t.numel() if keep is None else int(keep.count_nonzero())


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


# -- the magnitude order as integer keys ------------------------------------------------------
@dataclass(frozen=True)
class _KeySpace:
    """Magnitudes as the integer bit patterns of non-negative floats: same order, exact ties.

    Pruned (ineligible) entries get the key of +inf, above every finite magnitude.
    """

    float_dtype: torch.dtype
    int_dtype: torch.dtype
    inf: int
    max_finite: int

    @classmethod
    def for_tensors(cls, tensors: Mapping[str, torch.Tensor]) -> _KeySpace:
        wide = any(t.dtype == torch.float64 for t in tensors.values())
        fdt, idt = (torch.float64, torch.int64) if wide else (torch.float32, torch.int32)
        inf = int(torch.tensor(float("inf"), dtype=fdt).view(idt))
        return cls(fdt, idt, inf, inf - 1)

    def keys(self, w: torch.Tensor, keep: torch.Tensor | None, stride: int = 1) -> torch.Tensor:
        """Flat integer keys of ``|w|`` (every ``stride``-th entry); unkept entries get +inf."""
        s = w.detach().reshape(-1)[::stride].abs()
        if s.dtype != self.float_dtype:
            s = s.to(self.float_dtype)
        k = s.view(self.int_dtype)
        if keep is not None:
            k.masked_fill_(~keep.reshape(-1)[::stride], self.inf)
        return k


def _check_finite(name: str, w: torch.Tensor) -> None:
    # A sum is finite iff every entry is (barring overflow, checked exactly below).
    if not torch.isfinite(w.detach().sum()):
        bad = int((~torch.isfinite(w.detach())).sum())
        if bad:
            raise ArgumentError(
                f"`weights[{name!r}]` holds {bad} NaN or inf values; magnitude pruning needs "
                "finite weights"
            )


def _select_smallest(
    tensors: Mapping[str, torch.Tensor],
    keeps: Mapping[str, torch.Tensor],
    k: int,
    space: _KeySpace,
) -> dict[str, torch.Tensor]:
    """New keep-masks that prune the ``k`` smallest eligible magnitudes across ``tensors``."""
    names = list(tensors)
    eligible = sum(
        int(keeps[n].count_nonzero()) if n in keeps else tensors[n].numel() for n in names
    )

    def keys(n: str, stride: int = 1) -> torch.Tensor:
        return space.keys(tensors[n], keeps.get(n), stride)

    def old(n: str) -> torch.Tensor:
        if n in keeps:
            return keeps[n].clone()
        return torch.ones_like(tensors[n], dtype=torch.bool)

    if k <= 0:
        return {n: old(n) for n in names}
    if k >= eligible:
        return {n: torch.zeros_like(tensors[n], dtype=torch.bool) for n in names}

    t, n_below = _kth_key(names, keys, k - 1, eligible, space)

    out: dict[str, torch.Tensor] = {}
    ties_left = k - n_below  # entries equal to t still to prune, in name then index order
    for n in names:
        key = keys(n)
        keep = key >= t  # ties kept unless among the first `ties_left`
        if n in keeps:
            keep &= keeps[n].reshape(-1)
        if ties_left > 0:
            ties = (key == t).nonzero().reshape(-1)[:ties_left]
            keep[ties] = False
            ties_left -= ties.numel()
        out[n] = keep.reshape(tensors[n].shape)
    return out


def _kth_key(names, keys, r: int, eligible: int, space: _KeySpace) -> tuple[int, int]:
    """The key of rank ``r`` (0-based) among eligible entries, and how many keys are below it.

    Keeps a range [lo, hi] known to hold the answer with counts c_lo = #(key < lo) and
    c_hi = #(key <= hi); each pass over the tensors tests a bracket and, when few keys fall in
    it, collects them so the answer is read off a small sort.
    """
    cap = max(_MIN_COLLECT, eligible // 64)
    lo, hi, c_lo, c_hi = 0, space.max_finite, 0, eligible
    b_lo, b_hi = _sample_bracket(names, keys, r, eligible, space)
    while True:
        n_lt, n_in, values = 0, 0, []
        for n in names:
            key = keys(n)
            below = key < b_lo
            n_lt += int(below.count_nonzero())
            inside = (key <= b_hi) & ~below
            n_in += int(inside.count_nonzero())
            if values is not None and n_in <= cap:
                values.append(key[inside])
            else:
                values = None
        n_le = n_lt + n_in
        if r < n_lt:
            hi, c_hi = b_lo - 1, n_lt
        elif r >= n_le:
            lo, c_lo = b_hi + 1, n_le
        else:
            lo, hi, c_lo, c_hi = b_lo, b_hi, n_lt, n_le
            if values is not None:
                v = torch.sort(torch.cat(values)).values
                t = v[r - n_lt]
                return int(t), n_lt + int((v < t).count_nonzero())
            if lo == hi:
                return lo, c_lo
        # Miss, or too many to collect: test the whole known range if small, else its lower half.
        b_lo, b_hi = (lo, hi) if c_hi - c_lo <= cap else (lo, (lo + hi) // 2)


def _sample_bracket(names, keys, r: int, eligible: int, space: _KeySpace) -> tuple[int, int]:
    """A key range that holds rank ``r`` with high probability, from a strided sample."""
    stride = max(1, eligible // _SAMPLE_SIZE)
    parts = [keys(n, stride) for n in names]
    sample = torch.sort(torch.cat(parts)).values
    sample = sample[: int(torch.searchsorted(sample, space.inf))]
    m = sample.numel()
    if m == 0:
        return 0, space.max_finite
    q = (r + 0.5) / eligible
    half = 4.0 * math.sqrt(m * q * (1.0 - q)) + 8.0
    i, j = math.floor(q * m - half), math.ceil(q * m + half)
    b_lo = int(sample[i]) if i > 0 else 0
    b_hi = int(sample[j]) if j < m else space.max_finite
    return b_lo, b_hi


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
    for name, t in tensors.items():
        _check_finite(name, t)
    space = _KeySpace.for_tensors(tensors)
    names = list(tensors)
    numel = [tensors[n].numel() for n in names]
    kept = [_kept_count(tensors[n], keeps.get(n)) for n in names]

    if scope == "layer":
        counts = _counts_to_prune(numel, kept, sparsity, amount, _labels(names))
        pools = [([n], c, e) for n, c, e in zip(names, counts, kept, strict=True)]
    else:
        (count,) = _counts_to_prune([sum(numel)], [sum(kept)], sparsity, amount, ["`weights`"])
        pools = [(names, count, sum(kept))]

    out: dict[str, torch.Tensor] = {}
    for pool, count, eligible in pools:
        sub = {n: tensors[n] for n in pool}
        sub_keeps = {n: keeps[n] for n in pool if n in keeps}
        if largest:
            # Pruning the k largest keeps the (eligible - k) smallest.
            top = _select_smallest(sub, sub_keeps, eligible - count, space)
            for n in pool:
                out[n] = sub_keeps[n] & ~top[n] if n in sub_keeps else ~top[n]
        else:
            out.update(_select_smallest(sub, sub_keeps, count, space))
    return Mask({n: out[n] for n in names})


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
            target = int(like[n].count_nonzero())
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
            chosen = torch.from_numpy(rng.choice(int(keep.count_nonzero()), count, replace=False))
            keep[chosen if eligible is None else eligible[chosen]] = False
        out[n] = keep.reshape(t.shape).to(t.device)
    return Mask(out)


def _split_uniformly(rng: np.random.Generator, kept: list[int], total: int) -> list[int]:
    """Per-tensor counts of a uniformly random ``total``-subset of the pooled kept weights."""
    if total == 0 or not kept:
        return [0] * len(kept)
    return [int(c) for c in rng.multivariate_hypergeometric(np.array(kept, dtype=np.int64), total)]
