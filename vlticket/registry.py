"""The adapter registry: what an adapter gives, and adapters by name.

It sits below the core and imports nothing from :mod:`vlticket.adapters`: the built-in adapters
register themselves when that package is imported (as ``vlticket`` does), so core functions can
take ``adapter="vilt"`` without knowing any model family.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from .errors import ArgumentError

logger = logging.getLogger(__name__)


@runtime_checkable
class Naming(Protocol):
    """What the core needs of an adapter: the prunable tensors of a model under stable names.

    Any object with this method can be passed as ``adapter=`` to masks, pruning and rewinding.
    """

    def prunable(self, model: nn.Module) -> Mapping[str, torch.Tensor]:
        """``{canonical name: the model's own parameter}`` of the prunable set."""
        ...


@runtime_checkable
class AdapterLike(Naming, Protocol):
    """What a registered adapter gives: a name, detection, the prunable set, groups, options.

    :class:`vlticket.adapters.Adapter` (a family table) and
    :class:`vlticket.adapters.PatternAdapter` (name patterns) are the built-in kinds; any object
    with these members can be registered.
    """

    name: str

    def matches(self, names: Iterable[str]) -> bool:
        """Whether these model parameter names look like this adapter's models."""
        ...

    def groups(self, names: Iterable[str], by: str | None = None) -> dict[str, list[str]]:
        """Canonical names grouped by stream, transformer layer or component."""
        ...

    def with_options(self, **options: bool) -> AdapterLike:
        """The same adapter with optional weights (embeddings, pooler ...) added."""
        ...


_REGISTRY: dict[str, AdapterLike] = {}


def register_adapter(adapter: AdapterLike, *, replace: bool = False) -> None:
    """Add an adapter to the registry under ``adapter.name``; duplicates are refused.

    Args:
        adapter: an :class:`~vlticket.adapters.Adapter`, a
            :class:`~vlticket.adapters.PatternAdapter` or any :class:`AdapterLike`.
        replace: allow replacing an adapter registered under the same name.

    Example:
        >>> import vlticket.adapters as adapters
        >>> mine = adapters.PatternAdapter(include=[r"blocks\\.\\d+\\..*\\.weight"], name="mine")
        >>> adapters.register_adapter(mine)
        >>> adapters.get("mine") is mine
        True
    """
    if not isinstance(adapter, AdapterLike):
        missing = [
            a
            for a in ("name", "matches", "prunable", "groups", "with_options")
            if not hasattr(adapter, a)
        ]
        raise ArgumentError(
            f"`adapter`: {type(adapter).__name__} lacks {missing}; "
            "see vlticket.registry.AdapterLike"
        )
    if not isinstance(adapter.name, str) or not adapter.name:
        raise ArgumentError(f"`adapter.name`: expected a non-empty str, found {adapter.name!r}")
    if adapter.name in _REGISTRY and not replace:
        raise ArgumentError(
            f"an adapter named {adapter.name!r} is already registered; pass replace=True "
            "to replace it"
        )
    _REGISTRY[adapter.name] = adapter


def available() -> list[str]:
    """Names of the registered adapters."""
    return sorted(_REGISTRY)


def registered() -> list[AdapterLike]:
    """The registered adapters, in name order."""
    return [_REGISTRY[n] for n in available()]


def get(name: str, **options: bool) -> AdapterLike:
    """The adapter registered as ``name``, with options (see ``Adapter.with_options``).

    Example:
        >>> import vlticket.adapters as adapters
        >>> adapters.get("lxmert", pooler=True).options
        frozenset({'pooler'})
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ArgumentError(f"no adapter named {name!r}; available: {available()}")
    adapter = _REGISTRY[name]
    if not options:
        return adapter
    try:
        return adapter.with_options(**options)
    except TypeError as e:
        raise ArgumentError(f"adapter {name!r}: unknown option in {sorted(options)} ({e})") from e


def find(name: str | None, options: Iterable[str] = ()) -> AdapterLike | None:
    """The registered adapter ``name`` with ``options`` set, or ``None`` (with a warning) when no
    name is given or this installation does not know it.

    Unlike :func:`get` it does not raise: a family recorded in a shared ticket may come from an
    adapter the reader lacks, and parameter names still serve then.
    """
    if not name:
        return None
    try:
        return get(name, **{str(o): True for o in options})
    except ArgumentError as e:
        logger.warning("adapter %r is not known here (%s); using parameter names", name, e)
        return None


def is_family(adapter: object) -> bool:
    """Whether ``adapter`` is a model family's table (it has a ``signature`` of names every
    model of the family has), rather than name patterns that may fit any model."""
    return isinstance(getattr(adapter, "signature", None), tuple) and hasattr(adapter, "parts")


def detect(names: Iterable[str]) -> AdapterLike | None:
    """The one registered adapter whose ``matches`` fits these parameter names, or ``None``.

    A family table wins over broad pattern adapters that also fit, and a V+L family over a
    ``fallback`` family (BERT) whose layer names it shares; two families fitting, or two
    pattern adapters and no family, give ``None`` (ambiguous).

    Example:
        >>> import vlticket
        >>> vlticket.registry.detect(["fc.weight", "fc.bias"]) is None
        True
    """
    names = list(names)
    fits = [a for a in registered() if a.matches(names)]
    families = [a for a in fits if is_family(a)]
    if len(families) > 1 and any(not getattr(a, "fallback", False) for a in families):
        # A fallback family (BERT) yields to the V+L families built on its layer names.
        fits = [a for a in fits if not getattr(a, "fallback", False)]
        families = [a for a in families if not getattr(a, "fallback", False)]
    if len(fits) > 1 and len(families) == 1:
        fits = families  # a broad pattern adapter does not hide a model family
    return fits[0] if len(fits) == 1 else None


def fitting(names: Iterable[str]) -> list[AdapterLike]:
    """Every registered adapter whose ``matches`` fits these names (for error messages)."""
    names = list(names)
    return [a for a in registered() if a.matches(names)]


def resolve(adapter: Naming | str | None) -> Naming | None:
    """An adapter object, or a registered adapter's name such as ``"vilt"``; ``None`` stays."""
    if adapter is None or isinstance(adapter, Naming):
        return adapter
    if isinstance(adapter, str):
        return get(adapter)
    raise ArgumentError(
        "`adapter`: expected an adapter (with a `prunable(model)` method) or a registered "
        f"adapter name, found {type(adapter).__name__}"
    )


__all__ = [
    "AdapterLike",
    "Naming",
    "available",
    "detect",
    "find",
    "fitting",
    "get",
    "is_family",
    "register_adapter",
    "registered",
    "resolve",
]
