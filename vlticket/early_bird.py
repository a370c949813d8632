"""Early-bird tickets (You et al. 2020): stop a round's training once the mask the pruner would
draw has stopped changing.

Called every few steps (or once an epoch) from the user's loop, :class:`EarlyBird` draws the
mask now (magnitude pruning at the target sparsity, or any ``draw(model) -> Mask``), keeps the
last ``queue`` masks, and reports the ticket drawn when the newest is within ``epsilon``
(:func:`vlticket.mask_distance`, the fraction of differing entries) of every other one in the
queue. EarlyBERT applies the same test to heads and neurons: pass a structured ``draw``.

A check costs one exact magnitude selection (the draw) plus a pass over bits: the queue holds
the masks packed 8 to a byte (1/8 of a bool mask each; only the newest is kept as a Mask), and
the newest is compared with all the others at once (XOR and popcount, vectorized over the
queue). On BERT-base that is a few percent of a training step per check, so checking every 10
steps (``TicketSearch``'s default) costs well under 1% (``benchmarks/cheaper.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from torch import nn

from ._naming import AdapterArg, check_layout
from .core import Mask, prune_magnitude
from .core.selection import fraction
from .errors import ArgumentError

_WORDS = 1 << 17  # uint64 words compared per chunk: bounds the temporary to 1 MiB a mask


class EarlyBird:
    """Detect an early-bird ticket inside the user's own training loop.

    Args:
        sparsity: the ticket's target sparsity (unstructured global magnitude pruning).
        draw: instead of ``sparsity``, any ``draw(model) -> Mask`` (structured pruning).
        epsilon: the largest mask distance, in (0, 1), that counts as "unchanged" (0.1).
        queue: how many recent masks must agree, at least 2 (5, as the paper).
        adapter: draw the magnitude mask over ``adapter.prunable(model)``.

    Example:
        >>> import torch, vlticket
        >>> net = torch.nn.Linear(8, 8)
        >>> eb = vlticket.EarlyBird(sparsity=0.5, queue=2)
        >>> eb.check(net), eb.check(net)
        (False, True)
        >>> eb.mask.num_pruned, eb.checks
        (32, 2)
    """

    def __init__(
        self,
        sparsity: float | None = None,
        *,
        draw: Callable[[nn.Module], Mask] | None = None,
        epsilon: float = 0.1,
        queue: int = 5,
        adapter: AdapterArg = None,
    ) -> None:
        if (sparsity is None) == (draw is None):
            raise ArgumentError("give exactly one of `sparsity` and `draw(model) -> Mask`")
        if sparsity is not None:
            fraction(sparsity, "sparsity")
        elif not callable(draw):
            raise ArgumentError(f"`draw`: expected a callable, found {type(draw).__name__}")
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)):
            raise ArgumentError(f"`epsilon`: expected a float in (0, 1), found {epsilon!r}")
        if not 0.0 < float(epsilon) < 1.0:
            raise ArgumentError(f"`epsilon`: expected a float in (0, 1), found {epsilon!r}")
        if isinstance(queue, bool) or not isinstance(queue, int) or queue < 2:
            raise ArgumentError(f"`queue`: expected an int >= 2, found {queue!r}")
        self.sparsity = sparsity
        self.epsilon = float(epsilon)
        self.queue = queue
        self._draw = draw
        self._adapter = adapter
        self._newest: Mask | None = None
        self._bits: np.ndarray | None = None  # (queue, words) uint64: the masks, packed
        self._filled = 0  # rows of _bits holding a mask
        self._row = -1  # the newest's row (a ring)
        self._offsets: dict[str, int] = {}  # byte offset of each tensor in a row
        self.distances: list[float] = []
        """After each check: the largest distance from the newest mask to the others."""
        self.checks = 0
        self.drawn = False

    def _draw_now(self, model: nn.Module) -> Mask:
        if self._draw is not None:
            mask = self._draw(model)
            if not isinstance(mask, Mask):
                raise ArgumentError(
                    f"`draw(model)`: expected a vlticket.Mask, found {type(mask).__name__}"
                )
            return mask
        return prune_magnitude(model, sparsity=self.sparsity, adapter=self._adapter)

    def check(self, model: nn.Module) -> bool:
        """Draw the mask now; return (and set ``drawn``) whether the ticket has emerged.

        Once drawn, later calls change nothing and return True. A drawn mask whose names or
        shapes differ from the queue's raises before anything changes.
        """
        if self.drawn:
            return True
        mask = self._draw_now(model).to("cpu")
        if self._newest is not None:
            check_layout(self._newest.shapes(), mask.shapes(), what="the queue", where="`draw`")
        self.checks += 1
        self._row = (self._row + 1) % self.queue
        self._pack(mask, self._row)
        self._filled = min(self._filled + 1, self.queue)
        self._newest = mask
        worst = max(self._distances_to_newest(mask.numel), default=1.0)
        self.distances.append(worst)
        self.drawn = self._filled == self.queue and worst <= self.epsilon
        return self.drawn

    def _pack(self, mask: Mask, row: int) -> None:
        """Write the mask's bits into ``row`` (each tensor from a byte boundary, zero padding)."""
        if self._bits is None:
            offset = 0
            for name, keep in mask.items():
                self._offsets[name] = offset
                offset += -(-keep.numel() // 8)
            self._bits = np.zeros((self.queue, -(-offset // 8)), np.uint64)
        raw = self._bits[row].view(np.uint8)
        for name, keep in mask.items():
            packed = np.packbits(keep.contiguous().numpy().reshape(-1))
            start = self._offsets[name]
            raw[start : start + packed.size] = packed

    def _distances_to_newest(self, numel: int) -> list[float]:
        """Fraction of differing entries between the newest mask and each other queued one."""
        queued, newest = self._bits[: self._filled], self._bits[self._row]  # views, no copies
        differ = np.zeros(self._filled, np.int64)
        for start in range(0, newest.size, _WORDS):
            end = start + _WORDS
            chunk = np.bitwise_xor(queued[:, start:end], newest[start:end])
            differ += np.bitwise_count(chunk).sum(axis=1, dtype=np.int64)
        return [int(d) / max(numel, 1) for i, d in enumerate(differ) if i != self._row]

    @property
    def mask(self) -> Mask | None:
        """The newest mask drawn (the early-bird ticket once ``drawn``)."""
        return self._newest

    def __repr__(self) -> str:
        state = "drawn" if self.drawn else "searching"
        return (
            f"EarlyBird({state}, checks={self.checks}, epsilon={self.epsilon}, queue={self.queue})"
        )


__all__ = ["EarlyBird"]
