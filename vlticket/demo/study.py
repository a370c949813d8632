"""The study in miniature: pre-train θ0, find each task's ticket, run the baselines, compare.

A small ViLT (hidden 64, 2 layers) is pre-trained briefly on easy-vqa (θ0), then IMP finds a
ticket on each of two colour tasks; the ticket is compared with random pruning (global, and
matched tensor by tensor) and with the ticket on shuffled weights θ0'' at the same sparsity, the
two tasks' masks are compared (IoU) and task A's ticket is re-trained on task B. Every number
printed comes from the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from .. import _files, baselines
from .._naming import model_state
from ..adapters import adapter_for
from ..core import Checkpoint, iou
from ..errors import VlticketError
from ..hub import Ticket
from ..search import TicketSearch, relaxed_ticket
from . import cheaper as _demo_cheaper
from . import data as _demo_data
from . import model as _demo_model
from . import options as _demo_options
from . import output as _demo_output
from . import report as _demo_report

logger = logging.getLogger(__name__)


def _pretrain(model, data, s: dict[str, Any]) -> tuple[int, float]:
    """Pre-train on every question type, answers sampled evenly, until the colour target."""
    colours = data.train.where(torch.isin(data.train.labels, _colour_ids(data)))
    probe = colours.where(torch.arange(len(colours)) < 512)
    lab = data.train.labels
    weights = 1.0 / torch.bincount(lab).float()[lab]
    g = torch.Generator().manual_seed(s["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    acc, step = 0.0, 0
    while step < s["pretrain_steps"]:
        model.train()
        rows = torch.multinomial(weights, 64, replacement=True, generator=g)
        b = _demo_model.batch(data.train, data.train_images, rows)
        loss = torch.nn.functional.cross_entropy(_demo_model.logits(model, b), b["labels"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0 or step == s["pretrain_steps"]:
            acc = _demo_model.accuracy(model, probe, data.train_images)
            logger.info("pre-training step %d: colour accuracy %.3f", step, acc)
            if acc >= s["pretrain_target"]:
                break
    return step, acc


def _colour_ids(data) -> torch.Tensor:
    names = [*_demo_data.TASKS["A"], *_demo_data.TASKS["B"]]
    return torch.tensor([data.answers.index(a) for a in names])


def _fit(model, handle, train, data, test, s, seed: int) -> dict[str, Any]:
    """Train with ``handle``'s mask attached, then remove it: test accuracy and steps."""
    steps = _demo_model.train(
        model,
        train,
        data.train_images,
        steps=s["steps"],
        batch_size=s["batch_size"],
        lr=s["lr"],
        seed=seed,
        add_optimizer=handle.add_optimizer,
    )
    handle.remove()
    return {"accuracy": _demo_model.accuracy(model, test, data.test_images), "steps": steps}


def _find_ticket(model, adapter, theta0, task: str, data, s, out: Path) -> TicketSearch:
    """IMP on ``task`` in the resumable run folder ``out/task_<task>``: finished rounds stay."""
    train, test = data.train.task(task), data.test.task(task)
    theta0.restore(model_state(model))
    search = TicketSearch(
        model,
        sparsity=s["sparsity"],
        amount=s["amount"],
        adapter=adapter,
        run_dir=out / f"task_{task}",
        progress=False,
    )
    for rnd in search:  # each round's training depends only on its index: resumes match
        _demo_model.train(
            model,
            train,
            data.train_images,
            steps=s["steps"],
            batch_size=s["batch_size"],
            lr=s["lr"],
            seed=s["seed"] * 1000 + rnd.index,
            add_optimizer=rnd.add_optimizer,
            on_step=rnd.step,
        )
        acc = _demo_model.accuracy(model, test, data.test_images)
        rnd.report(accuracy=acc)
        logger.info(
            "task %s, round %d, sparsity %.3f: accuracy %.3f", task, rnd.index, rnd.sparsity, acc
        )
    return search


def _theta0(model, data, s, output: _demo_output.Output) -> tuple[Checkpoint, dict[str, Any]]:
    """θ0 of an earlier run with the same pre-training settings, else pre-train and save it."""
    theta0 = output.theta0()
    if theta0 is not None:
        try:
            theta0.restore(model_state(model))
        except VlticketError as e:  # e.g. saved by a demo whose model differs
            logger.info("%s: cannot reuse θ0 (%s): pre-training afresh", output.path, e)
        else:
            logger.info("reusing θ0 from %s", output.path)
            return theta0, {**output.pretrain, "reused": True}
    steps, acc = _pretrain(model, data, s)
    theta0 = Checkpoint.capture(model_state(model))
    output.save_theta0(theta0, {"steps": steps, "colour": acc})
    return theta0, {"steps": steps, "colour": acc, "reused": False}


def _measure(output, key: str, fit) -> dict[str, Any]:
    """``fit()``'s accuracy and steps, or the ones an earlier run with these settings saved."""
    if key not in output.measured:
        output.record(key, fit())
    return output.measured[key]


