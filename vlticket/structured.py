"""Structured tickets: prune whole attention heads or FFN neurons, as an ordinary Mask.

The mask has whole rows of query/key/value and whole columns of the attention output (or of
the FFN input and output) False, over the adapter's canonical names, so IoU, attach, rewind,
the Hub and TicketSearch take it unchanged; :func:`vlticket.shrink` then removes the pruned
units for a smaller dense model.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ._naming import check_layout
from .adapters.structure import blocks_for, resolve_adapter
from .core import Mask
from .core.mask import record_of
from .core.structured import select_units, unit_scores, unit_state, units_mask
from .errors import ArgumentError
from .registry import AdapterLike


def prune_structured(
    model: nn.Module,
    *,
    granularity: str = "head",
    sparsity: float | None = None,
    amount: float | None = None,
    scope: str = "global",
    score: str | Mapping[str, torch.Tensor] = "l1",
    min_per_layer: int = 1,
    budgets: Mapping[str, float] | None = None,
    mask: Mask | None = None,
    adapter: AdapterLike | str | None = None,
    num_heads: int | None = None,
) -> Mask:
    """Prune the attention heads (or FFN neurons) with the lowest scores, with exact counts.

    Args:
        model: a model whose adapter has a structure table (BERT, LXMERT, ViLT, UNITER, or a
            :class:`~vlticket.adapters.PatternAdapter` with ``structure=``).
        granularity: ``"head"`` or ``"neuron"``.
        sparsity: fraction of all units (of the scope) pruned in the end, counting those ``mask``
            already prunes; or
        amount: fraction of the still-kept units to prune now (IMP's per-round rate).
        scope: ``"global"`` (across all blocks), ``"layer"`` (each attention block / FFN on
            its own) or ``"stream"`` (language, vision and cross streams each on their own).
        score: ``"l1"`` or ``"l2"`` (the group norm of a unit's weights, masked entries count as
            zero), or ``{block name: one score per unit}`` (block names as in
            :func:`vlticket.adapters.blocks_for`).
        min_per_layer: units every block keeps at least (never the last head by default).
        budgets: ``{stream: sparsity}``, e.g. ``{"language": 0.3, "vision": 0.5}``; implies
            ``scope="stream"``, and streams not named use ``sparsity`` (not needed when every
            stream is named); not with ``amount``.
        mask: the current mask (its pruned units stay pruned); all kept if omitted.
        adapter: the model's adapter (detected if omitted).
        num_heads: heads per attention block where the model does not say it.

    Returns:
        A :class:`~vlticket.Mask` over the adapter's prunable names: ``mask`` with the chosen
        units' rows and columns set False.

    Example:
        >>> import transformers, vlticket
        >>> config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2,
        ...     num_attention_heads=4, intermediate_size=64, vocab_size=100)
        >>> bert = transformers.BertModel(config)
        >>> mask = vlticket.prune_structured(bert, granularity="head", sparsity=0.5)
        >>> mask["encoder.layer.0.attention.self.query.weight"].shape
        torch.Size([32, 32])
    """
    adapter = resolve_adapter(model, adapter)
    sites = blocks_for(model, adapter, kind=granularity, num_heads=num_heads)
    blocks = [s.block for s in sites]
    params = adapter.prunable(model)
    fresh = mask is None
    if fresh:
        mask = {n: p.shape for n, p in params.items()}  # all kept, not allocated
    elif not isinstance(mask, Mapping):
        raise ArgumentError(f"`mask`: expected a vlticket.Mask, found {type(mask).__name__}")
    else:
        mask = mask if isinstance(mask, Mask) else Mask(mask)  # names a non-bool tensor
        check_layout(params, mask, what="the mask", where="the model's prunable weights")
    if isinstance(score, str):
        _check_values(blocks, params, score)
        scores = unit_scores(blocks, params, norm=score, mask=None if fresh else mask)
    elif isinstance(score, Mapping):
        unknown = sorted(set(score) - {b.name for b in blocks})
        if unknown:
            raise ArgumentError(
                f"`score`: unknown blocks {unknown[:3]}; the {granularity} blocks are "
                f"{[b.name for b in blocks][:3]}..."
            )
        scores = {k: _as_scores(k, v) for k, v in score.items()}
    else:
        raise ArgumentError(f"`score`: expected 'l1', 'l2' or a mapping, found {score!r}")
    state = {} if fresh else unit_state(blocks, mask)
    keep = select_units(
        blocks,
        scores,
        sparsity=sparsity,
        amount=amount,
        scope=scope,
        min_per_block=min_per_layer,
        budgets=budgets,
        pruned={name: s == 0 for name, s in state.items()},
    )
    # The adapter's record, as prune_magnitude's masks carry: apply/attach then find the
    # canonical names on a model with a head (BertForSequenceClassification ...).
    out = units_mask(blocks, keep, mask)
    out.adapter = record_of(adapter)
    return out


def _check_values(blocks, params: Mapping[str, torch.Tensor], score: str) -> None:
    """A norm needs the weights' values: refuse weights on the meta device by name."""
    for block in blocks:
        for axis in block.axes:
            if params[axis.name].is_meta:
                raise ArgumentError(
                    f"`score`={score!r}: weight {axis.name!r} is on the meta device (no values "
                    "to take a norm of); load the weights first, or pass score={block name: "
                    "one score per unit}"
                )


def _as_scores(block: str, value) -> torch.Tensor:
    """One block's given scores as a float tensor, or an error naming the block."""
    try:
        return torch.as_tensor(value).double()
    except (TypeError, ValueError, RuntimeError) as e:
        raise ArgumentError(
            f"`score`[{block!r}]: expected one number per unit (a tensor or list), found "
            f"{type(value).__name__} ({e})"
        ) from None
