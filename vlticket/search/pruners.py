"""What one IMP round prunes: weights by magnitude, whole heads / neurons, or N:M groups.

A pruner holds the search's plan (``schedule``: what is pruned after each round) and turns the
trained round's mask into the next one with the library's public pruning functions. It reads
the weights and returns a new :class:`~vlticket.Mask`; it never writes to the model.

- ``granularity="weight"``: global (or per-scope) magnitude, ``schedule`` counts weights.
- ``granularity="head" | "neuron" | "head+neuron"``: :func:`vlticket.prune_structured` by group
  norm; ``schedule`` holds per round ``{kind: units pruned}``, each kind on its own IMP schedule.
- ``pattern="N:M"``: each round lowers the weights kept per group of M, ``schedule`` counts weights.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..adapters import blocks_for
from ..core import Mask, prune_magnitude
from ..core.nm import check_divides, parse_pattern
from ..core.selection import check_scope
from ..core.structured import SCOPES as UNIT_SCOPES
from ..core.structured import unit_state
from ..errors import ArgumentError
from ..hub.config import GRANULARITIES  # what a ticket config may record
from ..registry import Naming
from ..structured import prune_structured


def prune_schedule(numel: int, sparsity: float, amount: float, one_shot: bool = False) -> list[int]:
    """Number of pruned weights in each round: 0 first, then ``amount`` of the kept ones per
    round (rounded half to even, as :func:`~vlticket.prune_magnitude` does), the last step
    clipped to exactly ``round(sparsity * numel)``.

    Example:
        >>> prune_schedule(100, sparsity=0.3, amount=0.1)
        [0, 10, 19, 27, 30]
    """
    target = round(sparsity * numel)
    if one_shot:
        return [0, target]
    counts = [0]
    while counts[-1] < target:
        step = round(amount * (numel - counts[-1]))
        counts.append(target if step == 0 else min(target, counts[-1] + step))
    return counts


def pattern_schedule(pattern: str, amount: float, one_shot: bool = False) -> list[int]:
    """Weights pruned per group of M in each round of an N:M search: each round prunes
    ``round(amount * kept)`` of the group's kept weights, at least one, until N are left.

    Example:
        >>> pattern_schedule("2:4", amount=0.1), pattern_schedule("2:8", amount=0.25)
        ([0, 1, 2], [0, 2, 4, 5, 6])
    """
    n, m = parse_pattern(pattern)
    if one_shot:
        return [0, m - n]
    counts = [0]
    while counts[-1] < m - n:
        step = max(1, round(amount * (m - counts[-1])))
        counts.append(min(m - n, counts[-1] + step))
    return counts


def check_kind(
    granularity: Any, min_per_layer: Any, pattern: Any, sparsity: Any, scope: Any
) -> None:
    """Refuse settings of the round's kind that contradict each other, before any work."""
    if granularity not in GRANULARITIES:
        raise ArgumentError(
            f"`granularity`: expected one of {GRANULARITIES}, found {granularity!r}"
        )
    if min_per_layer is not None:
        if granularity == "weight":
            raise ArgumentError(
                "`min_per_layer` applies to heads and neurons: give granularity='head', "
                "'neuron' or 'head+neuron', or leave it out"
            )
        if (
            isinstance(min_per_layer, bool)
            or not isinstance(min_per_layer, int)
            or min_per_layer < 0
        ):
            raise ArgumentError(f"`min_per_layer`: expected an int >= 0, found {min_per_layer!r}")
    if pattern is None:
        return
    parse_pattern(pattern)
    if granularity != "weight":
        raise ArgumentError(
            f"`pattern`={pattern!r} prunes single weights in groups of M; it cannot be combined "
            f"with granularity={granularity!r}"
        )
    if sparsity is not None:
        raise ArgumentError(
            f"`pattern`={pattern!r} sets the sparsity (1 - N/M): give no `sparsity`, found "
            f"{sparsity!r}"
        )
    if scope != "global":
        raise ArgumentError(
            f"`scope`={scope!r}: `pattern` prunes within each group of M weights, so no scope "
            "applies; leave it out"
        )


class WeightPruner:
    """Magnitude pruning of single weights (the study's IMP)."""

    def __init__(
        self, ones: Mask, adapter: Naming | None, sparsity, amount, one_shot, scope
    ) -> None:
        check_scope(scope)
        self.adapter, self.scope = adapter, scope
        self.numel = ones.numel
        self.schedule: list[Any] = prune_schedule(self.numel, sparsity, amount, one_shot)

    def prune(self, model: nn.Module, mask: Mask, index: int) -> Mask:
        """The mask of round ``index + 1``, from ``mask`` (round ``index``'s) and the weights."""
        return prune_magnitude(
            model,
            sparsity=self.schedule[index + 1] / self.numel,
            mask=mask,
            scope=self.scope,
            adapter=self.adapter,
        )

    def describe(self, mask: Mask, index: int) -> dict[str, Any]:
        """What the history records of round ``index`` beyond its weight sparsity."""
        return {}


