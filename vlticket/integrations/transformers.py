"""IMP with a Hugging Face ``Trainer``: :class:`TicketCallback` keeps a round's mask in force.

The Trainer creates (and accelerate wraps) its optimizer inside ``train()``; the callback adds
it to the running :class:`~vlticket.Round` when training begins, so pruned weights stay exactly
zero under the Trainer's schedulers, gradient accumulation, clipping and mixed precision. One
``Trainer`` per round (each round starts from a fresh optimizer, as IMP's rewinding wants)::

    search = vlticket.TicketSearch(model, sparsity=0.7, amount=0.1, run_dir="runs/vqa")
    for rnd in search:
        trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                          callbacks=[TicketCallback(rnd)])
        trainer.train()
        rnd.report(**trainer.evaluate())

Importing this module imports transformers; ``import vlticket`` does not.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from ..errors import ArgumentError, VlticketError
from ..search import Round


class TicketCallback(TrainerCallback):
    """Add the ``Trainer``'s optimizer to ``rnd`` when training begins; with the search's
    ``early_bird``, check the round after each step and stop training once it has converged.

    Args:
        rnd: the running round of a :class:`~vlticket.TicketSearch` (``for rnd in search``).

    Example:
        >>> trainer = Trainer(..., callbacks=[TicketCallback(rnd)])  # doctest: +SKIP
    """

    def __init__(self, rnd: Round) -> None:
        if not isinstance(rnd, Round):
            raise ArgumentError(
                "`rnd`: expected the running round of a vlticket.TicketSearch "
                f"(`for rnd in search: ...`), found {type(rnd).__name__}"
            )
        self.rnd = rnd
        self._added: set[int] = set()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.rnd._search._round is not self.rnd:  # a Trainer reused for the next round
            raise VlticketError(
                f"this TicketCallback is for round {self.rnd.index}, which is over; it would end "
                "the running round's training early or leave its mask unenforced: give each "
                "round its own Trainer, or `trainer.remove_callback(TicketCallback)` before "
                "`trainer.add_callback(TicketCallback(rnd))`"
            )
        optimizer = kwargs.get("optimizer")
        if optimizer is None:
            raise VlticketError(
                "the Trainer began training without an optimizer to keep the mask in force; "
                "DeepSpeed and FSDP-on-XLA create it later and are not supported"
            )
        if id(optimizer) not in self._added:  # train() called again on the same Trainer
            self.rnd.add_optimizer(optimizer)
            self._added.add(id(optimizer))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.rnd.step()  # counts nothing (the optimizer is hooked); runs early-bird checks
        if self.rnd.converged:
            control.should_training_stop = True
