"""How alike two masks are: IoU of the kept weights (overall, per tensor) and Hamming distance."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ._named import check_layout
from .errors import ArgumentError
from .masks import Mask


def _pair(a: Mask, b: Mask) -> None:
    for param, m in (("a", a), ("b", b)):
        if not isinstance(m, Mask):
            raise ArgumentError(f"`{param}`: expected a vlticket.Mask, found {type(m).__name__}")
    check_layout(a.shapes(), b, what="mask `a`", where="mask `b`")


def _counts(x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    """(|x ∩ y|, |x ∪ y|) of two bool tensors."""
    y = y.to(x.device)
    inter = int((x & y).count_nonzero())
    return inter, int(x.count_nonzero()) + int(y.count_nonzero()) - inter


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


def layer_iou(a: Mask, b: Mask) -> dict[str, float]:
    """IoU of each tensor, by name."""
    _pair(a, b)
    return {name: _ratio(*_counts(x, b[name])) for name, x in a.items()}


def mask_distance(a: Mask, b: Mask) -> float:
    """Normalised Hamming distance: the fraction of entries where the masks differ.

    Early-bird ticket detection stops searching once this falls below a small value between
    the masks of consecutive epochs.
    """
    _pair(a, b)
    differ = sum(int((x != b[n].to(x.device)).count_nonzero()) for n, x in a.items())
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
        stack = [masks[k][tensor_name] for k in names]
        for i in range(n):
            inter[i, i] += int(stack[i].count_nonzero())
            for j in range(i + 1, n):
                c = int((stack[i] & stack[j].to(stack[i].device)).count_nonzero())
                inter[i, j] += c
                inter[j, i] += c
    kept = inter.diagonal()
    union = kept[:, None] + kept[None, :] - inter
    out = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    return names, out
