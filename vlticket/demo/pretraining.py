"""The pre-training objective: θ0, and the ticket IMP finds on it (the study's Table 2).

θ0 is the small ViLT trained on every easy-vqa question type, answers sampled evenly. The
pre-training ticket is IMP on that same objective, rewinding to θ0: its dense round is the
pre-training that made θ0 (no extra training), each later round trains the masked θ0 on the
objective for half a task round's steps. Table 2 then trains that one ticket on each
downstream task and sets it beside the task's own ticket, random pruning and the dense model
at the same sparsity.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from .. import baselines
from .._naming import model_state
from ..core import Checkpoint, iou
from ..errors import VlticketError
from ..search import TicketSearch
from . import data as _data
from . import model as _model
from . import output as _output

logger = logging.getLogger(__name__)

RUN = "pretraining"  # the TicketSearch run folder of the pre-training ticket
PROBE = 1024  # test questions of every type that measure the objective after each round


def round_steps(s: dict[str, Any]) -> int:
    """Training steps of each later round: half a task round's. The rounds only move θ0's
    magnitudes on the objective θ0 was trained on (its accuracy stays within 2 points of θ0's
    over the rounds at full length), and the demo's time budget is shared."""
    return max(1, s["steps"] // 2)


def sampling_weights(split: _data.Split) -> torch.Tensor:
    """One weight per question so that every answer is drawn equally often."""
    return 1.0 / torch.bincount(split.labels).float()[split.labels]


def _colour_ids(data: _data.DemoData) -> torch.Tensor:
    names = [*_data.TASKS["A"], *_data.TASKS["B"]]
    return torch.tensor([data.answers.index(a) for a in names])


def pretrain(model, data: _data.DemoData, s: dict[str, Any]) -> tuple[int, float]:
    """Pre-train on every question type, answers sampled evenly, until the colour target."""
    colours = data.train.where(torch.isin(data.train.labels, _colour_ids(data)))
    probe = colours.where(torch.arange(len(colours)) < 512)
    weights = sampling_weights(data.train)
    g = torch.Generator().manual_seed(s["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    acc, step = 0.0, 0
    while step < s["pretrain_steps"]:
        model.train()
        rows = torch.multinomial(weights, 64, replacement=True, generator=g)
        b = _model.batch(data.train, data.train_images, rows)
        loss = torch.nn.functional.cross_entropy(_model.logits(model, b), b["labels"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0 or step == s["pretrain_steps"]:
            acc = _model.accuracy(model, probe, data.train_images)
            logger.info("pre-training step %d: colour accuracy %.3f", step, acc)
            if acc >= s["pretrain_target"]:
                break
    return step, acc


def theta0(model, data, s, output: _output.Output) -> tuple[Checkpoint, dict[str, Any]]:
    """θ0 of an earlier run with the same pre-training settings, else pre-train and save it."""
    saved = output.theta0()
    if saved is not None:
        try:
            saved.restore(model_state(model))
        except VlticketError as e:  # e.g. saved by a demo whose model differs
            logger.info("%s: cannot reuse θ0 (%s): pre-training afresh", output.path, e)
        else:
            logger.info("reusing θ0 from %s", output.path)
            return saved, {**output.pretrain, "reused": True}
    steps, acc = pretrain(model, data, s)
    made = Checkpoint.capture(model_state(model))
    output.save_theta0(made, {"steps": steps, "colour": acc})
    return made, {"steps": steps, "colour": acc, "reused": False}


def find_ticket(model, adapter, init: Checkpoint, data, s, out: Path) -> TicketSearch:
    """IMP on the pre-training objective from θ0, in the resumable run folder ``out/RUN``."""
    probe = data.test.where(torch.arange(len(data.test)) < PROBE)
    weights = sampling_weights(data.train)
    init.restore(model_state(model))
    search = TicketSearch(
        model,
        sparsity=s["sparsity"],
        amount=s["amount"],
        adapter=adapter,
        run_dir=out / RUN,
        progress=False,
    )
    for rnd in search:
        if rnd.index > 0:  # round 0 is the pre-training that made θ0: its weights are θ0
            _model.train(
                model,
                data.train,
                data.train_images,
                steps=round_steps(s),
                batch_size=s["batch_size"],
                lr=s["lr"],
                seed=s["seed"] * 1000 + 500 + rnd.index,
                add_optimizer=rnd.add_optimizer,
                on_step=rnd.step,
                weights=weights,
            )
        acc = _model.accuracy(model, probe, data.test_images)
        rnd.report(accuracy=acc)
        logger.info(
            "pre-training ticket, round %d, sparsity %.3f: accuracy %.3f (all question types)",
            rnd.index,
            rnd.sparsity,
            acc,
        )
    return search


def table(model, adapter, init, search: TicketSearch, tickets, rows, data, s, output):
    """Table 2: the pre-training ticket trained on each task, beside the task's own ticket,
    random pruning and dense (from ``rows``, Table 1), and its IoU with the task's ticket."""
    ticket = search.mask
    out: dict[str, Any] = {
        "sparsity": ticket.sparsity,
        "objective": [h["metrics"]["accuracy"] for h in search.history],
        "steps": [h["steps"] for h in search.history],
        "tasks": {},
    }
    for task, own in tickets.items():
        train, test = data.train.task(task), data.test.task(task)
        done = output.measure(
            f"{task}/pretraining_ticket",
            lambda t=train, e=test: _model.fit(
                model,
                baselines.transfer(model, ticket, init, adapter=adapter),
                t,
                e,
                data,
                s,
                s["seed"] * 1000 + 997,
            ),
        )
        row = rows[task]
        out["tasks"][task] = {
            "dense": row["dense"],
            "own": row["imp"],
            "own_sparsity": row["sparsity"],
            "pretraining": done["accuracy"],
            "random": row["random"],
            "iou": iou(ticket, own),
            "steps": done["steps"],
        }
    return out
