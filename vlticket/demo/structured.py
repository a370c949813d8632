"""The structured column: how many attention heads and FFN neurons a task can lose (issue 12).

Structured IMP on each task: starting from the task's dense model (IMP's round 0), each round
prunes ``AMOUNT`` of the still-kept heads and of the still-kept neurons with the lowest L1 norm
(:func:`vlticket.prune_structured`, at least one head per layer), rewinds to θ0 and trains the
task with that mask. It stops at the first round below 99% of dense accuracy, or after
``ROUNDS``. The largest mask that kept 99% is then removed for real (:func:`vlticket.shrink`)
and the smaller dense model is timed against the dense one on this CPU.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .._naming import model_state
from ..adapters import blocks_for
from ..core import Checkpoint, Mask
from ..core.structured import unit_state
from ..structured import prune_structured
from . import model as _model
from . import speed as _speed

logger = logging.getLogger(__name__)

ROUNDS = 2  # 50% then 75% of heads and of neurons: the demo's time budget is shared
AMOUNT = 0.5  # of the kept heads and neurons per round: 8 heads -> 4 -> 2 (one per layer)


def _prune(model, adapter, mask: Mask | None) -> Mask:
    """The next mask: ``AMOUNT`` of the kept heads, then of the kept neurons, by weight norm;
    fewer heads where only one per layer would be left."""
    for kind in ("head", "neuron"):
        blocks = [site.block for site in blocks_for(model, adapter, kind=kind)]
        states = unit_state(blocks, mask).values() if mask is not None else ()
        kept = [int((st != 0).sum()) for st in states] or [b.count for b in blocks]
        total, spare = sum(b.count for b in blocks), sum(k - 1 for k in kept)
        count = min(round(AMOUNT * sum(kept)), spare)
        if count:
            sparsity = (total - sum(kept) + count) / total
            mask = prune_structured(
                model, granularity=kind, sparsity=sparsity, mask=mask, adapter=adapter
            )
    return mask


def removed(model, adapter, mask: Mask) -> dict[str, float]:
    """The fraction of all heads and of all FFN neurons that ``mask`` prunes whole."""
    out = {}
    for kind in ("head", "neuron"):
        blocks = [site.block for site in blocks_for(model, adapter, kind=kind)]
        states = unit_state(blocks, mask).values()
        out[kind] = sum(int((s == 0).sum()) for s in states) / sum(b.count for b in blocks)
    return out


def _dense_weights(task: str, out: Path) -> Checkpoint:
    return Checkpoint.load(out / f"dense_{task}.safetensors")


def search(model, adapter, init: Checkpoint, task: str, row, data, s, output, out: Path):
    """Structured IMP on ``task``; each round's mask is saved before the round is recorded, so
    a re-run resumes after the last recorded round."""
    folder = out / f"structured_{task}"
    folder.mkdir(exist_ok=True)
    train, test = data.train.task(task), data.test.task(task)
    target = 0.99 * row["dense"]
    rounds: list[dict[str, Any]] = []
    path = folder / "mask_1.safetensors"
    if not path.exists():
        _dense_weights(task, out).restore(model_state(model))
        _prune(model, adapter, None).save(path)
    for k in range(1, ROUNDS + 1):
        mask = Mask.load(folder / f"mask_{k}.safetensors")

        def fit(mask=mask, k=k) -> dict[str, Any]:
            init.restore(model_state(model))
            handle = mask.attach(model, adapter=adapter)
            done = _model.fit(model, handle, train, test, data, s, s["seed"] * 1000 + 100 + k)
            if k < ROUNDS and done["accuracy"] >= target:  # the next round's mask, saved first
                _prune(model, adapter, mask).save(folder / f"mask_{k + 1}.safetensors")
            return {**done, **removed(model, adapter, mask)}

        done = output.measure(f"{task}/structured/{k}", fit)
        rounds.append(done)
        logger.info(
            "task %s, structured round %d: %.0f%% of heads, %.0f%% of neurons removed: "
            "accuracy %.3f",
            task,
            k,
            100 * done["head"],
            100 * done["neuron"],
            done["accuracy"],
        )
        if done["accuracy"] < target:
            break
    passed = [k for k, r in enumerate(rounds, 1) if r["accuracy"] >= target]
    best = passed[-1] if passed else None
    result: dict[str, Any] = {"rounds": rounds, "best_round": best, "speed": None}
    if best is not None:
        mask = Mask.load(folder / f"mask_{best}.safetensors")
        result["speed"] = output.measure(
            f"{task}/structured/speed", lambda: _speed.shrunk(model, adapter, init, mask, data)
        )
    return result
