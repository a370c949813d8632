"""How alike two masks are, and how sparse: IoU of the kept weights (overall, per tensor, per
group), Hamming distance, and per-group statistics.

A *group* is a set of tensor names, e.g. one stream or transformer layer of an adapter
(``adapter.groups(list(mask))``); these functions know nothing about models.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from .._naming import check_layout, check_names
from ..errors import ArgumentError
from ._passes import count_true
from .mask import Mask


def _pair(a: Mask, b: Mask) -> None:
    for param, m in (("a", a), ("b", b)):
        if not isinstance(m, Mask):
            raise ArgumentError(f"`{param}`: expected a vlticket.Mask, found {type(m).__name__}")
    check_layout(a.shapes(), b, what="mask `a`", where="mask `b`")


def _counts(x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    """(|x ∩ y|, |x ∪ y|) of two bool tensors."""
    y = y.to(x.device)
    inter = count_true(x & y)
    return inter, count_true(x) + count_true(y) - inter


def _ratio(inter: int, union: int) -> float:
    # Two masks that keep nothing are identical subnetworks: IoU 1.
    return inter / union if union else 1.0


def iou(a: Mask, b: Mask) -> float:
    """Intersection over union of the weights two masks keep: ``|a ∩ b| / |a ∪ b|``.

    Two masks that keep no weight at all have IoU 1.0 (they are the same, empty, subnetwork).
    Masks over different names or shapes raise :class:`~vlticket.errors.MismatchError`.

    Example:
        >>> import torch, vlticket
        >>> a = vlticket.Mask({"w": torch.tensor([True, True, False, False])})
        >>> b = vlticket.Mask({"w": torch.tensor([True, False, True, False])})
        >>> vlticket.iou(a, b)
        0.3333333333333333
    """
    _pair(a, b)
    inter = union = 0
    for name, x in a.items():
        i, u = _counts(x, b[name])
        inter, union = inter + i, union + u
    return _ratio(inter, union)


def tensor_iou(a: Mask, b: Mask) -> dict[str, float]:
    """IoU of each tensor, by name."""
    _pair(a, b)
    return {name: _ratio(*_counts(x, b[name])) for name, x in a.items()}


def mask_distance(a: Mask, b: Mask) -> float:
    """Normalised Hamming distance: the fraction of entries where the masks differ.

    Early-bird ticket detection stops searching once this falls below a small value between
    the masks of consecutive epochs.
    """
    _pair(a, b)
    differ = sum(count_true(x != b[n].to(x.device)) for n, x in a.items())
    total = a.numel
    return differ / total if total else 0.0


def iou_matrix(masks: Mapping[str, Mask]) -> tuple[list[str], torch.Tensor]:
    """Pairwise IoU of several masks, e.g. one per task: returns ``(names, n×n tensor)``.

    Example:
        >>> names, m = vlticket.iou_matrix({"vqa": mask_vqa, "nlvr2": mask_nlvr2})  # doctest: +SKIP
    """
    if not isinstance(masks, Mapping) or not masks:
        raise ArgumentError("`masks`: expected a non-empty mapping of name to Mask")
    names = list(masks)
    first = masks[names[0]]
    for name in names:
        if not isinstance(masks[name], Mask):
            raise ArgumentError(f"`masks[{name!r}]`: expected a vlticket.Mask")
        check_layout(first.shapes(), masks[name], what=f"mask {names[0]!r}", where=f"mask {name!r}")
    n = len(names)
    inter = torch.zeros(n, n, dtype=torch.float64)
    for tensor_name in first:
        inter += torch.from_numpy(_gram([masks[k][tensor_name] for k in names]))
    kept = inter.diagonal()
    union = kept[:, None] + kept[None, :] - inter
    out = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    return names, out


def chance_iou_matrix(densities: list[float]) -> list[list[float]]:
    """Expected IoU of independent random masks with these densities, for each pair.

    Independent masks keeping fractions ``d1``, ``d2`` of the weights share ``d1*d2`` and cover
    ``d1 + d2 - d1*d2``, so chance IoU is ``d1*d2 / (d1 + d2 - d1*d2)`` (1 when both are empty,
    as :func:`vlticket.iou` counts two empty masks).
    """
    out = []
    for d1 in densities:
        row = []
        for d2 in densities:
            union = d1 + d2 - d1 * d2
            row.append(d1 * d2 / union if union > 0 else 1.0)
        out.append(row)
    return out


def _gram(masks: list[torch.Tensor]) -> np.ndarray:
    """``out[i, j] = |masks[i] ∩ masks[j]|`` for same-shape bool tensors."""
    if not hasattr(np, "bitwise_count"):  # NumPy < 2: count the pairs on bool arrays
        flat = [m.detach().cpu().reshape(-1).numpy() for m in masks]
        return np.array([[np.count_nonzero(a & b) for b in flat] for a in flat], np.float64)
    # Bit-packed masks and popcounts: 1/8 of the memory traffic of bool AND + count.
    words = [_packed_words(m) for m in masks]
    n = len(words)
    out = np.zeros((n, n), np.float64)
    for i in range(n):
        for j in range(i, n):
            out[i, j] = out[j, i] = np.bitwise_count(words[i] & words[j]).sum(dtype=np.int64)
    return out


def _packed_words(mask: torch.Tensor) -> np.ndarray:
    packed = np.packbits(mask.detach().cpu().reshape(-1).numpy())
    padded = np.zeros(-(-packed.size // 8) * 8, np.uint8)
    padded[: packed.size] = packed
    return padded.view(np.uint64)


# -- groups -------------------------------------------------------------------------------------
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
        >>> vlticket.group_sparsity(m, {"x": ["a"], "y": ["a", "b"]})
        {'x': 0.5, 'y': 0.25}
    """
    return {g: sub.sparsity for g, sub in _subsets(mask, groups, "mask").items()}


def group_stats(mask: Mask, groups: Mapping[str, Iterable[str]]) -> dict[str, dict[str, Any]]:
    """Weights, kept weights and sparsity of each group: the rows of a sparsity table.

    Example:
        >>> import torch, vlticket
        >>> m = vlticket.Mask({"layer.0.w": torch.tensor([True, False])})
        >>> vlticket.group_stats(m, {"layer.0": ["layer.0.w"]})
        {'layer.0': {'weights': 2, 'kept': 1, 'sparsity': 0.5}}
    """
    return {
        g: {"weights": sub.numel, "kept": sub.num_kept, "sparsity": sub.sparsity}
        for g, sub in _subsets(mask, groups, "mask").items()
    }


def group_iou(a: Mask, b: Mask, groups: Mapping[str, Iterable[str]]) -> dict[str, float]:
    """IoU of the kept weights of two masks, per group (1.0 where both keep nothing).

    Example:
        >>> adapter = vlticket.adapters.get("lxmert")                          # doctest: +SKIP
        >>> vlticket.group_iou(vqa, gqa, adapter.groups(list(vqa), by="stream"))  # doctest: +SKIP
        {'language': 0.61, 'vision': 0.58, 'cross': 0.55}
    """
    left, right = _subsets(a, groups, "a"), _subsets(b, groups, "b")
    return {g: iou(left[g], right[g]) for g in left}