def _baselines(model, adapter, theta0, task, search, data, s, output) -> dict[str, Any]:
    """The table row of ``task``: dense, the ticket, and the baselines at its sparsity."""
    train, test = data.train.task(task), data.test.task(task)
    ticket, seed = search.mask, s["seed"] * 1000 + 999
    dense = search.history[0]["metrics"]["accuracy"]
    relaxed = relaxed_ticket(search.history, p=0.99)
    controls = {  # each is put in place on the shared model just before it is trained
        "random": lambda: baselines.random_pruning(
            model, ticket, theta0, seed=s["seed"], adapter=adapter
        ),
        "random_per_tensor": lambda: baselines.random_pruning(
            model, ticket, theta0, per_tensor=True, seed=s["seed"], adapter=adapter
        ),
        "shuffled": lambda: baselines.shuffled_weights(
            model, ticket, theta0, seed=s["seed"], adapter=adapter
        ),
    }
    row = {
        "dense": dense,
        "dense_99": 0.99 * dense,
        "sparsity": ticket.sparsity,
        "imp": search.history[-1]["metrics"]["accuracy"],
        "relaxed_sparsity": relaxed.sparsity if relaxed else None,
        "steps": {"imp_rounds": [h["steps"] for h in search.history]},
    }
    for name, attach in controls.items():
        done = _measure(
            output, f"{task}/{name}", lambda a=attach: _fit(model, a(), train, data, test, s, seed)
        )
        row[name], row["steps"][name] = done["accuracy"], done["steps"]
    return row


def _save_ticket(search: TicketSearch, adapter, task: str, row, s, out: Path) -> None:
    Ticket(  # a ticket folder: `vlticket inspect` shows it by group
        search.mask,
        adapter=adapter,
        method="imp",
        amount=s["amount"],
        rounds=len(search.history) - 1,
        rewind_step=0,
        scope="global",
        seed=s["seed"],
        task=f"easy-vqa colour {task}",
        metric="accuracy",
        score=row["imp"],
        dense_score=row["dense"],
    ).save_pretrained(out / f"ticket_{task}")


def run_study(s: dict[str, Any], out: Path) -> dict[str, Any]:
    """Run the miniature study with settings ``s``; write into ``out``; return the numbers.

    Finished work in ``out`` from a run with the same settings (θ0, search rounds, baselines)
    is reused; a run with other settings is replaced, and the log says so.
    """
    _demo_data.require_demo_extra()
    torch.set_num_threads(s["threads"])
    began = time.perf_counter()
    output = _demo_output.Output(out, s)
    output.open()
    data = _demo_data.load(max_images=s["max_images"])
    torch.manual_seed(s["seed"])
    model = _demo_model.build_model(len(data.vocab), len(data.answers))
    adapter = adapter_for(model)
    theta0, pretrain = _theta0(model, data, s, output)
    searches = {task: _find_ticket(model, adapter, theta0, task, data, s, out) for task in "AB"}
    rows = {}
    for task, search in searches.items():
        rows[task] = _baselines(model, adapter, theta0, task, search, data, s, output)
        _save_ticket(search, adapter, task, rows[task], s, out)
    a, b = searches["A"].mask, searches["B"].mask
    train_b, test_b = data.train.task("B"), data.test.task("B")
    transfer = _measure(
        output,
        "transfer_A_to_B",
        lambda: _fit(
            model,
            baselines.transfer(model, a, theta0, adapter=adapter),
            train_b,
            data,
            test_b,
            s,
            s["seed"] * 1000 + 998,
        ),
    )
    results: dict[str, Any] = {
        "settings": s,
        "pretrain": pretrain,
        "rows": rows,
        "transfer_A_to_B": transfer["accuracy"],
        "transfer_steps": transfer["steps"],
        "iou_A_B": iou(a, b),
        "iou_random": iou(baselines.random_mask(a, seed=1), baselines.random_mask(b, seed=2)),
        "cheaper": _demo_cheaper.compare(model, adapter, theta0, searches, data, s, output),
        "history": {t: search.history for t, search in searches.items()},
        "seconds": time.perf_counter() - began,
    }
    text = json.dumps(results, indent=1, allow_nan=False)
    _files.atomic_write_bytes(out / "results.json", text.encode())
    _demo_report.plot(results, out / "accuracy_vs_sparsity")
    return results


def run(args: argparse.Namespace) -> str:
    """Run the demo with parsed ``args``; return the report that ``vlticket demo`` prints."""
    settings = _demo_options.settings(args)
    out = Path(args.out)
    logger.info("vlticket demo: %s", ", ".join(f"{k}={v}" for k, v in settings.items()))
    results = run_study(settings, out)
    table = _demo_report.format_table(results)
    return f"{table}\n\nmasks, history and plots written to {out}/"
