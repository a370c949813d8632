"""Early-bird rounds (You et al. 2020) in a TicketSearch: a round's training may end once the
mask the round will prune to has stopped changing.

Every ``every`` training steps the round's tracker (a :class:`~vlticket.EarlyBird`) draws the
mask that the round's pruning step would draw from the weights now; once the newest draw is
within ``epsilon`` of each of the last ``queue`` draws, the round has *converged* and the user's
loop may stop training it. The last round trains the ticket and has no tracker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..core import Mask
from ..early_bird import EarlyBird
from ..errors import ArgumentError

DEFAULT_EVERY = 10


def settings(early_bird: Any, every: Any) -> dict[str, Any] | None:
    """The run's early-bird settings (recorded in ``run.json``), or None when it is off.

    ``early_bird`` is True (the paper's ε = 0.1, queue of 5), an :class:`EarlyBird` whose
    ``epsilon`` and ``queue`` are used, or False / None; ``every`` is the check interval.
    """
    if early_bird is None or early_bird is False:
        if every is not None:
            raise ArgumentError(
                f"`early_bird_every`={every!r} needs `early_bird=True` (or an EarlyBird)"
            )
        return None
    if early_bird is True:
        early_bird = EarlyBird(sparsity=0.5)  # only its ε and queue defaults are taken
    if not isinstance(early_bird, EarlyBird):
        raise ArgumentError(
            "`early_bird`: expected True, False, None or a vlticket.EarlyBird, found "
            f"{type(early_bird).__name__}"
        )
    every = DEFAULT_EVERY if every is None else every
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ArgumentError(f"`early_bird_every`: expected an int >= 1, found {every!r}")
    return {"epsilon": early_bird.epsilon, "queue": early_bird.queue, "every": every}


def tracker(config: dict[str, Any], draw: Callable[[nn.Module], Mask]) -> EarlyBird:
    """A fresh tracker for one round, drawing masks with ``draw(model)``."""
    return EarlyBird(draw=draw, epsilon=config["epsilon"], queue=config["queue"])


__all__ = ["DEFAULT_EVERY", "settings", "tracker"]
