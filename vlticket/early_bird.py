"""Early-bird tickets (You et al. 2020): stop a round's training once the mask the pruner would
draw has stopped changing.

Called every few steps (or once an epoch) from the user's loop, :class:`EarlyBird` draws the
mask now (magnitude pruning at the target sparsity, or any ``draw(model) -> Mask``), keeps the
last ``queue`` masks, and reports the ticket drawn when the newest is within ``epsilon``
(:func:`vlticket.mask_distance`, the fraction of differing entries) of every other one in the
queue. EarlyBERT applies the same test to heads and neurons: pass a structured ``draw``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from torch import nn

from ._naming import AdapterArg
from .core import Mask, mask_distance, prune_magnitude
from .core.selection import fraction
from .errors import ArgumentError


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
        self._masks: deque[Mask] = deque(maxlen=queue)
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

        Once drawn, later calls change nothing and return True.
        """
        if self.drawn:
            return True
        mask = self._draw_now(model).to("cpu")
        self.checks += 1
        self._masks.append(mask)
        others = list(self._masks)[:-1]
        worst = max((mask_distance(mask, m) for m in others), default=1.0)
        self.distances.append(worst)
        self.drawn = len(self._masks) == self.queue and worst <= self.epsilon
        return self.drawn

    @property
    def mask(self) -> Mask | None:
        """The newest mask drawn (the early-bird ticket once ``drawn``)."""
        return self._masks[-1] if self._masks else None

    def __repr__(self) -> str:
        state = "drawn" if self.drawn else "searching"
        return (
            f"EarlyBird({state}, checks={self.checks}, epsilon={self.epsilon}, queue={self.queue})"
        )


__all__ = ["EarlyBird"]
