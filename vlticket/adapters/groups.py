"""Groups of tensor names for per-group statistics, for any mask.

Groups come from ``adapter.groups(list(mask))``, or from :func:`groups_for`, which also serves
masks of a family this installation does not know, by grouping names on their layer index.
The statistics themselves (``group_sparsity``, ``group_iou`` ...) live in
:mod:`vlticket.core.metrics`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..registry import find

_INDEX = re.compile(r"^\d+$")


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
    adapter = find(family, options)
    if adapter is None:
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
