"""Magnitude, score and random pruning: pure functions from weights (and a current mask) to a
new Mask.

Counts are exact and ties deterministic (see :mod:`vlticket.core.selection`): ``amount=a``
prunes ``round(a * kept)`` of the kept weights, ``sparsity=s`` leaves ``round(s * numel)``
pruned; ``scope="tensor"`` applies the rule to each tensor on its own.

The global threshold is found without concatenating the weights (see ``_select``): a sparse
sample brackets the k-th smallest score, one chunked, multi-threaded pass writes the masks
and collects the few scores inside the bracket, and only those are corrected. Extra memory
is the output masks plus a few small buffers.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from .._naming import AUTO, AdapterArg, Weights, auto_adapter, check_layout, named_tensors
from ..errors import ArgumentError, ShapeMismatchError
from ..registry import Naming, resolve
from . import nm
from ._passes import count_true
from .mask import Mask, record_of
from .selection import (
    TensorPart,
    check_request,
    check_scope,
    counts_to_prune,
    scope_groups,
    select,
    targets,
)


def _naming(weights: Weights, mask: Mask | None, adapter: AdapterArg) -> Naming | None:
    """The adapter that names the weights: given, recorded by ``mask``, or auto-detected."""
    if adapter is AUTO and isinstance(mask, Mask) and mask.adapter is not None:
        return mask.naming(weights)
    return auto_adapter(weights, adapter)


# -- public API -----------------------------------------------------------------------------
def prune_magnitude(
    weights: Weights,
    *,
    sparsity: float | None = None,
    amount: float | None = None,
    mask: Mask | None = None,
    scope: str = "global",
    largest: bool = False,
    adapter: AdapterArg = AUTO,
    pattern: str | None = None,
) -> Mask:
    """Prune the weights of lowest magnitude; return a new Mask over the same names.

    Args:
        weights: mapping of name to tensor, or an ``nn.Module`` (``adapter.prunable(module)``,
            or every floating-point parameter with two or more dimensions).
        sparsity: target fraction pruned over all given weights, in [0, 1).
        amount: fraction of the currently kept weights to prune now, in [0, 1).
            Give exactly one of ``sparsity`` and ``amount``.
        mask: the current mask; its pruned weights stay pruned. Default: all kept.
        scope: ``"global"`` ranks all tensors together (the study's IMP); ``"tensor"`` prunes
            each tensor on its own; ``"stream"`` and ``"layer"`` prune each of the adapter's
            streams (language / vision / cross) or transformer layers to the same sparsity.
        largest: prune the largest magnitudes instead (the high-magnitude baseline).
        adapter: name the tensors through this adapter (recorded in the mask). By default a
            module of a registered family uses its family's adapter (logged once), and the
            adapter ``mask`` recorded wins; ``None`` prunes every 2-D+ float parameter.
        pattern: ``"N:M"`` semi-structured sparsity instead of a count: in every group of M
            consecutive weights along the last (input) dimension keep the N largest
            magnitudes (see :mod:`vlticket.core.nm`). Give neither ``sparsity`` nor ``amount``.

    Raises:
        ArgumentError: bad fractions or scope, or no weight to prune.

    Example:
        >>> import torch, vlticket
        >>> m = vlticket.prune_magnitude({"w": torch.tensor([0.1, 0.9, -0.2, 0.5])}, sparsity=0.5)
        >>> m["w"].tolist()
        [False, True, False, True]
    """
    if pattern is not None:
        check_scope(scope)  # every scope is the same for N:M, but a typo is still a typo
        return _prune_pattern(weights, pattern, sparsity, amount, mask, largest, adapter)
    check_request(sparsity, amount, scope)
    naming = _naming(weights, mask, adapter)
    tensors, keeps = targets(weights, mask, naming)
    groups = scope_groups(scope, naming, list(tensors))
    parts = {n: TensorPart(t, keeps.get(n), t.numel()) for n, t in tensors.items()}
    out = select(
        parts, sparsity=sparsity, amount=amount, scope=scope, largest=largest, groups=groups
    )
    return Mask(out, adapter=record_of(naming))


def prune_by_score(
    scores: Mapping[str, torch.Tensor],
    *,
    sparsity: float | None = None,
    amount: float | None = None,
    mask: Mask | None = None,
    scope: str = "global",
    largest: bool = False,
    adapter: Naming | str | None = None,
) -> Mask:
    """Prune the entries of lowest score; return a Mask over the scores' names.

    The same exact selection as :func:`prune_magnitude`, for any salience: scores from
    gradients (``|w * grad|``), from a saliency method, or magnitudes computed elsewhere.

    Args:
        scores: name -> finite floating-point tensor (the weight's shape). Signed scores
            (GraSP's) rank exactly by value: float16/bfloat16/float32 exactly, float64 at
            53-bit precision (monotone, near-equal values may tie); see ``_order_keys``.
        sparsity, amount, mask, scope, largest: as in :func:`prune_magnitude`.
        adapter: the adapter whose canonical names key ``scores``: it groups them for
            ``scope="stream"``/``"layer"`` and is recorded in the mask.

    Example:
        >>> import torch, vlticket
        >>> w, g = torch.tensor([0.1, 0.9, -0.2, 0.5]), torch.tensor([4.0, 0.1, 1.0, 1.0])
        >>> vlticket.prune_by_score({"w": (w * g).abs()}, sparsity=0.5)["w"].tolist()
        [True, False, False, True]
    """
    check_request(sparsity, amount, scope)
    naming = resolve(adapter)
    tensors, keeps = targets(named_tensors(scores, param="scores"), mask, None, param="scores")
    groups = scope_groups(scope, naming, list(tensors))
    for name, t in tensors.items():
        if not bool(torch.isfinite(t).all()):
            raise ArgumentError(
                f"`scores[{name!r}]` holds NaN or inf values; scores must be finite"
            )
    if any(bool((t < 0).any()) for t in tensors.values()):
        tensors = _order_keys(tensors)
    parts = {n: TensorPart(t, keeps.get(n), t.numel()) for n, t in tensors.items()}
    out = select(
        parts, sparsity=sparsity, amount=amount, scope=scope, largest=largest, groups=groups
    )
    return Mask(out, adapter=record_of(naming))


def _order_keys(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Signed scores as non-negative float64 keys in the same order, for the selection (which
    ranks magnitudes). Each score's IEEE bits go through the monotone float -> unsigned map
    (negative: ``~bits``; non-negative: ``bits | sign bit``). float16/bfloat16/float32 scores are
    widened to float32 first (exact), so their 32-bit keys fit a float64 exactly and the order
    is exact (-0.0 ranks just below +0.0). If any tensor is float64, all are ranked by 64-bit
    keys rounded to float64's 53 bits: still monotone, but scores closer than that may tie
    (ties prune in name, then row-major order). Costs one float64 copy of the scores.
    """
    wide = any(t.dtype == torch.float64 for t in scores.values())
    fdtype, idtype, bits = (
        (torch.float64, torch.int64, 64) if wide else (torch.float32, torch.int32, 32)
    )
    out = {}
    for name, t in scores.items():
        i = t.detach().to(fdtype).contiguous().view(idtype)
        if wide:  # int64 has no room for unsigned keys: offset the ordered signed ones instead
            flipped = torch.where(i < 0, i ^ ((1 << 63) - 1), i)  # order-preserving signed
            out[name] = flipped.to(torch.float64) + float(1 << 63)
        else:
            u = i.to(torch.int64) & ((1 << bits) - 1)
            key = torch.where(i < 0, ~u & ((1 << bits) - 1), u | (1 << (bits - 1)))
            out[name] = key.to(torch.float64)
    return out


def prune_random(
    weights: Weights,
    *,
    sparsity: float | None = None,
    amount: float | None = None,
    mask: Mask | None = None,
    scope: str = "global",
    like: Mask | None = None,
    seed: int | None = None,
    adapter: AdapterArg = AUTO,
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
    check_scope(scope)
    naming = _naming(weights, mask, adapter)
    tensors, keeps = targets(weights, mask, naming)
    names = list(tensors)
    groups = scope_groups(scope, naming, names)
    numel = [tensors[n].numel() for n in names]
    kept = [count_true(keeps[n]) if n in keeps else tensors[n].numel() for n in names]
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
        check_request(sparsity, amount, scope)
        if scope == "tensor":
            counts = counts_to_prune(
                numel, kept, sparsity, amount, [f"tensor {n!r}" for n in names]
            )
        elif groups:
            at = {n: i for i, n in enumerate(names)}
            counts = [0] * len(names)
            for group in groups:
                idx = [at[n] for n in group]
                g_kept = [kept[i] for i in idx]
                (total,) = counts_to_prune(
                    [sum(numel[i] for i in idx)],
                    [sum(g_kept)],
                    sparsity,
                    amount,
                    [f"group {group[0]!r}"],
                )
                for i, c in zip(idx, _split_uniformly(rng, g_kept, total), strict=True):
                    counts[i] = c
        else:
            (total,) = counts_to_prune([sum(numel)], [sum(kept)], sparsity, amount, ["`weights`"])
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
    return Mask(out, adapter=record_of(naming))


def _prune_pattern(weights, pattern, sparsity, amount, mask, largest, adapter) -> Mask:
    nm.parse_pattern(pattern)
    if sparsity is not None or amount is not None:
        raise ArgumentError(
            f"`pattern={pattern!r}` sets the sparsity: give neither `sparsity` nor `amount`"
        )
    naming = _naming(weights, mask, adapter)
    tensors, keeps = targets(weights, mask, naming)
    nm.check_divides({n: tuple(t.shape) for n, t in tensors.items()}, pattern)
    return Mask(
        {
            n: nm.keep_nm(t, keeps.get(n), pattern, name=n, largest=largest)
            for n, t in tensors.items()
        },
        adapter=record_of(naming),
    )


def _split_uniformly(rng: np.random.Generator, kept: list[int], total: int) -> list[int]:
    """Per-tensor counts of a uniformly random ``total``-subset of the pooled kept weights."""
    if total == 0 or not kept:
        return [0] * len(kept)
    return [int(c) for c in rng.multivariate_hypergeometric(np.array(kept, dtype=np.int64), total)]
