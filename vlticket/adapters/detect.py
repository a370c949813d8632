"""Detecting a model's family and form from its parameter names: :func:`adapter_for`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ..registry import AdapterLike, detect, fitting, get, registered
from .base import Adapter, UnknownModelError, model_names

HOW_TO = (
    "For another model, give the prunable weights by name patterns, e.g. "
    "vlticket.adapters.PatternAdapter(include=[r'encoder\\.layer\\.\\d+\\..*\\.weight'], "
    "exclude=[r'.*LayerNorm.*']), and register it with "
    "vlticket.adapters.register_adapter(...) to have adapter_for find it."
)


def adapter_for(model_or_state_dict: nn.Module | Mapping[str, Any], **options: bool) -> AdapterLike:
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
        >>> adapter = vlticket.adapter_for(model)                        # doctest: +SKIP
        >>> mask = vlticket.Mask.ones(model, adapter=adapter)            # doctest: +SKIP
    """
    names = list(model_names(model_or_state_dict))
    found = detect(names)
    if found is None:
        fits = fitting(names)
        listing = "; ".join(f"{a.name!r}: {_description(a)}" for a in registered())
        what = (
            "no registered adapter fits"
            if not fits
            else f"several adapters {[a.name for a in fits]} fit"
        )
        raise UnknownModelError(
            f"{what} this model (first names: {names[:3]}). Known adapters: {listing}. {HOW_TO}"
        )
    return get(found.name, **options) if options else found


def _description(adapter: AdapterLike) -> str:
    if isinstance(adapter, Adapter):
        return adapter.description
    return type(adapter).__name__
