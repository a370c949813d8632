"""How alike two masks are: IoU of the kept weights (overall, per tensor) and Hamming distance."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from ._named import check_layout
from ._passes import count_true
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
