"""TicketSearch: iterative magnitude pruning with rewinding, around the user's own training loop.

Each round trains the current subnetwork (round 0 is dense), prunes a fraction of the remaining
weights by global magnitude, then rewinds the weights to θ0 (or θi) and keeps the mask. The last
pruning step lands exactly on the target sparsity, and the last round trains the ticket there.

With a ``run_dir``, every finished round is on disk (masks, rewind checkpoint, history, all
written atomically; the history is written last and marks the round finished), so a killed run
started again with the same arguments continues from the last finished round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._naming import AdapterArg, model_state, named_tensors
from ..core import Checkpoint, Mask, prune_magnitude
from ..errors import ArgumentError, FileFormatError, VlticketError
from .run_dir import INIT, REWIND, RunDir

logger = logging.getLogger(__name__)


def prune_schedule(numel: int, sparsity: float, amount: float, one_shot: bool = False) -> list[int]:
    """Number of pruned weights in each round: 0 first, then ``amount`` of the kept ones per
    round (rounded half to even, as :func:`~vlticket.prune_magnitude` does), the last step
    clipped to exactly ``round(sparsity * numel)``.

    Example:
        >>> prune_schedule(100, sparsity=0.3, amount=0.1)
        [0, 10, 19, 27, 30]
    """
    target = round(sparsity * numel)
    if one_shot:
        return [0, target]
    counts = [0]
    while counts[-1] < target:
        step = round(amount * (numel - counts[-1]))
        counts.append(target if step == 0 else min(target, counts[-1] + step))
    return counts


def _number(name: str, value: Any) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ArgumentError(
            f"`report({name}=...)`: expected a number, found {type(value).__name__}"
        ) from None
    return out


class Round:
    """One round of a :class:`TicketSearch`: train ``model`` with ``mask`` in force, then report.

    Attributes:
        index: 0 for the dense round, then 1, 2, ...
        mask: the mask trained in this round (attached to the model while the round runs).
        sparsity: ``mask.sparsity``.
        last: True for the final round (the ticket at the target sparsity).
    """

    def __init__(self, search: TicketSearch, index: int, mask: Mask, last: bool) -> None:
        self._search = search
        self.index = index
        self.mask = mask
        self.sparsity = mask.sparsity
        self.last = last
        self.metrics: dict[str, float] | None = None
        self.steps = 0

    def add_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Keep pruned weights at zero through every ``optimizer.step()`` (once per optimizer),
        as :meth:`vlticket.MaskHandle.add_optimizer` does."""
        if self._search._round is not self:
            raise VlticketError(
                f"round {self.index} is over: add the optimizer to the running round"
            )
        self._search._handle.add_optimizer(optimizer)

    def step(self) -> None:
        """Same as :meth:`TicketSearch.step`."""
        self._search.step()

    def report(self, **metrics: float) -> None:
        """Record this round's metrics, e.g. ``rnd.report(accuracy=0.71)``, and end the round.

        The next mask is pruned from the weights as they are now, and the round is saved.
        """
        if self.metrics is not None:
            raise VlticketError(f"round {self.index} was already reported")
        numbers = {name: _number(name, v) for name, v in metrics.items()}
        self._search._finish(self, numbers)
        self.metrics = numbers

    def __repr__(self) -> str:
        return f"Round({self.index}, sparsity={self.sparsity:.4f})"


