r"""PatternAdapter: prunable weights of any ``nn.Module`` chosen by name patterns.

A vision backbone no family claims is named this way, e.g. a transformers ViT (``ViTModel`` and,
with ``strip``, the ``vit.`` of ``ViTForImageClassification``)::

    PatternAdapter(
        include=[r"(vit\.)?layers\.\d+\.(attention\.[qkvo]_proj|mlp\.fc[12])\.weight"],
        strip=r"vit\.",
        name="vit",
        structure=(
            Structure(kind="head", where=r"layers\.\d+\.attention\.",
                      rows=("q_proj", "k_proj", "v_proj"), columns=("o_proj",)),
            Structure(kind="neuron", where=r"layers\.\d+\.", rows=("mlp.fc1",),
                      columns=("mlp.fc2",)),
        ),
    )

or DETR's ResNet backbone: ``include=[r"(model\.)?backbone\.model\..*\.convolution\.weight"]``
(tested in ``tests/test_adapters_backbones.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from .._naming import preview
from ..errors import ArgumentError, NameMismatchError
from .base import (
    Structure,
    UnknownModelError,
    group_names,
    grouped,
    model_names,
    prunable_by_names,
)


@dataclass(frozen=True)
class PatternAdapter:
    """An adapter for any ``nn.Module`` from name patterns, in the spirit of peft's
    ``target_modules``: a parameter is prunable if its name fully matches one ``include``
    regex and no ``exclude`` regex. Canonical names are the names without ``strip``.

    Args:
        include: regexes matched with ``re.fullmatch``; each must match at least one parameter.
        exclude: regexes removing parameters again (e.g. a task head).
        strip: regex of a prefix removed from the front of names (e.g. ``r"model\\."``).
        name: registry name.
        structure: optional :class:`~vlticket.adapters.Structure` rows (regexes on canonical
            names) saying where attention heads and FFN neurons are, for structured pruning.

    Example:
        >>> import torch, vlticket.adapters as adapters
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        >>> a = adapters.PatternAdapter(include=[r".*\\.weight"], exclude=[r"1\\..*"])
        >>> list(a.prunable(model))
        ['0.weight']
    """

    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    strip: str = ""
    name: str = "patterns"
    structure: tuple[Structure, ...] = ()

    def __post_init__(self) -> None:
        for param in ("include", "exclude"):
            value = getattr(self, param)
            if isinstance(value, str):
                raise ArgumentError(f"`{param}`: expected a list of regexes, found a str {value!r}")
            object.__setattr__(self, param, tuple(value))
            for p in getattr(self, param):
                try:
                    re.compile(p)
                except re.error as e:
                    raise ArgumentError(f"`{param}`: {p!r} is not a valid regex: {e}") from e
        try:
            re.compile(self.strip)
        except re.error as e:
            raise ArgumentError(f"`strip`: {self.strip!r} is not a valid regex: {e}") from e
        object.__setattr__(self, "structure", tuple(self.structure))
        if not self.include:
            raise ArgumentError("`include`: give at least one regex, e.g. [r'.*\\.weight']")

    def matches(self, names: Iterable[str]) -> bool:
        names = list(names)
        return all(any(re.fullmatch(p, n) for n in names) for p in self.include)

    def canonical(self, name: str) -> str | None:
        if not any(re.fullmatch(p, name) for p in self.include):
            return None
        if any(re.fullmatch(p, name) for p in self.exclude):
            return None
        return re.sub(f"^(?:{self.strip})", "", name, count=1) if self.strip else name

    def names(self, model_or_names: nn.Module | Mapping[str, Any] | Iterable[str]) -> dict:
        names = list(model_names(model_or_names))
        unmatched = [p for p in self.include if not any(re.fullmatch(p, n) for n in names)]
        if unmatched:
            raise UnknownModelError(
                f"include patterns {unmatched} match no parameter (patterns are matched with "
                f"re.fullmatch against the whole name); the model has {preview(names)}"
            )
        out: dict[str, str] = {}
        for name in names:
            canon = self.canonical(name)
            if canon is not None:
                if canon in out:
                    raise NameMismatchError(
                        f"`strip`={self.strip!r} maps {out[canon]!r} and {name!r} to {canon!r}"
                    )
                out[canon] = name
        if not out:
            raise UnknownModelError(
                f"include {list(self.include)} minus exclude {list(self.exclude)} leaves no "
                "parameter to prune"
            )
        return out

    def prunable(self, model: nn.Module) -> dict[str, nn.Parameter]:
        return prunable_by_names(self, model)

    def with_options(self, **options: bool) -> PatternAdapter:
        """Patterns take no options: the patterns themselves say what is pruned."""
        if options:
            raise ArgumentError(
                f"adapter {self.name!r} takes no options, found {sorted(options)}; add the "
                "weights to `include` instead"
            )
        return self

    def groups(
        self, names: nn.Module | Mapping[str, Any] | Iterable[str], by: str | None = None
    ) -> dict[str, list[str]]:
        """Groups by the first integer in the name (``layer.N``); other names go to ``other``.

        ``names``: a model (its canonical prunable names), a mask (its keys) or names.
        """
        return grouped(group_names(self, names), by, _numbered_group)


def _numbered_group(name: str, by: str) -> str:
    if by != "layer":
        return "all"
    m = re.search(r"(?:^|\.)(\d+)\.", name)
    return f"layer.{m[1]}" if m else "other"
