"""A model's attention and FFN blocks, from its adapter's structure table: :func:`blocks_for`.

The table (:class:`~vlticket.adapters.Structure` rows) says where heads and neurons are by
canonical names; this module finds every block in a model, reads its head count from the model
(the attention module's ``num_attention_heads``, else ``num_heads=``, else the config) and its
head size from the tensor shapes, and returns :class:`~vlticket.core.structured.Block` index
sets that the core selects from, plus the model names that :func:`vlticket.shrink` slices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from .._naming import unwrap
from ..core.structured import Axis, Block, check_count, head_size
from ..errors import ArgumentError, NameMismatchError
from ..registry import AdapterLike, resolve
from .base import Structure
from .detect import adapter_for

KINDS = ("head", "neuron")
_HEAD_COUNTS = ("num_attention_heads", "num_heads")


@dataclass(frozen=True)
class Site:
    """One block of a model: the core's index sets plus where they live in the model.

    Args:
        block: the units over canonical names.
        rule: the adapter's structure row that found it.
        weights: ``{canonical name: model parameter name}`` of the block's weights.
        heads_module: model name of the module holding the head count (heads only).
    """

    block: Block
    rule: Structure
    weights: dict[str, str]
    heads_module: str | None


def resolve_adapter(model: nn.Module, adapter: AdapterLike | str | None) -> AdapterLike:
    """The adapter to use: given, by name, or detected; it must declare a structure."""
    found = adapter_for(model) if adapter is None else resolve(adapter)
    if not getattr(found, "structure", ()):
        raise ArgumentError(
            f"adapter {getattr(found, 'name', found)!r} does not say where attention heads and "
            "FFN neurons are; give it `structure=` rows, e.g. PatternAdapter(include=..., "
            "structure=(vlticket.adapters.Structure(kind='neuron', where=r'layers\\.\\d+\\.', "
            "rows=('fc1',), columns=('fc2',)),))"
        )
    return found


def blocks_for(
    model: nn.Module,
    adapter: AdapterLike | str | None = None,
    *,
    kind: str | None = None,
    num_heads: int | None = None,
) -> list[Site]:
    """Every attention block (heads) and FFN block (neurons) of ``model``, in model order.

    Args:
        model: the model.
        adapter: its adapter (detected if omitted); it must have a ``structure`` table.
        kind: ``"head"``, ``"neuron"`` or ``None`` for both.
        num_heads: heads per attention block where the model does not say (original code bases
            without a config); an attention module's own ``num_attention_heads`` wins.

    Example:
        >>> sites = vlticket.adapters.blocks_for(bert, kind="head")   # doctest: +SKIP
        >>> sites[0].block.name, sites[0].block.count                 # doctest: +SKIP
        ('encoder.layer.0.attention', 12)
    """
    if kind is not None and kind not in KINDS:
        raise ArgumentError(f"`granularity`: expected one of {KINDS}, found {kind!r}")
    if num_heads is not None:
        check_count(num_heads, "`num_heads`")
    adapter = resolve_adapter(model, adapter)
    names = adapter.names(model)
    params = dict(unwrap(model).named_parameters())
    sites = []
    for rule in adapter.structure:
        if kind is not None and rule.kind != kind:
            continue
        first = re.compile(f"(?P<prefix>{rule.where}){re.escape(rule.rows[0])}\\.weight")
        for canon in names:
            m = first.fullmatch(canon)
            if m:
                sites.append(_site(model, adapter, rule, m["prefix"], names, params, num_heads))
    if not sites:
        raise NameMismatchError(
            f"adapter {adapter.name!r}: its structure table finds no "
            f"{kind or 'head or neuron'} blocks in this model"
        )
    order = {canon: i for i, canon in enumerate(names)}
    return sorted(sites, key=lambda s: order[s.block.axes[0].name])


def _site(model, adapter, rule, prefix, names, params, num_heads) -> Site:
    rows = [f"{prefix}{r}.weight" for r in rule.rows]
    columns = [f"{prefix}{c}.weight" for c in rule.columns]
    missing = [n for n in rows + columns if n not in names]
    if missing:
        raise NameMismatchError(
            f"adapter {adapter.name!r}: block {prefix!r} lacks {missing} among the prunable "
            "weights; its structure table does not fit this model"
        )
    first = params[names[rows[0]]]
    stream = next(iter(adapter.groups([rows[0]], by="stream")))
    axes = tuple(Axis(r, 0, rule.fused) for r in rows) + tuple(Axis(c, 1) for c in columns)
    weights = {n: names[n] for n in rows + columns}
    if rule.kind == "neuron":
        block = Block(prefix + rule.rows[0], "neuron", first.shape[0], 1, axes, stream)
        return Site(block, rule, weights, None)
    module_name = names[rows[0]].rsplit(".", 2)[0]  # the attention module holding q, k, v
    heads = _head_count(model, module_name, num_heads)
    name = prefix.rstrip(".")
    size = head_size(first.shape[0], rule.fused, heads, f"attention block {name!r}")
    return Site(Block(name, "head", heads, size, axes, stream), rule, weights, module_name)


def _head_count(model: nn.Module, module_name: str, num_heads: int | None) -> int:
    module = unwrap(model).get_submodule(module_name)
    for attr in _HEAD_COUNTS:
        value = getattr(module, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    if num_heads is not None:
        return num_heads
    config = getattr(unwrap(model), "config", None)
    value = getattr(config, "num_attention_heads", None)
    if value is None:
        raise ArgumentError(
            f"`num_heads`: {module_name!r} has no `num_attention_heads` and the model has no "
            "config saying it; pass num_heads=<heads per attention block>"
        )
    return check_count(value, "config.num_attention_heads")
