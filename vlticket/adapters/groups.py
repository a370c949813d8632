"""Groups of tensor names, and per-group sparsity and IoU of masks.

Groups come from ``adapter.groups(list(mask))``, or from :func:`groups_for`, which also serves
masks of a family this installation does not know, by grouping names on their layer index.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .._named import check_names
from ..errors import ArgumentError
from ..masks import Mask
from ..metrics import iou

logger = logging.getLogger(__name__)

_INDEX = re.compile(r"^\d+$")


def find_adapter(family: str | None, options: Iterable[str] = ()) -> Any | None:
    """The registered adapter of ``family`` with ``options`` set, or ``None`` (with a warning)
    when no family is given or this installation does not know it.

    Unlike :func:`vlticket.adapters.get` it does not raise: a family recorded in a shared ticket
    may come from an adapter the reader lacks, and parameter names still serve then.
    """
    if not family:
        return None
    from . import get  # the package imports this module before it defines `get`

    try:
        return get(family, **{str(o): True for o in options})
    except (LookupError, ValueError) as e:
        logger.warning("adapter family %r is not known here (%s); using parameter names", family, e)
        return None


def groups_for(
    names: Iterable[str], family: str | None = None, options: Iterable[str] = ()
) -> dict[str, list[str]]:
    """Group tensor names for per-group statistics: by the groups of the family's adapter if it
    is known, else by layer (``encoder.layer.3``) or top-level module (``pooler``). Names no
    group covers go to ``"other"``.

    Args:
        names: tensor names, e.g. ``list(mask)``.
        family: registered adapter name (e.g. ``"vilt"``), as recorded in a ticket's config.
        options: the adapter's options (``"pooler"``, ``"embeddings"`` ...).

    Example:
        >>> from vlticket.adapters import groups_for
        >>> groups_for(["bert.encoder.layer.0.q.weight", "bert.pooler.weight"])
        {'encoder.layer.0': ['bert.encoder.layer.0.q.weight'], 'pooler': ['bert.pooler.weight']}
    """
    names = list(names)
    adapter = find_adapter(family, options)
    if adapter is None or not hasattr(adapter, "groups"):
        groups = _generic_groups(names)
    else:
        groups = {str(g): list(members) for g, members in adapter.groups(names).items()}
    covered = {n for members in groups.values() for n in members}
    rest = [n for n in names if n not in covered]
    return {**groups, "other": rest} if rest else groups


def _generic_groups(names: list[str]) -> dict[str, list[str]]:
    # Strip the prefix every name shares (e.g. "bert."), but keep each name's last part and
    # any "layer.3" (a stack name and its index), which is what a group is named after.
    parts = [n.split(".") for n in names]
    common = 0
    while parts and all(
        len(p) > common + 2 and p[common] == parts[0][common] and not _INDEX.match(p[common + 1])
        for p in parts
    ):
        common += 1
    groups: dict[str, list[str]] = {}
    for name, p in zip(names, parts, strict=True):
        rest = p[common:]
        index = next((i for i, c in enumerate(rest[:-1]) if _INDEX.match(c)), None)
        key = ".".join(rest[: index + 1]) if index is not None else rest[0]
        groups.setdefault(key, []).append(name)
    return groups


def _subsets(mask: Mask, groups: Mapping[str, Iterable[str]], param: str) -> dict[str, Mask]:
    """One sub-mask per group (tensors shared, not copied)."""
    if not isinstance(mask, Mask):
        raise ArgumentError(f"`{param}`: expected a vlticket.Mask, found {type(mask).__name__}")
    if not isinstance(groups, Mapping):
        raise ArgumentError(
            f"`groups`: expected a mapping of group name to names, found {type(groups).__name__}"
        )
    out = {}
    for g, names in groups.items():
        names = list(names)
        check_names(names, mask, what=f"group {g!r}", where=f"`{param}`", exact=False)
        out[g] = Mask({n: mask[n] for n in names})
    return out


def group_sparsity(mask: Mask, groups: Mapping[str, Iterable[str]]) -> dict[str, float]:
    """Fraction of weights pruned in each group (over all entries of the group's tensors).

    Within one partition (e.g. ``adapter.groups(list(mask), by="stream")``) the groups' pruned
    counts add up to the mask's: ``sum(s_g * numel_g) == mask.num_pruned``.

    Example:
        >>> import torch, vlticket
        >>> m = vlticket.Mask({"a": torch.tensor([True, False]), "b": torch.tensor([True, True])})
        >>> vlticket.adapters.group_sparsity(m, {"x": ["a"], "y": ["a", "b"]})
        {'x': 0.5, 'y': 0.25}
    """
    return {g: sub.sparsity for g, sub in _subsets(mask, groups, "mask").items()}


def group_stats(mask: Mask, groups: Mapping[str, Iterable[str]]) -> dict[str, dict[str, Any]]:
    """Weights, kept weights and sparsity of each group: the rows of a sparsity table.

    Example:
        >>> import torch, vlticket
        >>> m = vlticket.Mask({"layer.0.w": torch.tensor([True, False])})
        >>> vlticket.adapters.group_stats(m, vlticket.adapters.groups_for(m))
        {'layer.0': {'weights': 2, 'kept': 1, 'sparsity': 0.5}}
    """
    return {
        g: {"weights": sub.numel, "kept": sub.num_kept, "sparsity": sub.sparsity}
        for g, sub in _subsets(mask, groups, "mask").items()
    }


def group_iou(a: Mask, b: Mask, groups: Mapping[str, Iterable[str]]) -> dict[str, float]:
    """IoU of the kept weights of two masks, per group (1.0 where both keep nothing).

    Example:
        >>> adapter = vlticket.adapters.get("lxmert")                     # doctest: +SKIP
        >>> group_iou(vqa, gqa, adapter.groups(list(vqa), by="stream"))  # doctest: +SKIP
        {'language': 0.61, 'vision': 0.58, 'cross': 0.55}
    """
    left, right = _subsets(a, groups, "a"), _subsets(b, groups, "b")
    return {g: iou(left[g], right[g]) for g in left}
