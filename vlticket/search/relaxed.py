"""Choosing the relaxed winning ticket: the sparsest round that keeps p of the dense metric."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ArgumentError

_TOL = 1e-12  # 0.99 * 0.8 is 0.7920000000000001 in floating point; 0.792 still qualifies


@dataclass(frozen=True)
class RelaxedTicket:
    """The result of :func:`relaxed_ticket`.

    Attributes:
        sparsity: the highest sparsity whose (mean) metric is at least ``threshold``.
        mean: mean of the metric there over the seeds given.
        std: sample standard deviation over seeds (0.0 for a single seed).
        dense: the (mean) dense metric the threshold is taken from.
        threshold: ``p * dense``.
        seeds: how many seeds were averaged.
    """

    sparsity: float
    mean: float
    std: float
    dense: float
    threshold: float
    seeds: int


def _metric_of(entry: Mapping[str, Any], metric: str | None) -> float:
    metrics = entry.get("metrics", {})
    if metric is None:
        if len(metrics) != 1:
            raise ArgumentError(
                f"`metric`: the history reports {sorted(metrics)}; name the one to use"
            )
        (metric,) = metrics
    if metric not in metrics:
        raise ArgumentError(f"`metric`={metric!r} is not in round metrics {sorted(metrics)}")
    return float(metrics[metric])


def _history_table(history: Sequence[Mapping[str, Any]], metric: str | None) -> dict[float, float]:
    table = {}
    for entry in history:
        if not isinstance(entry, Mapping) or "sparsity" not in entry:
            raise ArgumentError(
                "`results`: a history is a list of rounds with 'sparsity' and 'metrics', found "
                f"{entry!r}"
            )
        table[float(entry["sparsity"])] = _metric_of(entry, metric)
    return table


def _as_seed_table(results: Any, metric: str | None) -> dict[float, list[float]]:
    """{sparsity: [metric per seed]} from a search, history, list of histories, or table."""
    if hasattr(results, "history"):
        results = results.history
    if isinstance(results, Mapping):
        return {
            float(s): [float(v)] if isinstance(v, (int, float)) else [float(x) for x in v]
            for s, v in results.items()
        }
    if isinstance(results, Sequence) and results:
        first = results[0]
        runs = results if isinstance(first, Sequence) or hasattr(first, "history") else [results]
        tables = [_history_table(getattr(r, "history", r), metric) for r in runs]
        keys = [_key_set(t) for t in tables]
        if any(k != keys[0] for k in keys):
            raise ArgumentError("`results`: the seeds' histories reached different sparsities")
        return {s: [t[s] for t in tables] for s in tables[0]}
    raise ArgumentError(
        "`results`: expected a TicketSearch, a history, a list of histories or a mapping "
        f"sparsity -> metric(s), found {type(results).__name__}"
    )


def _key_set(table: Mapping[float, float]) -> list[float]:
    return sorted(round(s, 9) for s in table)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def relaxed_ticket(
    results: Any,
    *,
    dense: float | Sequence[float] | None = None,
    p: float = 0.99,
    metric: str | None = None,
) -> RelaxedTicket | None:
    """The relaxed winning ticket: the highest sparsity whose metric is ``>= p * dense``.

    Args:
        results: a :class:`~vlticket.TicketSearch`, its ``history``, a list of histories (one
            per seed), or a table ``{sparsity: metric}`` / ``{sparsity: [metric per seed]}``.
        dense: the dense model's metric (one per seed allowed); default: the sparsity-0 row.
        p: the fraction of the dense metric to keep (0.99 in the study).
        metric: which reported metric to use when rounds report several.

    Returns ``None`` when no sparsity qualifies. With several seeds the means are compared.

    Example:
        >>> import vlticket
        >>> t = vlticket.relaxed_ticket({0.0: 0.80, 0.5: 0.795, 0.7: 0.78}, p=0.99)
        >>> t.sparsity, t.threshold
        (0.5, 0.792)
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
        raise ArgumentError(f"`p`: expected a float in (0, 1], found {p!r}")
    table = _as_seed_table(results, metric)
    if dense is None:
        zero = [s for s in table if s == 0.0]
        if not zero:
            raise ArgumentError("`dense`: not given and `results` has no sparsity-0 row")
        dense_values = table[zero[0]]
    elif isinstance(dense, (int, float)):
        dense_values = [float(dense)]
    else:
        dense_values = [float(d) for d in dense]
    dense_mean = _mean_std(dense_values)[0]
    threshold = p * dense_mean
    best = None
    for sparsity in sorted(table):
        mean, std = _mean_std(table[sparsity])
        if mean >= threshold - _TOL * max(1.0, abs(threshold)):
            best = RelaxedTicket(
                sparsity, mean, std, dense_mean, round(threshold, 12), len(table[sparsity])
            )
    return best


__all__ = ["RelaxedTicket", "relaxed_ticket"]
