"""The study in miniature: pre-train θ0, find each task's ticket, run the baselines, compare.

A small ViLT (hidden 64, 2 layers) is pre-trained briefly on easy-vqa (θ0), then IMP finds a
ticket on each of two colour tasks; the ticket is compared with random pruning (global, and
matched tensor by tensor) and with the ticket on shuffled weights θ0'' at the same sparsity, the
two tasks' masks are compared (IoU) and task A's ticket is re-trained on task B (Table 1). Then
the pre-training ticket (Table 2, :mod:`.pretraining`), the structured column
(:mod:`.structured`) and the CSR export's speed (:mod:`.speed`). Every number printed comes
from the run; ``results.json`` also holds each part's wall and CPU seconds.
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
from ..hub import Ticket
from ..search import TicketSearch, relaxed_ticket
from . import cheaper as _demo_cheaper
from . import data as _demo_data
from . import model as _demo_model
from . import options as _demo_options
from . import output as _demo_output
from . import pretraining as _demo_pretraining
from . import report as _demo_report
from . import speed as _demo_speed
from . import structured as _demo_structured

logger = logging.getLogger(__name__)


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
        if rnd.index == 0:  # the dense model, where the structured search starts (before the
            # round is recorded, so a recorded round 0 always has it)
            Checkpoint.capture(model_state(model)).save(out / f"dense_{task}.safetensors")
        acc = _demo_model.accuracy(model, test, data.test_images)
        rnd.report(accuracy=acc)
        logger.info(
            "task %s, round %d, sparsity %.3f: accuracy %.3f", task, rnd.index, rnd.sparsity, acc
        )
    return search


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
        done = output.measure(
            f"{task}/{name}",
            lambda a=attach: _demo_model.fit(model, a(), train, test, data, s, seed),
        )
        row[name], row["steps"][name] = done["accuracy"], done["steps"]
    return row


def _save_ticket(search: TicketSearch, adapter, task: str, score: float, dense: float, s, out):
    Ticket(  # a ticket folder: `vlticket inspect` shows it by group
        search.mask,
        adapter=adapter,
        method="imp",
        amount=s["amount"],
        rounds=len(search.history) - 1,
        rewind_step=0,
        scope="global",
        seed=s["seed"],
        task=f"easy-vqa colour {task}" if task in "AB" else "easy-vqa pre-training objective",
        metric="accuracy",
        score=score,
        dense_score=dense,
    ).save_pretrained(out / f"ticket_{task}")


class _Clock:
    """Wall and CPU seconds of each part of the run (the CPU time is what a free core takes)."""

    def __init__(self) -> None:
        self.parts: dict[str, dict[str, float]] = {}
        self._last = (time.perf_counter(), time.process_time())

    def lap(self, part: str) -> None:
        now = (time.perf_counter(), time.process_time())
        wall, cpu = (b - a for a, b in zip(self._last, now, strict=True))
        self.parts[part] = {"wall": round(wall, 2), "cpu": round(cpu, 2)}
        self._last = now


def run_study(s: dict[str, Any], out: Path) -> dict[str, Any]:
    """Run the miniature study with settings ``s``; write into ``out``; return the numbers.

    Finished work in ``out`` from a run with the same settings (θ0, search rounds, baselines)
    is reused; a run with other settings is replaced, and the log says so.
    """
    _demo_data.require_demo_extra()
    torch.set_num_threads(s["threads"])
    began, clock = time.perf_counter(), _Clock()
    output = _demo_output.Output(out, s)
    output.open()
    data = _demo_data.load(max_images=s["max_images"])
    torch.manual_seed(s["seed"])
    model = _demo_model.build_model(len(data.vocab), len(data.answers))
    adapter = adapter_for(model)
    clock.lap("load")
    theta0, pretrain = _demo_pretraining.theta0(model, data, s, output)
    clock.lap("pretrain")
    searches = {task: _find_ticket(model, adapter, theta0, task, data, s, out) for task in "AB"}
    clock.lap("imp")
    rows = {}
    for task, search in searches.items():
        rows[task] = _baselines(model, adapter, theta0, task, search, data, s, output)
        _save_ticket(search, adapter, task, rows[task]["imp"], rows[task]["dense"], s, out)
    a, b = searches["A"].mask, searches["B"].mask
    train_b, test_b = data.train.task("B"), data.test.task("B")
    transfer = output.measure(
        "transfer_A_to_B",
        lambda: _demo_model.fit(
            model,
            baselines.transfer(model, a, theta0, adapter=adapter),
            train_b,
            test_b,
            data,
            s,
            s["seed"] * 1000 + 998,
        ),
    )
    clock.lap("baselines")
    pre = _demo_pretraining.find_ticket(model, adapter, theta0, data, s, out)
    tickets = {task: search.mask for task, search in searches.items()}
    table2 = _demo_pretraining.table(model, adapter, theta0, pre, tickets, rows, data, s, output)
    objective = table2["objective"]
    _save_ticket(pre, adapter, _demo_pretraining.RUN, objective[-1], objective[0], s, out)
    clock.lap("pretraining_ticket")
    structured = {
        task: _demo_structured.search(
            model, adapter, theta0, task, rows[task], data, s, output, out
        )
        for task in searches
    }
    clock.lap("structured")
    csr = {
        task: output.measure(
            f"{task}/csr_speed", lambda m=mask: _demo_speed.csr(model, adapter, theta0, m, data)
        )
        for task, mask in tickets.items()
    }
    clock.lap("csr")
    cheaper = _demo_cheaper.compare(model, adapter, theta0, searches, data, s, output)
    clock.lap("cheaper")
    results: dict[str, Any] = {
        "settings": s,
        "pretrain": pretrain,
        "rows": rows,
        "transfer_A_to_B": transfer["accuracy"],
        "transfer_steps": transfer["steps"],
        "iou_A_B": iou(a, b),
        "iou_random": iou(baselines.random_mask(a, seed=1), baselines.random_mask(b, seed=2)),
        "cheaper": cheaper,
        "history": {t: search.history for t, search in searches.items()},
        "pretraining_ticket": {**table2, "history": pre.history},
        "structured": structured,
        "csr": csr,
        "timing": clock.parts,
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
