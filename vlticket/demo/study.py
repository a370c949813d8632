"""The study in miniature: pre-train θ0, find each task's ticket, run the baselines, compare.

A small ViLT (hidden 64, 2 layers) is pre-trained briefly on easy-vqa (θ0), then IMP finds a
ticket on each of two colour tasks; the ticket is compared with random pruning and with the
ticket on shuffled weights θ0'' at the same sparsity, the two tasks' masks are compared (IoU)
and task A's ticket is re-trained on task B. Every number printed comes from the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
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
from . import data as _demo_data
from . import model as _demo_model
from . import report as _demo_report

logger = logging.getLogger(__name__)

DEFAULTS = {
    "seed": 0,
    "threads": 1,
    "pretrain_steps": 600,
    "pretrain_target": 0.8,
    "steps": 120,
    "batch_size": 32,
    "lr": 1e-3,
    "sparsity": 0.95,
    "amount": 0.3,
}
TINY = {"pretrain_steps": 40, "steps": 8, "sparsity": 0.5, "amount": 0.5, "max_images": 200}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to ``parser`` (used by ``vlticket demo``)."""
    d = DEFAULTS
    parser.add_argument("--out", default="vlticket-demo", help="output folder (masks, plot)")
    parser.add_argument("--seed", type=int, default=d["seed"], help="seed of θ0 and training")
    parser.add_argument("--threads", type=int, default=d["threads"], help="torch CPU threads")
    parser.add_argument(
        "--pretrain-steps", type=int, default=d["pretrain_steps"], help="most pre-training steps"
    )
    parser.add_argument(
        "--pretrain-target",
        type=float,
        default=d["pretrain_target"],
        help="stop pre-training once θ0 answers this fraction of colour questions",
    )
    parser.add_argument("--steps", type=int, default=d["steps"], help="training steps per round")
    parser.add_argument("--batch-size", type=int, default=d["batch_size"])
    parser.add_argument("--lr", type=float, default=d["lr"])
    parser.add_argument("--sparsity", type=float, default=d["sparsity"], help="target sparsity")
    parser.add_argument(
        "--amount", type=float, default=d["amount"], help="fraction pruned per IMP round"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="number of pruning rounds (sets --amount so that --sparsity is reached)",
    )
    parser.add_argument(
        "--tiny", action="store_true", help="a reduced run in seconds (tests; numbers meaningless)"
    )


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    s = {k: getattr(args, k) for k in DEFAULTS}
    s["max_images"] = None
    if args.tiny:
        s.update(TINY)
    for name in ("threads", "steps", "batch_size", "pretrain_steps"):
        if s[name] < 1:
            flag = "--" + name.replace("_", "-")
            raise VlticketError(f"`{flag}`: expected at least 1, found {s[name]}")
    if args.rounds is not None:
        if args.rounds < 1:
            raise VlticketError(f"`--rounds`: expected at least 1, found {args.rounds}")
        s["amount"] = 1.0 - (1.0 - s["sparsity"]) ** (1.0 / args.rounds)
    return s


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


def _fit(model, handle, train, data, test, s, seed: int) -> float:
    """Train with ``handle``'s mask attached, then remove it; test accuracy."""
    _demo_model.train(
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
    return _demo_model.accuracy(model, test, data.test_images)


def _find_ticket(model, adapter, theta0, task: str, data, s, out: Path) -> TicketSearch:
    train, test = data.train.task(task), data.test.task(task)
    run_dir = out / f"task_{task}"
    if (run_dir / "run.json").exists():  # a demo always starts afresh: numbers from this run
        shutil.rmtree(run_dir)
    theta0.restore(model_state(model))
    search = TicketSearch(
        model,
        sparsity=s["sparsity"],
        amount=s["amount"],
        adapter=adapter,
        run_dir=run_dir,
        progress=False,
    )
    for rnd in search:
        _demo_model.train(
            model,
            train,
            data.train_images,
            steps=s["steps"],
            batch_size=s["batch_size"],
            lr=s["lr"],
            seed=s["seed"] * 1000 + rnd.index,
            add_optimizer=rnd.add_optimizer,
        )
        acc = _demo_model.accuracy(model, test, data.test_images)
        rnd.report(accuracy=acc)
        logger.info(
            "task %s, round %d, sparsity %.3f: accuracy %.3f", task, rnd.index, rnd.sparsity, acc
        )
    return search


def run_study(s: dict[str, Any], out: Path) -> dict[str, Any]:
    """Run the miniature study with settings ``s``; write into ``out``; return the numbers."""
    _demo_data.require_demo_extra()
    torch.set_num_threads(s["threads"])
    began = time.perf_counter()
    data = _demo_data.load(max_images=s["max_images"])
    torch.manual_seed(s["seed"])
    model = _demo_model.build_model(len(data.vocab), len(data.answers))
    adapter = adapter_for(model)
    pre_steps, pre_acc = _pretrain(model, data, s)
    theta0 = Checkpoint.capture(model_state(model))
    results: dict[str, Any] = {"settings": s, "pretrain": {"steps": pre_steps, "colour": pre_acc}}
    searches = {task: _find_ticket(model, adapter, theta0, task, data, s, out) for task in "AB"}
    rows = {}
    for task, search in searches.items():
        train, test = data.train.task(task), data.test.task(task)
        ticket = search.mask
        seed = s["seed"] * 1000 + 999
        dense = search.history[0]["metrics"]["accuracy"]
        relaxed = relaxed_ticket(search.history, p=0.99)
        row = rows[task] = {
            "dense": dense,
            "dense_99": 0.99 * dense,
            "sparsity": ticket.sparsity,
            "imp": search.history[-1]["metrics"]["accuracy"],
            "relaxed_sparsity": relaxed.sparsity if relaxed else None,
        }
        # The baselines share the model: each is put in place just before it is trained.
        rand = baselines.random_pruning(model, ticket, theta0, seed=s["seed"], adapter=adapter)
        row["random"] = _fit(model, rand, train, data, test, s, seed)
        shuf = baselines.shuffled_weights(model, ticket, theta0, seed=s["seed"], adapter=adapter)
        row["shuffled"] = _fit(model, shuf, train, data, test, s, seed)
        Ticket(  # a ticket folder: `vlticket inspect` shows it by group
            ticket,
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
            dense_score=dense,
        ).save_pretrained(out / f"ticket_{task}")
    a, b = searches["A"].mask, searches["B"].mask
    handle = baselines.transfer(model, a, theta0, adapter=adapter)
    seed = s["seed"] * 1000 + 998
    train_b, test_b = data.train.task("B"), data.test.task("B")
    results["transfer_A_to_B"] = _fit(model, handle, train_b, data, test_b, s, seed)
    results["iou_A_B"] = iou(a, b)
    results["iou_random"] = iou(baselines.random_mask(a, seed=1), baselines.random_mask(b, seed=2))
    results["rows"] = rows
    results["history"] = {t: search.history for t, search in searches.items()}
    results["seconds"] = time.perf_counter() - began
    _files.atomic_write_bytes(out / "results.json", json.dumps(results, indent=1).encode())
    _demo_report.plot(results, out / "accuracy_vs_sparsity.png")
    return results


def run(args: argparse.Namespace) -> str:
    """Run the demo with parsed ``args``; return the report that ``vlticket demo`` prints."""
    settings = _settings(args)
    out = Path(args.out)
    logger.info("vlticket demo: %s", ", ".join(f"{k}={v}" for k, v in settings.items()))
    results = run_study(settings, out)
    table = _demo_report.format_table(results)
    return f"{table}\n\nmasks, history and plot written to {out}/"
