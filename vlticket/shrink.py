"""Shrink: remove pruned heads and neurons for real, leaving a smaller dense model.

At 50-70% sparsity no CPU kernel runs an unstructured matrix faster than a dense one; whole
heads and neurons can be removed, which is faster everywhere. :func:`shrink` slices each block's
``nn.Linear`` weights and biases in place and sets the attention modules' head counts, so the
model runs with its own (transformers) code, eager and SDPA. The kept units per block are
recorded in ``model.config.vlticket_shrunk``; :func:`load_shrunk` rebuilds such a model from
``save_pretrained`` output.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from collections.abc import Mapping

import torch
from safetensors.torch import load_file
from torch import nn

from ._naming import check_layout, unwrap
from .adapters.structure import Site, blocks_for, resolve_adapter
from .core import Mask
from .core.structured import unit_state
from .errors import ArgumentError, FileFormatError, ShapeMismatchError
from .registry import AdapterLike

logger = logging.getLogger(__name__)

CONFIG_FIELD = "vlticket_shrunk"
_ALL_HEAD_SIZES = ("all_head_size", "head_size")  # LXMERT's `head_size` is all heads together
_HEAD_COUNTS = ("num_attention_heads", "num_heads")


def shrink(
    model: nn.Module,
    mask: Mapping[str, torch.Tensor],
    *,
    adapter: AdapterLike | str | None = None,
    keep_partial: bool = False,
    num_heads: int | None = None,
    align: int = 8,
) -> dict[str, int]:
    """Remove the heads and neurons ``mask`` prunes whole, in place.

    Every argument is checked before the model changes. Removing a unit is exact: a unit
    whose output columns are zero adds nothing, so the shrunk model computes what the masked
    dense model computes (biases of removed units go with them).

    Args:
        model: the dense model the mask was found on (masked or not: kept weights are copied
            as they are, so apply the mask first for the masked model's function).
        mask: a :class:`~vlticket.Mask` over the adapter's prunable names, e.g. from
            :func:`vlticket.prune_structured`.
        adapter: the model's adapter (detected if omitted); it must have a structure table.
        keep_partial: keep heads and neurons the mask prunes only in part (dense) instead of
            refusing the mask.
        num_heads: heads per attention block where the model does not say it.
        align: keep each FFN's neuron count a multiple of ``align`` by keeping up to
            ``align - 1`` of its pruned neurons (the lowest-numbered) as zeros, which is exact:
            a matrix product whose width is not a multiple of 8 runs up to 1.4x slower on the
            CPU (BERT-base's FFN input at 1843 vs 1848 neurons). Zero neurons stay zero in
            training when the activation maps 0 to 0 (ReLU, GELU, SiLU). ``1`` removes every
            pruned neuron. Head counts are not padded (head sizes are multiples of 8 already).

    Returns:
        ``{block name: units removed}`` for the blocks that changed.

    Example:
        >>> import transformers, vlticket
        >>> bert = transformers.BertModel(transformers.BertConfig(hidden_size=32,
        ...     num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100))
        >>> mask = vlticket.prune_structured(bert, granularity="neuron", sparsity=0.25)
        >>> vlticket.shrink(bert, mask)["encoder.layer.0.intermediate.dense"] >= 0
        True
    """
    if isinstance(align, bool) or not isinstance(align, int) or align < 1:
        raise ArgumentError(f"`align`: expected an int >= 1, found {align!r}")
    adapter = resolve_adapter(model, adapter)
    sites = blocks_for(model, adapter, num_heads=num_heads)
    if not isinstance(mask, Mapping):
        raise ArgumentError(f"`mask`: expected a vlticket.Mask, found {type(mask).__name__}")
    mask = mask if isinstance(mask, Mask) else Mask(mask)  # names a non-bool tensor
    params = adapter.prunable(model)
    check_layout(params, mask, what="the mask", where="the model's prunable weights (shrunk?)")
    del params  # each old weight is freed as soon as its sliced copy replaces it
    states = unit_state([s.block for s in sites], mask)
    plans = []
    for site in sites:
        state = states[site.block.name]
        partial = (state == -1).nonzero().flatten().tolist()
        if partial and not keep_partial:
            raise ArgumentError(
                f"`mask` prunes {site.block.kind}s {partial[:8]} of {site.block.name!r} only in "
                "part; shrink removes whole heads and neurons (prune with "
                "vlticket.prune_structured, or pass keep_partial=True to keep them dense)"
            )
        keep = state != 0
        if keep.all():
            continue
        zeros = _padding(keep, align if site.block.kind == "neuron" else 1)
        keep[zeros] = True
        removed = site.block.count - int(keep.sum())
        if site.block.kind == "head" and not keep.any():
            raise ArgumentError(
                f"`mask` prunes every head of {site.block.name!r}; an attention block needs at "
                "least one head (prune with min_per_layer>=1)"
            )
        if site.block.kind == "head" and not site.rule.resizable:
            raise ArgumentError(
                f"{site.block.name!r}: this model's attention code derives the head size from "
                "the hidden size (and reshapes its output to it), so it cannot run with fewer "
                "heads; convert the model and the mask (original ViLT: load "
                "vlticket.adapters.vilt.state_dict_to_transformers(state_dict) into a "
                "transformers Vilt model, shrink it with vilt.to_transformers(mask)) or remove "
                "neurons only"
            )
        plans.append((site, keep, zeros, removed))
    for site, keep, zeros, _ in plans:
        _slice(model, site, keep, zeros)
    _record(model, {s.block.name: int(k.sum()) for s, k, _, r in plans if r})
    return {site.block.name: removed for site, _, _, removed in plans if removed}


def _padding(keep: torch.Tensor, align: int) -> torch.Tensor:
    """The pruned units to keep (as zeros) so that the kept count is a multiple of ``align``
    (or every unit): the lowest-numbered ones."""
    short = -int(keep.sum()) % align
    return (~keep).nonzero().flatten()[:short]


@torch.no_grad()
def _slice(
    model: nn.Module, site: Site, keep: torch.Tensor, zeros: torch.Tensor | None = None
) -> None:
    """Keep ``keep``'s units of ``site`` (one ``index_select`` into new storage per tensor) and
    zero the units in ``zeros`` (kept only for alignment)."""
    inner = unwrap(model)
    block = site.block
    kept_units = keep.nonzero().flatten()
    smaller = dataclasses.replace(block, count=len(kept_units))
    padded = None if zeros is None else torch.searchsorted(kept_units, zeros)  # new positions
    for axis in block.axes:
        module = inner.get_submodule(site.weights[axis.name].rsplit(".", 1)[0])
        index = block.entries(kept_units, axis).to(module.weight.device)
        tensors = [("weight", axis.dim)]
        if axis.dim == 0 and getattr(module, "bias", None) is not None:
            tensors.append(("bias", 0))
        for name, dim in tensors:
            kept = getattr(module, name).index_select(dim, index)
            if padded is not None and len(padded):
                kept.index_fill_(dim, smaller.entries(padded, axis).to(kept.device), 0)
            _replace(module, name, kept)
        if isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
    if site.heads_module is not None:
        attention = inner.get_submodule(site.heads_module)
        kept = len(kept_units)
        for attr in _HEAD_COUNTS:
            if getattr(attention, attr, None) == block.count:
                setattr(attention, attr, kept)
        for attr in _ALL_HEAD_SIZES:
            if getattr(attention, attr, None) == block.count * block.size:
                setattr(attention, attr, kept * block.size)


def _replace(module: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(value.detach().contiguous(), old.requires_grad))


def _record(model: nn.Module, kept: dict[str, int]) -> None:
    inner = unwrap(model)
    shared = getattr(inner, "config", None)
    if shared is None or not kept:
        return
    # Models built from one config object share it (BertModel(config) twice): give this model
    # its own copy, as from_pretrained does, so that its record never reaches the other model.
    copies: dict[int, object] = {}
    config = copy.deepcopy(shared, copies)
    for module in inner.modules():
        old = getattr(module, "config", None)
        if old is not None and type(copies.get(id(old))) is type(old):
            module.config = copies[id(old)]
    record = dict(getattr(config, CONFIG_FIELD, None) or {})
    record.update(kept)
    setattr(config, CONFIG_FIELD, record)


def load_shrunk(model_class, path: str | os.PathLike, **config_kwargs) -> nn.Module:
    """Load a shrunk model that ``save_pretrained`` wrote: build it from its config, shrink each
    block to the units the config records, then load the weights.

    ``model_class.from_pretrained`` cannot do this: the config keeps the dense head and neuron
    counts, and layers of a shrunk model differ from one another.

    Args:
        model_class: the transformers class saved, e.g. ``transformers.BertModel``.
        path: the folder ``save_pretrained`` wrote (``config.json`` and ``*.safetensors``).
        config_kwargs: passed to ``model_class.config_class.from_pretrained``.

    Example:
        >>> bert.save_pretrained("small")                               # doctest: +SKIP
        >>> again = vlticket.load_shrunk(transformers.BertModel, "small")  # doctest: +SKIP
    """
    path = os.fspath(path)
    config = model_class.config_class.from_pretrained(path, **config_kwargs)
    record = getattr(config, CONFIG_FIELD, None)
    if not isinstance(record, Mapping):
        raise FileFormatError(
            f"{path}/config.json has no `{CONFIG_FIELD}` record; it was not saved from a "
            "shrunk model, so load it with from_pretrained"
        )
    model = model_class(config)
    dtype = _saved_dtype(config)
    if dtype is not None:  # as from_pretrained: the saved precision, not the default float32
        model.to(dtype)
    sites = {s.block.name: s for s in blocks_for(model)}
    unknown = sorted(set(record) - set(sites))
    if unknown:
        raise FileFormatError(f"{path}: `{CONFIG_FIELD}` names unknown blocks {unknown[:3]}")
    for name, kept in record.items():
        site = sites[name]
        least = 1 if site.block.kind == "head" else 0  # shrink never removes a block's last head
        if (
            isinstance(kept, bool)
            or not isinstance(kept, int)
            or not least <= kept <= site.block.count
        ):
            raise FileFormatError(
                f"{path}: `{CONFIG_FIELD}[{name!r}]`: expected {least}..{site.block.count}, "
                f"found {kept!r}"
            )
        keep = torch.arange(site.block.count) < kept
        _slice(model, site, keep)
    model.load_state_dict(_state_dict(path, model), strict=False)
    return model


def _saved_dtype(config) -> torch.dtype | None:
    """The floating dtype ``save_pretrained`` recorded in the config (``dtype``), if any."""
    value = getattr(config, "dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value, None)
    return value if isinstance(value, torch.dtype) and value.is_floating_point else None


def _state_dict(path: str, model: nn.Module) -> dict[str, torch.Tensor]:
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for file in files:
        full = os.path.join(path, file)
        if not os.path.exists(full):
            raise FileFormatError(f"{full}: missing; expected save_pretrained's safetensors")
        state.update(load_file(full))
    own = model.state_dict()
    missing = sorted(set(own) - set(state) - _tied(model))
    if missing:
        raise FileFormatError(f"{path}: the saved weights lack {missing[:3]}")
    for name, t in state.items():
        if name in own and own[name].shape != t.shape:
            raise ShapeMismatchError(
                f"{path}: tensor {name!r} has shape {tuple(t.shape)}, the shrunk model "
                f"{tuple(own[name].shape)}; was the config's `{CONFIG_FIELD}` edited?"
            )
    return state


def _tied(model: nn.Module) -> set[str]:
    tied = getattr(model, "all_tied_weights_keys", None) or getattr(
        model, "_tied_weights_keys", None
    )
    names = set(tied or ())
    buffers = {n for n, _ in model.named_buffers()}  # non-persistent buffers are not saved
    return names | buffers
