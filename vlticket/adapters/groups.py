"""Per-group sparsity and IoU of masks, for groups from ``adapter.groups(list(mask))``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .._named import check_names
from ..errors import ArgumentError
from ..masks import Mask
from ..metrics import iou


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


def group_iou(a: Mask, b: Mask, groups: Mapping[str, Iterable[str]]) -> dict[str, float]:
    """IoU of the kept weights of two masks, per group (1.0 where both keep nothing).

    Example:
        >>> adapter = vlticket.adapters.get("lxmert")                     # doctest: +SKIP
        >>> group_iou(vqa, gqa, adapter.groups(list(vqa), by="stream"))  # doctest: +SKIP
        {'language': 0.61, 'vision': 0.58, 'cross': 0.55}
    """
    left, right = _subsets(a, groups, "a"), _subsets(b, groups, "b")
    return {g: iou(left[g], right[g]) for g in left}
