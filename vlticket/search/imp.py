"""TicketSearch: iterative magnitude pruning with rewinding, around the user's own training loop.

Each round trains the current subnetwork (round 0 is dense), prunes a fraction of the remaining
weights by global magnitude, then rewinds the weights to θ0 (or θi) and keeps the mask. The last
pruning step lands exactly on the target sparsity, and the last round trains the ticket there.

What a round prunes is the search's *granularity*: single weights (default), whole attention
heads and/or FFN neurons (``granularity="head"``, ``"neuron"``, ``"head+neuron"``), or N:M
groups (``pattern="2:4"``); see :mod:`.pruners`. With ``early_bird``, a round's training may end
once the mask it will prune to has settled (see :mod:`.early`).

With a ``run_dir``, every finished round is on disk (masks, rewind checkpoint, history, all
written atomically; the history is written last and marks the round finished), so a killed run
started again with the same arguments continues from the last finished round. One process at a
time owns a run folder (see :mod:`.lock`).
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._naming import AUTO, AdapterArg, auto_adapter, model_state, named_tensors
from ..adapters import groups_for
from ..core import Checkpoint, Mask, group_sparsity
from ..core.attach import hookable_optimizer
from ..core.nm import parse_pattern
from ..early_bird import EarlyBird
from ..errors import ArgumentError, FileFormatError, VlticketError
from ..hub import Ticket
from ..registry import resolve
from . import early, lock
from .pruners import (
    PatternPruner,
    StructuredPruner,
    WeightPruner,
    check_kind,
    prune_schedule,
)
from .run_dir import INIT, REWIND, RunDir

logger = logging.getLogger(__name__)


def _number(name: str, value: Any) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ArgumentError(
            f"`report({name}=...)`: expected a number, found {type(value).__name__}"
        ) from None
    if not math.isfinite(out):
        raise ArgumentError(
            f"`report({name}=...)`: expected a finite number, found {out}; a diverged round "
            "cannot be recorded in the history"
        )
    return out


class Round:
    """One round of a :class:`TicketSearch`: train ``model`` with ``mask`` in force, then report.

    Attributes:
        index: 0 for the dense round, then 1, 2, ...
        mask: the mask trained in this round (attached to the model while the round runs).
        sparsity: ``mask.sparsity``.
        last: True for the final round (the ticket at the target sparsity).
        steps: training steps taken so far in this round (see :class:`TicketSearch`).
        converged: with ``early_bird``, True once the mask this round will prune to has
            settled: the loop may stop training the round (checked by :meth:`step`).
        early_bird: the round's :class:`~vlticket.EarlyBird` tracker (its ``distances`` and
            ``checks``), or None (no ``early_bird``, or the last round).
    """

    def __init__(self, search: TicketSearch, index: int, mask: Mask, last: bool) -> None:
        self._search = search
        self.index = index
        self.mask = mask
        self.sparsity = mask.sparsity
        self.last = last
        self.metrics: dict[str, float] | None = None
        self.steps = 0
        self.converged = False
        self.early_bird = search._tracker(self)
        self._checked_at = 0  # the step of the last early-bird check
        self._optimizers: list[torch.optim.Optimizer] = []
        self._hooks: list[Any] = []
        self._capture_due = False  # θi is due once every optimizer has taken step `rewind_step`

    def add_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Keep pruned weights at zero through every ``optimizer.step()`` (as
        :meth:`vlticket.MaskHandle.add_optimizer` does) and count this round's steps from it.

        Adding the same optimizer again does nothing.
        """
        if self._search._round is not self:
            raise VlticketError(
                f"round {self.index} is over: add the optimizer to the running round"
            )
        inner = hookable_optimizer(optimizer)  # a wrapper's (accelerate's) inner optimizer
        if any(o is inner for o in self._optimizers):
            return
        self._search._handle.add_optimizer(optimizer)  # validates the optimizer first
        self._optimizers.append(inner)
        if len(self._optimizers) == 1:  # the first optimizer added is the one that counts
            self._hooks.append(inner.register_step_pre_hook(self._before_step))
            self._hooks.append(inner.register_step_post_hook(self._after_step))

    def _before_step(self, *_: object) -> None:
        # The other optimizers have taken their step too by now (one training step each).
        if self._capture_due:
            self._search._capture_rewind()

    def _after_step(self, *_: object) -> None:
        self.steps += 1
        self._capture_due = self._search._rewind_due(self)

    def _end(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def step(self) -> None:
        """Same as :meth:`TicketSearch.step`."""
        self._search.step()

    def _check_converged(self) -> None:
        every = self._search._early_bird["every"] if self.early_bird is not None else 0
        if not every or self.converged or self.steps % every or self.steps == self._checked_at:
            return
        if self.index == 0 and self.steps < self._search.args["rewind_step"]:
            return  # θi is not captured yet: round 0 must go on to step `rewind_step`
        self._checked_at = self.steps
        self.converged = self.early_bird.check(self._search.model)
        if self.converged:
            logger.info("round %d: early-bird mask settled at step %d", self.index, self.steps)

    def report(self, **metrics: float) -> None:
        """Record this round's metrics, e.g. ``rnd.report(accuracy=0.71)``, and end the round.

        The next mask is pruned from the weights as they are now, and the round is saved. All
        or nothing: if a metric is not a finite number, or a write fails (disk full), nothing
        is recorded and ``report`` can be called again.
        """
        if self.metrics is not None:
            raise VlticketError(f"round {self.index} was already reported")
        numbers = {name: _number(name, v) for name, v in metrics.items()}
        self._search._finish(self, numbers)
        self.metrics = numbers

    def __repr__(self) -> str:
        return f"Round({self.index}, sparsity={self.sparsity:.4f})"


def _fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ArgumentError(f"`{name}`: expected a float in (0, 1), found {value!r}")
    return float(value)


class TicketSearch:
    """Iterative magnitude pruning (IMP) with rewinding, driven by the user's training loop.

    Args:
        model: any ``nn.Module``; it is trained, pruned and rewound in place.
        sparsity: target fraction pruned, in (0, 1): of the prunable weights, or with a
            structured ``granularity`` of the heads (and, separately, of the neurons). Not
            given with ``pattern`` (which sets it).
        amount: fraction of the remaining weights (units; weights per group for ``pattern``)
            pruned after each round (0.1 in the study).
        rewind_step: 0 rewinds to the weights at the start (θ0); ``i > 0`` rewinds to the
            weights after ``i`` training steps of round 0 (θi).
        one_shot: prune straight to ``sparsity`` after the dense round (two rounds in all).
        scope: ``"global"`` ranks all weights together, ``"tensor"`` prunes each tensor on its
            own; as in :func:`~vlticket.prune_magnitude` (for heads and neurons: ``"global"``,
            ``"layer"`` or ``"stream"``, as in :func:`~vlticket.prune_structured`).
        granularity: what a round prunes: ``"weight"`` (single weights by magnitude),
            ``"head"`` (whole attention heads), ``"neuron"`` (whole FFN neurons) or
            ``"head+neuron"`` (both, each kind on its own schedule), by group norm as
            :func:`~vlticket.prune_structured` does; the adapter must say where heads and
            neurons are. The history's ``"units"`` gives the fraction of each kind removed.
        min_per_layer: with a structured ``granularity``, units each attention block / FFN
            keeps at least (default 1: never the last head of a layer).
        num_heads: with a structured ``granularity``, heads per attention block where the
            model does not say it (the original UNITER / LXMERT code), as
            :func:`~vlticket.prune_structured` takes it.
        pattern: ``"N:M"``: N:M semi-structured rounds. Each round prunes ``amount`` of the
            weights each group of M still keeps (at least one) until N are left, e.g. 2:4 with
            ``amount=0.1`` goes 4:4 (dense) → 3:4 → 2:4; ``one_shot=True`` goes straight to
            N:M. The ticket's sparsity is 1 - N/M and ``mask.satisfies(pattern)`` holds.
        early_bird: True (ε = 0.1, queue of 5) or a :class:`~vlticket.EarlyBird` whose
            ``epsilon`` and ``queue`` are used: every ``early_bird_every`` steps :meth:`step`
            draws the mask the round would prune to now, and ``rnd.converged`` turns True once
            it has settled, so the loop can end the round early. The last round (the ticket)
            has no tracker and trains in full.
        early_bird_every: training steps between early-bird checks (default 10).
        run_dir: folder holding the run; an existing run there is resumed. Must be started
            again with the same arguments, or an :class:`~vlticket.errors.ArgumentError` says
            which one differs. One process at a time owns it (a ``.lock`` file): close the
            search (``search.close()`` or ``with TicketSearch(...)``) to hand it over.
        adapter: name the prunable weights through this adapter. Default: the model family's
            adapter when exactly one registered family fits (the study's weight set of an
            LXMERT, UNITER or ViLT), else every floating-point parameter with two or more
            dimensions; ``None`` always means the latter, as in :meth:`Mask.ones`.
        progress: show a tqdm bar over rounds.

    Steps: each optimizer added with ``rnd.add_optimizer(optimizer)`` is hooked, and the
    round's ``steps`` (in the history) are the ``step()`` calls of the first optimizer added to
    the round; θi is captured after step ``rewind_step`` of round 0, once every optimizer has
    taken it. Loops without an optimizer to add count by hand with :meth:`step` (one call
    after each optimizer step); once an optimizer is added, :meth:`step` counts nothing, so no
    step is counted twice. With ``early_bird``, call ``rnd.step()`` after each optimizer step
    either way: it runs the early-bird checks, and the history records ``converged`` and the
    check ``distances`` of each round next to its ``steps``.

    For a bit-identical resume, make each round's training depend only on ``rnd.index``
    (e.g. ``torch.manual_seed(rnd.index)`` at its start). Optimizers recreated each round are
    attached with ``rnd.add_optimizer(optimizer)``.

    Example:

    ```python
    with vlticket.TicketSearch(model, sparsity=0.7, amount=0.1, run_dir="runs/vqa") as search:
        for rnd in search:
            torch.manual_seed(rnd.index)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            rnd.add_optimizer(optimizer)
            train(model, optimizer)
            rnd.report(accuracy=evaluate(model))
    search.save_pretrained("vqa-ticket", task="vqa")  # the mask at sparsity 0.7
    ```
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        sparsity: float | None = None,
        amount: float = 0.1,
        rewind_step: int = 0,
        one_shot: bool = False,
        scope: str = "global",
        granularity: str = "weight",
        min_per_layer: int | None = None,
        num_heads: int | None = None,
        pattern: str | None = None,
        early_bird: EarlyBird | bool | None = None,
        early_bird_every: int | None = None,
        run_dir: str | Path | None = None,
        adapter: AdapterArg = AUTO,
        progress: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ArgumentError(f"`model`: expected an nn.Module, found {type(model).__name__}")
        amount = _fraction("amount", amount)
        if pattern is None:
            sparsity = _fraction("sparsity", sparsity)
        if isinstance(rewind_step, bool) or not isinstance(rewind_step, int) or rewind_step < 0:
            raise ArgumentError(f"`rewind_step`: expected an int >= 0, found {rewind_step!r}")
        for name, value in (("one_shot", one_shot), ("progress", progress)):
            if not isinstance(value, bool):  # "no" is truthy: it would mean yes
                raise ArgumentError(f"`{name}`: expected True or False, found {value!r}")
        check_kind(granularity, min_per_layer, pattern, sparsity, scope)
        if pattern is not None:  # one spelling, so that "02:04" resumes a "2:4" run
            pattern = "{}:{}".format(*parse_pattern(pattern))
        if num_heads is not None and (
            granularity == "weight"
            or isinstance(num_heads, bool)
            or not isinstance(num_heads, int)
            or num_heads < 1
        ):
            raise ArgumentError(
                "`num_heads`: expected an int >= 1 with a structured granularity, found "
                f"{num_heads!r} with granularity={granularity!r}"
            )
        self._early_bird = early.settings(early_bird, early_bird_every)
        self.model = model
        self.adapter = auto_adapter(model, adapter)  # resolved once: every round names alike
        self.progress = progress
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._ones = Mask.ones(model, adapter=self.adapter)  # refuses an empty prunable set
        if pattern is not None:
            self._pruner = PatternPruner(self._ones, self.adapter, pattern, amount, one_shot)
            sparsity = self._pruner.sparsity  # 1 - N/M
        elif granularity == "weight":
            self._pruner = WeightPruner(self._ones, self.adapter, sparsity, amount, one_shot, scope)
        else:
            min_per_layer = 1 if min_per_layer is None else min_per_layer
            self._pruner = StructuredPruner(
                model,
                self._ones,
                self.adapter,
                granularity,
                sparsity,
                amount,
                one_shot,
                scope,
                min_per_layer,
                num_heads,
            )
        self.args = {  # the kind of round first: a resume with another kind says so first
            "granularity": granularity,
            "pattern": pattern,
            "sparsity": float(sparsity),
            "amount": amount,
            "rewind_step": rewind_step,
            "one_shot": one_shot,
            "scope": scope,
            "min_per_layer": min_per_layer,
            "num_heads": num_heads,
            "early_bird": self._early_bird,
        }
        self.schedule = self._pruner.schedule
        self.history: list[dict[str, Any]] = []
        self._masks: dict[int, Mask] = {}
        self._init: Checkpoint | None = None
        self._rewind: Checkpoint | None = None
        self._handle = None
        self._round: Round | None = None
        self._began = 0.0
        self._release: weakref.finalize | None = None
        self._lock: tuple[Path, bytes] = (Path(), b"")
        self._run = RunDir(self.run_dir) if self.run_dir is not None else None
        if self._run is not None:
            self._resume()

    # -- the run folder -------------------------------------------------------------------------
    def _resume(self) -> None:
        run = self._run
        token = lock.acquire(run.path)  # also the probe that the folder can be written
        # Released by close(), when the search finishes, when it is collected, or at exit.
        self._lock = (run.path, token)
        self._release = weakref.finalize(self, lock.release, run.path, token)
        try:
            run.remove_partial_files()
            run.open(self.args, self.schedule, self._ones)
            self.history = run.history()
            self._init = run.load_checkpoint(INIT)
            if self.args["rewind_step"]:
                self._rewind = run.load_checkpoint(REWIND)
        except BaseException:
            self.close()
            raise
        if self.finished:
            self.close()

    def close(self) -> None:
        """Release the run folder (its ``.lock``) for another process; idempotent.

        A closed search that is not finished cannot run more rounds; start a new one on the
        same ``run_dir`` to resume.
        """
        if self._release is not None:
            self._release()

    def __enter__(self) -> TicketSearch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        """Refuse to write once closed, or once a newer search in this process took the folder."""
        if self._run is None or self.finished:
            return
        if self._release is None or not self._release.alive or not lock.holds(*self._lock):
            raise VlticketError(
                f"this search of {str(self.run_dir)!r} was closed, or another TicketSearch took "
                "the folder over; iterate over the newest one (a new TicketSearch on the same "
                "`run_dir` resumes it)"
            )

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

    # -- sharing the ticket ---------------------------------------------------------------------
    def ticket(self, *, checkpoint: bool = False, **info: Any) -> Ticket:
        """The finished search as a :class:`~vlticket.hub.Ticket`, described from its run.

        The config records ``method`` ("imp" or "one-shot"), ``amount``, ``rounds``,
        ``rewind_step``, ``scope``, ``granularity`` / ``pattern`` (structured or N:M rounds),
        ``adapter`` and, when each round reported one metric,
        ``metric``, ``score`` (the last round's) and ``dense_score`` (round 0's); ``info``
        (``task``, ``base_model``, ``license``, ``seed`` ...) adds to it and wins over it.

        Args:
            checkpoint: share the rewind checkpoint (θ0 or θi) with the mask.
            **info: ticket information, as :class:`~vlticket.hub.Ticket` takes.
        """
        if not self.finished:
            raise VlticketError(
                f"the search is not finished ({len(self.history)}/{len(self.schedule)} rounds): "
                "a ticket is the mask of the last round"
            )
        one_shot = self.args["one_shot"]
        described: dict[str, Any] = {
            "method": "one-shot" if one_shot else "imp",
            "rounds": len(self.history) - 1,
            "rewind_step": self.args["rewind_step"],
            "scope": self.args["scope"],
        }
        if self.args.get("granularity", "weight") != "weight":
            described["granularity"] = self.args["granularity"]
        if self.args.get("pattern") is not None:
            described["pattern"] = self.args["pattern"]
        if not one_shot:
            described["amount"] = self.args["amount"]
        adapter = resolve(self.adapter)
        if isinstance(adapter, str) or isinstance(getattr(adapter, "name", None), str):
            described["adapter"] = adapter
        names = {tuple(entry["metrics"]) for entry in self.history}
        if len(names) == 1 and len(next(iter(names))) == 1:
            ((metric,),) = names
            described["metric"] = metric
            described["score"] = self.history[-1]["metrics"][metric]
            described["dense_score"] = self.history[0]["metrics"][metric]
        ckpt = self.rewind_checkpoint if checkpoint else None
        return Ticket(self.mask, checkpoint=ckpt, **{**described, **info})

    def save_pretrained(
        self, save_directory: str | Path, *, checkpoint: bool = False, **info: Any
    ) -> Path:
        """Write the ticket folder of the finished search (see :meth:`ticket`).

        Example:
            >>> search.save_pretrained("vqa-ticket", task="vqa", license="mit")  # doctest: +SKIP
        """
        return self.ticket(checkpoint=checkpoint, **info).save_pretrained(save_directory)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        checkpoint: bool = False,
        commit_message: str = "Upload vlticket ticket",
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        **info: Any,
    ) -> str:
        """Upload the ticket of the finished search to ``repo_id`` in one commit; returns the
        commit URL. Arguments as :meth:`ticket` and :meth:`vlticket.hub.Ticket.push_to_hub`.

        Example:
            >>> search.push_to_hub("me/vqa-ticket", task="vqa")  # doctest: +SKIP
        """
        return self.ticket(checkpoint=checkpoint, **info).push_to_hub(
            repo_id,
            commit_message=commit_message,
            private=private,
            token=token,
            revision=revision,
            create_pr=create_pr,
        )

    # -- driving the loop -----------------------------------------------------------------------
    def step(self) -> None:
        """Count one training step by hand, for loops that add no optimizer to the round; in
        round 0 this captures θi at step ``rewind_step``. Once an optimizer is added to the
        round it counts the steps and this call counts nothing. With ``early_bird`` it also
        checks the round's tracker every ``early_bird_every`` steps (see ``rnd.converged``)."""
        rnd = self._round
        if rnd is None:
            raise VlticketError("call `step()` inside a round: `for rnd in search: ...`")
        if not rnd._optimizers:
            rnd.steps += 1
            if self._rewind_due(rnd):
                self._capture_rewind()
        rnd._check_converged()

    def _tracker(self, rnd: Round) -> EarlyBird | None:
        """The early-bird tracker of ``rnd``: it draws the mask ``rnd``'s pruning step would."""
        if self._early_bird is None or rnd.last:
            return None
        return early.tracker(self._early_bird, lambda m: self._pruner.prune(m, rnd.mask, rnd.index))

    def _rewind_due(self, rnd: Round) -> bool:
        return rnd.index == 0 and rnd.steps == self.args["rewind_step"]

    def _capture_rewind(self) -> None:
        ckpt = Checkpoint.capture(model_state(self.model))
        self._save_checkpoint(ckpt, REWIND)
        self._rewind = ckpt
        if self._round is not None:
            self._round._capture_due = False
            logger.info("captured the rewind point θi at step %d", self._round.steps)

    def add_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Add ``optimizer`` to the running round (same as ``rnd.add_optimizer(optimizer)``)."""
        if self._round is None or self._handle is None:
            raise VlticketError("call `add_optimizer()` inside a round: `for rnd in search: ...`")
        self._round.add_optimizer(optimizer)

    def _save_checkpoint(self, ckpt: Checkpoint, name: str) -> None:
        if self._run is not None:
            self._run.save_checkpoint(name, ckpt)

    def _start_weights(self, index: int) -> Checkpoint:
        if index == 0:
            if self._init is None:
                init = Checkpoint.capture(model_state(self.model))
                self._save_checkpoint(init, INIT)
                self._init = init
            return self._init
        ckpt = self.rewind_checkpoint
        if ckpt is None:
            raise FileFormatError(
                f"{str(self.run_dir)!r}: the rewind checkpoint of this run is missing"
            )
        return ckpt

    def __iter__(self) -> Iterator[Round]:
        from tqdm.auto import tqdm

        self._check_open()
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
        self._check_open()
        mask = self.mask_at(index)
        if index == 0 and self._run is not None and not self._run.mask_path(0).exists():
            self._run.save_mask(0, mask)
        self._start_weights(index).restore(model_state(self.model))
        self._handle = mask.attach(self.model, adapter=self.adapter)
        last = index == len(self.schedule) - 1
        rnd = self._round = Round(self, index, mask, last)
        self._began = time.perf_counter()
        try:
            yield rnd
        finally:
            rnd._end()
            self._handle.remove()
            self._handle, self._round = None, None
        if rnd.metrics is None:
            raise VlticketError(f"round {index} ended without `rnd.report(...)`")
        bar.update(1)
        bar.set_postfix({"sparsity": f"{mask.sparsity:.3f}", **rnd.metrics})
        if self.finished:
            self.close()

    def _finish(self, rnd: Round, metrics: dict[str, float]) -> None:
        """End ``rnd``: prune the next mask, write it and then the history, and only then
        change anything in memory, so a failed write leaves the search as it was."""
        self._check_open()
        seconds = time.perf_counter() - self._began
        index, mask = rnd.index, rnd.mask
        self._check_still_pruned(rnd)
        if rnd._capture_due:  # rewind_step was round 0's last step
            self._capture_rewind()
        if index == 0 and self.args["rewind_step"] and self._rewind is None:
            raise VlticketError(
                f"`rewind_step`={self.args['rewind_step']} but round 0 took only {rnd.steps} "
                "steps; add the optimizer with `rnd.add_optimizer(optimizer)`, or call "
                "`search.step()` once per optimizer step"
            )
        nxt = None if rnd.last else self._pruner.prune(self.model, mask, index)
        groups = self._group_sparsity(mask)
        entry = {
            "round": index,
            "sparsity": mask.sparsity,
            "kept": mask.num_kept,
            "metrics": metrics,
            "seconds": round(seconds, 3),
            "steps": rnd.steps,
            "groups": groups,
            **self._pruner.describe(mask, index),
        }
        if rnd.early_bird is not None:
            entry["converged"] = rnd.converged
            entry["distances"] = [round(d, 6) for d in rnd.early_bird.distances]
        history = [*self.history, entry]
        if self._run is not None:
            if nxt is not None:  # a mask beyond the history is ignored until the history says so
                self._run.save_mask(index + 1, nxt)
            self._run.write_history(history)
        # Committed: from here on nothing can fail.
        self.history = history
        if nxt is not None:
            # With a run_dir the masks are on disk: keep one in memory, not one per round.
            self._masks = {} if self._run is not None else self._masks
            self._masks[index + 1] = nxt.to("cpu")
        logger.info("round %d: sparsity %.4f, %s", index, mask.sparsity, metrics)
        logger.info("round %d: sparsity by group %s", index, groups)

    def _group_sparsity(self, mask: Mask) -> dict[str, float]:
        adapter = resolve(self.adapter)
        groups = None
        if callable(getattr(adapter, "groups", None)):
            groups = adapter.groups(list(mask), by="stream")
        if not groups:
            groups = groups_for(list(mask))
        return group_sparsity(mask, groups)

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
