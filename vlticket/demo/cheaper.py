"""Cheaper tickets in the demo (issue 14): early-bird IMP, SNIP, GraSP, SynFlow and RigL against
dense and IMP on each task, at the ticket's sparsity, from the same θ0.

Every method ends in a mask at the demo's sparsity that is trained from θ0 with the demo's own
loop; the table gives its test accuracy, the optimizer steps it cost in all (search and final
training; scoring passes are not training steps and are stated apart) and the IoU of its mask
with IMP's ticket. IMP's own numbers are the search's history, so nothing here re-runs IMP.

- early-bird IMP: the demo's IMP (same seeds, same schedule), each round's training stopped once
  :class:`~vlticket.EarlyBird` says the next round's mask has settled; the ticket's own round is
  trained in full.
- SNIP, GraSP (a few training batches) and SynFlow (data-free): scored at θ0, trained once.
- RigL: one training from θ0's magnitude mask, dropping and growing weights as it goes.

Each finished measurement is kept in the output folder's ``demo.json``, so a re-run reuses it.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch

from .. import saliency
from .._naming import model_state
from ..core import Checkpoint, Mask, iou, prune_magnitude
from ..dynamic import DynamicSparsity
from ..early_bird import EarlyBird
from ..search import TicketSearch
from . import data as _demo_data
from . import model as _demo_model

logger = logging.getLogger(__name__)

METHODS = ("early_bird_imp", "snip", "grasp", "synflow", "rigl")
NAMES = {
    "dense": "dense",
    "imp": "IMP",
    "early_bird_imp": "early-bird IMP",
    "snip": "SNIP",
    "grasp": "GraSP",
    "synflow": "SynFlow",
    "rigl": "RigL",
}
GOAL_POINTS, GOAL_STEPS = 0.01, 0.25  # within 1 point of IMP with at most 1/4 of its steps


def settings(s: dict[str, Any]) -> dict[str, Any]:
    """The methods' settings for the demo settings ``s`` (one training of ``s["steps"]`` each)."""
    steps = s["steps"]
    return {
        "train_steps": steps,  # each mask is trained once, as long as one IMP round
        # early-bird: a check every 2 steps at the demo's 120 (up to 60 a round); from
        # pre-trained weights the mask settles at once (measured), so a round then costs
        # queue * check_every steps
        "check_every": max(1, steps // 60),
        "queue": 5,  # You et al.'s queue and ε
        "epsilon": 0.1,
        "score_batches": 4,  # SNIP and GraSP: batches of the demo's batch size
        "synflow_iterations": 100,
        "rigl_update_every": max(1, steps // 12),  # ΔT: 10 updates, the last at 75% (RigL)
        "rigl_end": max(1, (3 * steps) // 4),
        "rigl_alpha": 0.3,
    }


class _Stop(Exception):
    """Ends the demo's training loop from its ``on_step`` callback (the early-bird break)."""


class _Task:
    """One task's data and the shared model, θ0 and settings the methods train with."""

    def __init__(self, model, adapter, theta0: Checkpoint, task: str, data, s, c) -> None:
        self.model, self.adapter, self.theta0, self.data = model, adapter, theta0, data
        self.s, self.c = s, c
        self.train, self.test = data.train.task(task), data.test.task(task)

    def fit(self, mask: Mask, seed: int, *, dynamic: bool = False) -> tuple[float, int, Mask]:
        """Train ``mask`` once from θ0 (with RigL when ``dynamic``): accuracy, steps, the mask."""
        self.theta0.restore(model_state(self.model))
        handle = mask.clone().attach(self.model, adapter=self.adapter)
        rigl: list[DynamicSparsity] = []

        def add_optimizer(optimizer: torch.optim.Optimizer) -> None:
            handle.add_optimizer(optimizer)
            if dynamic:
                rigl.append(
                    DynamicSparsity(
                        handle,
                        optimizer,
                        update_every=self.c["rigl_update_every"],
                        end=self.c["rigl_end"],
                        alpha=self.c["rigl_alpha"],
                    )
                )

        try:
            steps = _demo_model.train(
                self.model,
                self.train,
                self.data.train_images,
                steps=self.c["train_steps"],
                batch_size=self.s["batch_size"],
                lr=self.s["lr"],
                seed=seed,
                add_optimizer=add_optimizer,
                on_step=(lambda: rigl[0].step()) if dynamic else None,
            )
            trained = handle.mask.clone()  # RigL changed it in place
        finally:
            for r in rigl:
                r.remove()
            handle.remove()
        return self.accuracy(), steps, trained

    def accuracy(self) -> float:
        return _demo_model.accuracy(self.model, self.test, self.data.test_images)

    def batches(self) -> list[dict[str, torch.Tensor]]:
        """SNIP's and GraSP's scoring batches: the task's training questions, seeded."""
        g = torch.Generator().manual_seed(self.s["seed"] * 1000 + 997)
        size = self.s["batch_size"]
        return [
            _demo_model.batch(
                self.train,
                self.data.train_images,
                torch.randint(0, len(self.train), (size,), generator=g),
            )
            for _ in range(self.c["score_batches"])
        ]


def _loss(model, b) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(_demo_model.logits(model, b), b["labels"])


def _ones(model) -> torch.Tensor:
    """SynFlow's input: all-ones word and image embeddings in float64 (one question)."""
    hidden = model.config.hidden_size
    patches = 1 + (model.config.image_size // model.config.patch_size) ** 2
    ones = {
        "inputs_embeds": torch.ones(1, _demo_data.MAX_WORDS, hidden, dtype=torch.float64),
        "image_embeds": torch.ones(1, patches, hidden, dtype=torch.float64),
    }
    b = {"attention_mask": torch.ones(1, _demo_data.MAX_WORDS, dtype=torch.long)}
    return _demo_model.forward(model, b, ones)


def _at_init(t: _Task, method: str, seed: int) -> tuple[float, int, Mask]:
    t.theta0.restore(model_state(t.model))
    if method == "synflow":
        mask = saliency.prune_at_init(
            t.model,
            "synflow",
            sparsity=t.s["sparsity"],
            forward=_ones,
            iterations=t.c["synflow_iterations"],
            adapter=t.adapter,
        )
    else:
        mask = saliency.prune_at_init(
            t.model,
            method,
            sparsity=t.s["sparsity"],
            loss_fn=_loss,
            batches=t.batches(),
            adapter=t.adapter,
        )
    return t.fit(mask, seed)


def _rigl(t: _Task, seed: int) -> tuple[float, int, Mask]:
    t.theta0.restore(model_state(t.model))  # start from θ0's magnitude mask: the free guess
    start = prune_magnitude(t.model, sparsity=t.s["sparsity"], adapter=t.adapter)
    return t.fit(start, seed, dynamic=True)


def _early_bird_imp(t: _Task) -> tuple[float, int, Mask, list[int]]:
    """The demo's IMP with each round's training ended once the next mask has settled."""
    s, c = t.s, t.c
    t.theta0.restore(model_state(t.model))
    search = TicketSearch(
        t.model, sparsity=s["sparsity"], amount=s["amount"], adapter=t.adapter, progress=False
    )
    numel = search.mask_at(0).numel
    accuracy = 0.0
    for rnd in search:
        bird = None
        if not rnd.last:  # the ticket's own round is its final training: in full
            target = search.schedule[rnd.index + 1] / numel
            bird = EarlyBird(
                sparsity=target, epsilon=c["epsilon"], queue=c["queue"], adapter=t.adapter
            )

        def check(rnd=rnd, bird=bird) -> None:
            # rnd.steps already counts the step just taken (the round's optimizer hook)
            if bird is not None and rnd.steps % c["check_every"] == 0 and bird.check(t.model):
                raise _Stop

        with contextlib.suppress(_Stop):  # the round's mask has settled
            _demo_model.train(
                t.model,
                t.train,
                t.data.train_images,
                steps=c["train_steps"],
                batch_size=s["batch_size"],
                lr=s["lr"],
                seed=s["seed"] * 1000 + rnd.index,  # IMP's own seeds: only the stopping differs
                add_optimizer=rnd.add_optimizer,
                on_step=check,
            )
        if rnd.last:
            accuracy = t.accuracy()
            rnd.report(accuracy=accuracy)
        else:
            rnd.report(checks=bird.checks)
    round_steps = [h["steps"] for h in search.history]
    return accuracy, sum(round_steps), search.mask, round_steps


def _emptied(mask: Mask) -> int:
    """How many tensors ``mask`` prunes entirely (layer collapse: the signal must bypass them)."""
    return sum(1 for keep in mask.values() if not bool(keep.any()))


def _record(imp: Mask, accuracy: float, steps: int, mask: Mask, **extra: Any) -> dict[str, Any]:
    return {
        "accuracy": accuracy,
        "steps": steps,
        "iou": iou(mask, imp),
        "sparsity": mask.sparsity,
        "emptied": _emptied(mask),
        **extra,
    }


def compare_task(model, adapter, theta0, task, search, data, s, output) -> dict[str, Any]:
    """Dense, IMP and the cheaper methods on ``task``, IMP's numbers from its ``search``.

    Returns ``{"rows": {method: {"accuracy", "steps", "iou", "sparsity", ...}}, "goal": ...}``;
    early-bird IMP's row also lists the steps of each of its rounds.
    """
    c = settings(s)
    t = _Task(model, adapter, theta0, task, data, s, c)
    imp, history = search.mask, search.history
    rows: dict[str, dict[str, Any]] = {
        "dense": {"accuracy": history[0]["metrics"]["accuracy"], "steps": history[0]["steps"]},
        "imp": {
            "accuracy": history[-1]["metrics"]["accuracy"],
            "steps": sum(h["steps"] for h in history),
            "iou": 1.0,
            "sparsity": imp.sparsity,
            "emptied": _emptied(imp),
        },
    }
    seed = s["seed"] * 1000 + 999  # the baselines' seed: every mask sees the same batches

    def early_bird() -> dict[str, Any]:
        acc, steps, mask, per_round = _early_bird_imp(t)
        return _record(imp, acc, steps, mask, round_steps=per_round)

    runs = {
        "early_bird_imp": early_bird,
        "snip": lambda: _record(imp, *_at_init(t, "snip", seed)),
        "grasp": lambda: _record(imp, *_at_init(t, "grasp", seed)),
        "synflow": lambda: _record(imp, *_at_init(t, "synflow", seed)),
        "rigl": lambda: _record(imp, *_rigl(t, seed)),
    }
    for method, run in runs.items():
        rows[method] = output.measure(f"{task}/cheaper/{method}", run)
        logger.info(
            "task %s, %s: accuracy %.3f in %d steps, IoU with IMP %.3f",
            task,
            NAMES[method],
            rows[method]["accuracy"],
            rows[method]["steps"],
            rows[method]["iou"],
        )
    return {"rows": rows, "goal": goal(rows)}


def compare(model, adapter, theta0, searches, data, s, output) -> dict[str, Any]:
    """The cheaper-tickets comparison on every task of ``searches`` (task -> finished IMP search),
    for ``results.json``'s ``"cheaper"`` key."""
    tasks = {
        task: compare_task(model, adapter, theta0, task, search, data, s, output)
        for task, search in searches.items()
    }
    tensors = len(next(iter(searches.values())).mask)
    return {"settings": settings(s), "sparsity": s["sparsity"], "tensors": tensors, "tasks": tasks}


def goal(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Which methods came within 1 point of IMP with <= 1/4 of its steps; how far each was."""
    imp = rows["imp"]
    budget = GOAL_STEPS * imp["steps"]
    methods = {}
    for method in METHODS:
        r = rows[method]
        short = imp["accuracy"] - r["accuracy"]  # accuracy points below IMP (negative: above)
        methods[method] = {
            "short": short,
            "steps_ratio": r["steps"] / imp["steps"],
            "met": short <= GOAL_POINTS + 1e-12 and r["steps"] <= budget,
        }
    return {"met": [m for m in METHODS if methods[m]["met"]], "methods": methods}


def sentence(task: str, result: dict[str, Any]) -> str:
    """The plain answer to the issue's goal for one task, from its numbers."""
    rows, g = result["rows"], result["goal"]
    imp = rows["imp"]
    head = (
        f"Task {task}: IMP {imp['accuracy']:.3f} in {imp['steps']} steps "
        f"(1/4: {GOAL_STEPS * imp['steps']:g})."
    )
    if g["met"]:
        done = ", ".join(
            f"{NAMES[m]} ({rows[m]['accuracy']:.3f}, {rows[m]['steps']} steps)" for m in g["met"]
        )
        return f"{head} Within 1 point of IMP with <= 1/4 of its steps: {done}."
    parts = []
    for m in METHODS:
        info = g["methods"][m]
        why = []
        if info["short"] > GOAL_POINTS + 1e-12:
            why.append(f"{100 * info['short']:.1f} points below")
        if info["steps_ratio"] > GOAL_STEPS:
            why.append(f"used {rows[m]['steps']} steps ({info['steps_ratio']:.2f} of IMP's)")
        parts.append(f"{NAMES[m]} {' and '.join(why)}")
    return (
        f"{head} None came within 1 point of IMP with <= 1/4 of its steps: "
        + "; ".join(parts)
        + "."
    )


def format_table(cheaper: dict[str, Any]) -> str:
    """The comparison as a table (one column group per task) and the goal's sentences."""
    tasks = cheaper["tasks"]
    c = cheaper["settings"]
    cols = ("acc", "steps", "IoU")
    head = f"{'method':<15}" + "".join(f"  {f'{t} {col}':>9}" for t in tasks for col in cols)
    lines = [
        f"Cheaper tickets at {cheaper['sparsity']:.1%} sparsity, each trained from θ0 "
        f"(test accuracy, training steps in all, IoU of the mask with IMP's):",
        head,
    ]
    for method in ("dense", "imp", *METHODS):
        cells = []
        for result in tasks.values():
            r = result["rows"][method]
            score = "-" if "iou" not in r else f"{r['iou']:.3f}"
            cells += [f"{r['accuracy']:.3f}", str(r["steps"]), score]
        lines.append(f"{NAMES[method]:<15}" + "".join(f"  {x:>9}" for x in cells))
    lines.append(
        f"Steps: IMP's rounds in all; early-bird IMP stops each round once {c['queue']} checks "
        f"{c['check_every']} step(s) apart agree within ε {c['epsilon']:g}, then trains the ticket "
        f"{c['train_steps']} steps; the others train once for {c['train_steps']} steps. Not "
        f"counted: SNIP and GraSP scoring ({c['score_batches']} batches), SynFlow "
        f"({c['synflow_iterations']} data-free passes). RigL: from θ0's magnitude mask, every "
        f"{c['rigl_update_every']} steps until {c['rigl_end']}, α {c['rigl_alpha']:g}."
    )
    emptied = ", ".join(
        f"{NAMES[m]} " + "/".join(str(r["rows"][m]["emptied"]) for r in tasks.values())
        for m in ("imp", *METHODS)
    )
    lines.append(
        f"Weight tensors pruned entirely (of {cheaper['tensors']}), task {'/'.join(tasks)}: "
        f"{emptied}."
    )
    lines += [sentence(task, result) for task, result in tasks.items()]
    return "\n".join(lines)
