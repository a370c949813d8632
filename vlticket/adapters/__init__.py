"""Adapters: canonical, task-independent names for the prunable weights of a model family.

Built in: ``"lxmert"`` (transformers and original LXMERT, one set of names), ``"uniter"``
(original UNITER), ``"vilt"`` (transformers) and ``"vilt-original"`` (timm-style original ViLT;
convert masks and checkpoints with :func:`vilt.to_transformers` / :func:`vilt.to_original`).
Any other ``nn.Module`` works through :class:`PatternAdapter`; a family of your own is a table
registered with :func:`register_adapter`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from ..errors import ArgumentError
from . import lxmert, uniter, vilt
from .base import Adapter, Part, UnknownModelError, _model_names
from .bert import bert_to_vl
from .groups import group_iou, group_sparsity, group_stats, groups_for
from .patterns import PatternAdapter

_REGISTRY: dict[str, Any] = {}

_HOW_TO = (
    "For another model, give the prunable weights by name patterns, e.g. "
    "vlticket.adapters.PatternAdapter(include=[r'encoder\\.layer\\.\\d+\\..*\\.weight'], "
    "exclude=[r'.*LayerNorm.*']), and register it with "
    "vlticket.adapters.register_adapter(...) to have adapter_for find it."
)


def register_adapter(adapter: Any, *, replace: bool = False) -> None:
    """Add an adapter to the registry under ``adapter.name``; duplicates are refused.

    Args:
        adapter: an :class:`Adapter`, a :class:`PatternAdapter` or any object with ``name``,
            ``matches(names)``, ``prunable(model)`` and ``groups(names)``.
        replace: allow replacing an adapter registered under the same name.

    Example:
        >>> import vlticket.adapters as adapters
        >>> mine = adapters.PatternAdapter(include=[r"blocks\\.\\d+\\..*\\.weight"], name="mine")
        >>> adapters.register_adapter(mine)
        >>> adapters.get("mine") is mine
        True
    """
    for attr in ("name", "matches", "prunable", "groups"):
        if not hasattr(adapter, attr):
            raise ArgumentError(f"`adapter`: has no `{attr}`; see vlticket.adapters.Adapter")
    if adapter.name in _REGISTRY and not replace:
        raise ArgumentError(
            f"an adapter named {adapter.name!r} is already registered; pass replace=True "
            "to replace it"
        )
    _REGISTRY[adapter.name] = adapter


def available() -> list[str]:
    """Names of the registered adapters."""
    return sorted(_REGISTRY)


def get(name: str, **options: bool) -> Any:
    """The adapter registered as ``name``, with options (see :meth:`Adapter.with_options`).

    Example:
        >>> import vlticket.adapters as adapters
        >>> adapters.get("lxmert", pooler=True).options
        frozenset({'pooler'})
    """
    if name not in _REGISTRY:
        raise ArgumentError(f"no adapter named {name!r}; available: {available()}")
    return _with_options(_REGISTRY[name], options)


def adapter_for(model_or_state_dict: nn.Module | Mapping[str, Any], **options: bool) -> Any:
    """Detect the family and form of a model (or state dict) by its parameter names.

    Nothing is imported from transformers or the original code bases: the names decide.

    Args:
        model_or_state_dict: an ``nn.Module``, a state dict or a list of names.
        options: ``embeddings``, ``pooler``, ``visual_projection`` (see
            :meth:`Adapter.with_options`).

    Raises:
        UnknownModelError: no registered adapter (or more than one) fits; the message lists
            the adapters and shows how to write patterns.

    Example:
        >>> adapter = vlticket.adapters.adapter_for(model)               # doctest: +SKIP
        >>> mask = vlticket.Mask.ones(model, adapter=adapter)            # doctest: +SKIP
    """
    names = list(_model_names(model_or_state_dict))
    fits = [a for a in _REGISTRY.values() if a.matches(names)]
    families = [a for a in fits if isinstance(a, Adapter)]
    if len(fits) > 1 and len(families) == 1:
        fits = families  # a broad pattern adapter does not hide a model family
    if len(fits) != 1:
        listing = "; ".join(f"{a.name!r}: {getattr(a, 'description', '')}" for a in _listing())
        found = (
            "no registered adapter fits"
            if not fits
            else f"several adapters {[a.name for a in fits]} fit"
        )
        raise UnknownModelError(
            f"{found} this model (first names: {names[:3]}). Known adapters: {listing}. {_HOW_TO}"
        )
    return _with_options(fits[0], options)


def _listing() -> Iterable[Any]:
    return (_REGISTRY[n] for n in available())


def _with_options(adapter: Any, options: dict[str, bool]) -> Any:
    if not options:
        return adapter
    if not hasattr(adapter, "with_options"):
        raise ArgumentError(f"adapter {adapter.name!r} takes no options, found {sorted(options)}")
    try:
        return adapter.with_options(**options)
    except TypeError as e:
        raise ArgumentError(
            f"unknown option in {sorted(options)}; expected embeddings, pooler, visual_projection"
        ) from e


for _builtin in (lxmert.LXMERT, uniter.UNITER, vilt.VILT, vilt.VILT_ORIGINAL):
    register_adapter(_builtin)

__all__ = [
    "Adapter",
    "Part",
    "PatternAdapter",
    "UnknownModelError",
    "adapter_for",
    "available",
    "bert_to_vl",
    "get",
    "group_iou",
    "group_sparsity",
    "group_stats",
    "groups_for",
    "lxmert",
    "register_adapter",
    "uniter",
    "vilt",
]
