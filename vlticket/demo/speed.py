"""What a ticket gains on this CPU: the shrunk structured ticket and the CSR-exported ticket.

Each pair of models answers the same batch of ``BATCH`` test questions; they take turns, one
forward pass each, ``REPEATS`` times after ``WARMUP``, so that a change of load on a shared
machine hits both alike, and the median time per forward pass is kept. Both models must give
the same answers: the largest absolute difference of their logits is recorded beside the times.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch
from torch import nn

from .._naming import model_state
from ..core import Checkpoint, Mask
from ..export import SparseLinear, export
from ..shrink import shrink
from . import model as _model

BATCH = 64
WARMUP = 3
REPEATS = 15


def _inputs(data) -> dict[str, torch.Tensor]:
    return _model.batch(data.test, data.test_images, torch.arange(BATCH))


@torch.inference_mode()
def outputs(model: nn.Module, data) -> torch.Tensor:
    """The logits of ``model`` on the timed batch."""
    return _model.logits(model.eval(), _inputs(data))


@torch.inference_mode()
def compare(baseline: nn.Module, candidate: nn.Module, data) -> dict[str, Any]:
    """Median milliseconds per forward pass of both models, and the candidate's speed-up."""
    b = _inputs(data)
    times: dict[str, list[float]] = {"baseline": [], "candidate": []}
    pair = {"baseline": baseline.eval(), "candidate": candidate.eval()}
    for i in range(WARMUP + REPEATS):
        for name, m in pair.items():
            began = time.perf_counter()
            _model.logits(m, b)
            if i >= WARMUP:
                times[name].append(time.perf_counter() - began)
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    return {
        "baseline_ms": ms["baseline"],
        "candidate_ms": ms["candidate"],
        "speedup": ms["baseline"] / ms["candidate"],
        "batch": BATCH,
        "threads": torch.get_num_threads(),
    }


def _difference(a: nn.Module, b: nn.Module, data) -> float:
    return float((outputs(a, data) - outputs(b, data)).abs().max())


def shrunk(model, adapter, init: Checkpoint, mask: Mask, data) -> dict[str, Any]:
    """θ0 with ``mask``'s heads and neurons removed (:func:`vlticket.shrink`) against the
    dense θ0; its answers are checked against the masked dense model's."""
    init.restore(model_state(model))
    dense, small = copy.deepcopy(model), copy.deepcopy(model)
    mask.apply(small, adapter=adapter)
    masked = copy.deepcopy(small)
    shrink(small, mask, adapter=adapter)
    return {
        **compare(dense, small, data),
        "params": sum(p.numel() for p in dense.parameters()),
        "params_shrunk": sum(p.numel() for p in small.parameters()),
        "max_abs_diff": _difference(masked, small, data),
    }


def csr(model, adapter, init: Checkpoint, mask: Mask, data) -> dict[str, Any]:
    """The ticket exported with ``vlticket.export(..., to="csr")`` against the masked dense
    model: layers below the export's crossover sparsity stay dense."""
    init.restore(model_state(model))
    mask.apply(model, adapter=adapter)
    masked, exported = copy.deepcopy(model), copy.deepcopy(model)
    export(exported, mask, to="csr", adapter=adapter)
    sparse = [m for m in exported.modules() if isinstance(m, SparseLinear)]
    return {
        **compare(masked, exported, data),
        "csr_layers": len(sparse),
        "pruned_layers": len(mask),
        "max_abs_diff": _difference(masked, exported, data),
    }