class TicketSearch:
    """Iterative magnitude pruning (IMP) with rewinding, driven by the user's training loop.

    Args:
        model: any ``nn.Module``; it is trained, pruned and rewound in place.
        sparsity: target fraction of prunable weights pruned, in (0, 1).
        amount: fraction of the remaining weights pruned after each round (0.1 in the study).
        rewind_step: 0 rewinds to the weights at the start (θ0); ``i > 0`` rewinds to the
            weights after ``i`` calls of :meth:`step` in round 0 (θi).
        one_shot: prune straight to ``sparsity`` after the dense round (two rounds in all).
        run_dir: folder holding the run; an existing run there is resumed. Must be started
            again with the same arguments, or an :class:`~vlticket.errors.ArgumentError` says
            which one differs.
        adapter: name the prunable weights through this adapter (default: every
            floating-point parameter with two or more dimensions, as :meth:`Mask.ones`).
        progress: show a tqdm bar over rounds.

    For a bit-identical resume, make each round's training depend only on ``rnd.index``
    (e.g. ``torch.manual_seed(rnd.index)`` at its start). Optimizers recreated each round are
    attached with ``rnd.add_optimizer(optimizer)``.

    Example:

    ```python
    search = vlticket.TicketSearch(model, sparsity=0.7, amount=0.1, run_dir="runs/vqa")
    for rnd in search:
        torch.manual_seed(rnd.index)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        rnd.add_optimizer(optimizer)
        train(model, optimizer)
        rnd.report(accuracy=evaluate(model))
    ticket = search.mask  # sparsity 0.7
    ```
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        sparsity: float,
        amount: float = 0.1,
        rewind_step: int = 0,
        one_shot: bool = False,
        run_dir: str | Path | None = None,
        adapter: AdapterArg = None,
        progress: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ArgumentError(f"`model`: expected an nn.Module, found {type(model).__name__}")
        for name, value in (("sparsity", sparsity), ("amount", amount)):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (0.0 < float(value) < 1.0)
            ):
                raise ArgumentError(f"`{name}`: expected a float in (0, 1), found {value!r}")
        if isinstance(rewind_step, bool) or not isinstance(rewind_step, int) or rewind_step < 0:
            raise ArgumentError(f"`rewind_step`: expected an int >= 0, found {rewind_step!r}")
        self.model = model
        self.adapter = adapter
        self.progress = progress
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._ones = Mask.ones(model, adapter=adapter)
        numel = self._ones.numel
        if numel == 0:
            raise ArgumentError("`model` has no prunable weights")
        self.args = {
            "sparsity": float(sparsity),
            "amount": float(amount),
            "rewind_step": rewind_step,
            "one_shot": bool(one_shot),
        }
        self.schedule = prune_schedule(numel, float(sparsity), float(amount), bool(one_shot))
        self.history: list[dict[str, Any]] = []
        self._masks: dict[int, Mask] = {}
        self._init: Checkpoint | None = None
        self._rewind: Checkpoint | None = None
        self._handle = None
        self._round: Round | None = None
        self._steps = 0
        self._began = 0.0
        self._run = RunDir(self.run_dir) if self.run_dir is not None else None
        if self._run is not None:
            self._resume()

    # -- the run folder -------------------------------------------------------------------------
    def _resume(self) -> None:
        run = self._run
        run.open(self.args, self.schedule, self._ones)
        self.history = run.history()
        self._init = run.load_checkpoint(INIT)
        if self.args["rewind_step"]:
            self._rewind = run.load_checkpoint(REWIND)

    def _save_checkpoint(self, ckpt: Checkpoint, name: str) -> None:
        if self._run is not None:
            self._run.save_checkpoint(name, ckpt)

    def _save_mask(self, index: int, mask: Mask) -> None:
        if self._run is not None:
            self._masks = {}  # on disk: keep one mask in memory, not one per round
            self._run.save_mask(index, mask)
        self._masks[index] = mask.to("cpu")  # without a run_dir, one byte per weight per round

    def _commit(self, entry: dict[str, Any]) -> None:
        self.history.append(entry)
        if self._run is not None:
            self._run.write_history(self.history)

    # -- results --------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """True once the round at the target sparsity has been reported."""
        return len(self.history) == len(self.schedule)

    @property
    def rewind_checkpoint(self) -> Checkpoint | None:
        """The weights each round starts from (θ0, or θi once captured); None before."""
        return self._rewind if self.args["rewind_step"] else self._init

    @property
    def init_checkpoint(self) -> Checkpoint | None:
        """The model's weights when the search started (θ0)."""
        return self._init

    def mask_at(self, index: int) -> Mask:
        """The mask trained in round ``index`` (a finished round, or the next one to run)."""
        if index in self._masks:
            return self._masks[index]
        if self._run is not None and 0 <= index <= len(self.history):
            mask = self._run.load_mask(index)
            if mask is not None:
                return mask
        if index == 0:
            return self._ones.clone()
        raise ArgumentError(
            f"`index`={index}: no mask yet; rounds 0..{len(self.history) - 1} are finished"
        )

    @property
    def mask(self) -> Mask:
        """The mask of the last finished round: the ticket once :attr:`finished` is True."""
        if not self.history:
            raise VlticketError("no round has finished yet: iterate over the search first")
        return self.mask_at(len(self.history) - 1)

    # -- driving the loop -----------------------------------------------------------------------
    def step(self) -> None:
        """Count one optimizer step; in round 0 this captures θi at step ``rewind_step``."""
        if self._round is None:
            raise VlticketError("call `step()` inside a round: `for rnd in search: ...`")
        self._steps += 1
        self._round.steps += 1
        if self._round.index == 0 and self._steps == self.args["rewind_step"]:
            self._rewind = Checkpoint.capture(model_state(self.model))
            self._save_checkpoint(self._rewind, REWIND)
            logger.info("captured the rewind point θi at step %d", self._steps)

    def add_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Add ``optimizer`` to the running round (same as ``rnd.add_optimizer(optimizer)``)."""
        if self._round is None or self._handle is None:
            raise VlticketError("call `add_optimizer()` inside a round: `for rnd in search: ...`")
        self._round.add_optimizer(optimizer)

    def _start_weights(self, index: int) -> Checkpoint:
        if index == 0:
            if self._init is None:
                self._init = Checkpoint.capture(model_state(self.model))
                self._save_checkpoint(self._init, INIT)
            return self._init
        ckpt = self.rewind_checkpoint
        if ckpt is None:
            raise FileFormatError(
                f"{str(self.run_dir)!r}: the rewind checkpoint of this run is missing"
            )
        return ckpt

    def __iter__(self) -> Iterator[Round]:
        from tqdm.auto import tqdm

        total = len(self.schedule)
        start = len(self.history)
        if start:
            logger.info("resuming %s after %d finished rounds", self.run_dir, start)
        bar = tqdm(total=total, initial=start, disable=not self.progress, desc="IMP rounds")
        try:
            for index in range(start, total):
                yield from self._run_round(index, bar)
        finally:
            bar.close()

    def _run_round(self, index: int, bar: Any) -> Iterator[Round]:
        mask = self.mask_at(index)
        if index == 0 and self._run is not None and not self._run.mask_path(0).exists():
            self._save_mask(0, mask)
        self._start_weights(index).restore(model_state(self.model))
        self._steps = 0
        self._handle = mask.attach(self.model, adapter=self.adapter)
        last = index == len(self.schedule) - 1
        rnd = self._round = Round(self, index, mask, last)
        self._began = time.perf_counter()
        try:
            yield rnd
        finally:
            self._handle.remove()
            self._handle, self._round = None, None
        if rnd.metrics is None:
            raise VlticketError(f"round {index} ended without `rnd.report(...)`")
        bar.update(1)
        bar.set_postfix({"sparsity": f"{mask.sparsity:.3f}", **rnd.metrics})

    def _finish(self, rnd: Round, metrics: dict[str, float]) -> None:
        """End ``rnd``: prune the next mask from the trained weights, save, then commit."""
        seconds = time.perf_counter() - self._began
        index, mask = rnd.index, rnd.mask
        self._check_still_pruned(rnd)
        if index == 0 and self.args["rewind_step"] and self._rewind is None:
            raise VlticketError(
                f"`rewind_step`={self.args['rewind_step']} but round 0 made only {rnd.steps} "
                "`search.step()` calls; call it once per optimizer step"
            )
        if not rnd.last:
            count = self.schedule[index + 1]
            nxt = prune_magnitude(
                self.model, sparsity=count / self._ones.numel, mask=mask, adapter=self.adapter
            )
            self._save_mask(index + 1, nxt)
        self._commit(
            {
                "round": index,
                "sparsity": mask.sparsity,
                "kept": mask.num_kept,
                "metrics": metrics,
                "seconds": round(seconds, 3),
                "steps": rnd.steps,
            }
        )
        logger.info("round %d: sparsity %.4f, %s", index, mask.sparsity, metrics)

    def _check_still_pruned(self, rnd: Round) -> None:
        # An optimizer that was not attached to this round (e.g. made before the loop) revives
        # pruned weights through its momentum; the reported metric would belong to a denser net.
        params = named_tensors(self.model, adapter=self.adapter)
        for name, keep in rnd.mask.items():
            pruned = ~keep.to(params[name].device)
            revived = int(torch.count_nonzero(params[name].detach()[pruned]))
            if revived:
                raise VlticketError(
                    f"round {rnd.index}: {revived} pruned weights of {name!r} are non-zero, so "
                    "the reported metric is not the subnetwork's; add every optimizer to each "
                    "round with `rnd.add_optimizer(optimizer)`"
                )

    def __repr__(self) -> str:
        return (
            f"TicketSearch(sparsity={self.args['sparsity']}, rounds {len(self.history)}/"
            f"{len(self.schedule)} finished)"
        )


__all__ = ["Round", "TicketSearch", "prune_schedule"]