class PatternPruner:
    """N:M pruning, gradual: round ``i`` keeps at most ``M - schedule_i`` of each M weights."""

    def __init__(self, ones: Mask, adapter: Naming | None, pattern: str, amount, one_shot) -> None:
        n, self.m = parse_pattern(pattern)
        self.sparsity = 1.0 - n / self.m
        check_divides(ones.shapes(), pattern)  # every tensor tiles before any training
        self.adapter = adapter
        self.per_group = pattern_schedule(pattern, amount, one_shot)
        groups = ones.numel // self.m
        self.schedule: list[Any] = [p * groups for p in self.per_group]

    def pattern(self, index: int) -> str:
        """Round ``index``'s pattern: ``"4:4"`` for the dense round 0 of a 2:4 search."""
        return f"{self.m - self.per_group[index]}:{self.m}"

    def prune(self, model: nn.Module, mask: Mask, index: int) -> Mask:
        return prune_magnitude(
            model, pattern=self.pattern(index + 1), mask=mask, adapter=self.adapter
        )

    def describe(self, mask: Mask, index: int) -> dict[str, Any]:
        return {"pattern": self.pattern(index)}


class StructuredPruner:
    """Whole attention heads and/or FFN neurons by group norm, each kind on its own schedule.

    ``sparsity`` is the fraction of each kind's units removed in the end; ``scope`` is
    :func:`vlticket.prune_structured`'s (``"global"``, ``"layer"`` or ``"stream"``).
    """

    def __init__(
        self,
        model: nn.Module,
        ones: Mask,
        adapter: Naming | None,
        granularity: str,
        sparsity,
        amount,
        one_shot,
        scope,
        min_per_layer: int,
        num_heads: int | None = None,
    ) -> None:
        if scope not in UNIT_SCOPES:
            raise ArgumentError(
                f"`scope`: granularity={granularity!r} ranks units in one of {UNIT_SCOPES}, "
                f"found {scope!r}"
            )
        if adapter is None:
            raise ArgumentError(
                f"`granularity`={granularity!r} needs an adapter that says where heads and "
                "neurons are (BERT, LXMERT, ViLT, UNITER, or a PatternAdapter with structure=); "
                "this search has adapter=None"
            )
        self.kinds = tuple(granularity.split("+"))
        self.adapter, self.scope, self.record = adapter, scope, ones.adapter
        self.sparsity, self.min_per_layer, self.num_heads = sparsity, min_per_layer, num_heads
        self.blocks = {
            k: [s.block for s in blocks_for(model, adapter, kind=k, num_heads=num_heads)]
            for k in self.kinds
        }
        self.totals = {k: sum(b.count for b in blocks) for k, blocks in self.blocks.items()}
        plans = {
            k: prune_schedule(total, sparsity, amount, one_shot) for k, total in self.totals.items()
        }
        for kind, plan in plans.items():
            if plan[-1] == 0:
                raise ArgumentError(
                    f"`sparsity`={sparsity!r} of the model's {self.totals[kind]} {kind}s prunes "
                    f"none of them (round({sparsity} * {self.totals[kind]}) = 0); raise it"
                )
        rounds = max(len(p) for p in plans.values())
        pad = {k: p + [p[-1]] * (rounds - len(p)) for k, p in plans.items()}
        self.schedule: list[Any] = [{k: pad[k][i] for k in self.kinds} for i in range(rounds)]
        for kind in self.kinds:  # the target is reachable with min_per_layer kept per block
            prune_structured(
                model,
                granularity=kind,
                sparsity=sparsity,
                scope=scope,
                min_per_layer=min_per_layer,
                adapter=adapter,
                num_heads=num_heads,
            )

    def prune(self, model: nn.Module, mask: Mask, index: int) -> Mask:
        out: Mask = mask
        for kind in self.kinds:
            count = self.schedule[index + 1][kind]
            at_target = count == self.schedule[-1][kind]
            out = prune_structured(
                model,
                granularity=kind,
                # the exact target at the end: per-layer rounding then matches prune_structured's
                sparsity=self.sparsity if at_target else count / self.totals[kind],
                scope=self.scope,
                min_per_layer=self.min_per_layer,
                mask=out,
                adapter=self.adapter,
                num_heads=self.num_heads,
            )
        return Mask(dict(out), adapter=self.record)

    def pruned_units(self, mask: Mask) -> dict[str, int]:
        """How many heads / neurons ``mask`` prunes whole, per kind."""
        out = {}
        for kind, blocks in self.blocks.items():
            states = unit_state(blocks, mask)
            out[kind] = sum(int((s == 0).sum()) for s in states.values())
        return out

    def describe(self, mask: Mask, index: int) -> dict[str, Any]:
        pruned = self.pruned_units(mask)
        return {"units": {k: pruned[k] / self.totals[k] for k in self.kinds}}


__all__ = [
    "GRANULARITIES",
    "PatternPruner",
    "StructuredPruner",
    "WeightPruner",
    "check_kind",
    "pattern_schedule",
    "prune_schedule",
]
