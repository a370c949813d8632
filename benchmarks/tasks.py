"""One benchmark measurement per call, run in a fresh process: ``python tasks.py '<json spec>'``.

Prints one JSON line. Each task builds its own random weights, so memory peaks are the task's.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
from export_tasks import TASKS as EXPORT_TASKS
from measure import peak_extra, rss, timed
from models import build
from torch import nn
from torch.nn.utils import prune as torch_prune

import vlticket
from vlticket import MaskHandle

IMP_ROUND9_SPARSITY = 1 - 0.9**9  # pruned fraction after 9 rounds of 10%


# -- the three ways of pruning compared -----------------------------------------------------
def _modules(weights: dict[str, torch.Tensor]) -> list[nn.Module]:
    out = []
    for w in weights.values():
        m = nn.Module()
        m.weight = nn.Parameter(w, requires_grad=False)  # shares storage: no copy
        out.append(m)
    return out


_scratch: dict[str, torch.Tensor] = {}


def _floor(weights) -> float:
    """One read pass, ``sum(|w|.sum())``, with |w| in a reused buffer so the allocator's page
    faults do not blur the floor."""
    n = max(w.numel() for w in weights.values())
    if _scratch.get("buf") is None or _scratch["buf"].numel() < n:
        _scratch["buf"] = torch.empty(n)
    buf = _scratch["buf"]
    return float(sum(torch.abs(w, out=buf[: w.numel()].view_as(w)).sum() for w in weights.values()))


def _torch_setup(weights, prior):
    mods = _modules(weights)
    if prior is not None:
        for m, n in zip(mods, weights, strict=True):
            torch_prune.custom_from_mask(m, "weight", prior[n])
    return mods


def _torch_prune(mods, amount: float) -> None:
    torch_prune.global_unstructured(
        [(m, "weight") for m in mods], pruning_method=torch_prune.L1Unstructured, amount=amount
    )


def _zero_pruned(weights, mask) -> None:
    """What ``mask.apply`` does, via NumPy (torch's bool kernels are slow on CPU)."""
    for n, w in weights.items():
        np.multiply(w.numpy(), mask[n].numpy(), out=w.numpy())


def _scenario(spec):
    """Weights, the prior mask (None from dense) and the prune arguments of a scenario."""
    weights = build(spec["model"], spec["quick"])
    if spec["scenario"] == "dense20":
        return weights, None, {"sparsity": 0.2}, 0.2
    prior = vlticket.prune_magnitude(weights, sparsity=IMP_ROUND9_SPARSITY)
    _zero_pruned(weights, prior)
    return weights, prior, {"amount": 0.1, "mask": prior}, 0.1


def prune(spec) -> dict:
    """vlticket's peak memory and the floor's, then interleaved repeats of both."""
    weights, _, kwargs, _ = _scenario(spec)
    peak, _, mask = peak_extra(lambda: vlticket.prune_magnitude(weights, **kwargs))
    floor_peak, _, _ = peak_extra(lambda: _floor(weights))
    del mask
    times = {"vlticket": [], "floor": []}
    for _ in range(spec["repeats"]):
        times["floor"].append(timed(lambda: _floor(weights)))
        times["vlticket"].append(timed(lambda: vlticket.prune_magnitude(weights, **kwargs)))
    mask_bytes = sum(w.numel() for w in weights.values())  # one bool byte per weight
    return {"times": times, "peak": peak, "floor_peak": floor_peak, "mask_bytes": mask_bytes}


def prune_torch(spec) -> dict:
    """One global_unstructured call: peak extra memory and time; checks the masks agree."""
    weights, prior, kwargs, amount = _scenario(spec)
    mods = _torch_setup(weights, prior)
    peak, seconds, _ = peak_extra(lambda: _torch_prune(mods, amount))
    ours = vlticket.prune_magnitude(weights, **kwargs)
    return {"peak": peak, "seconds": seconds, "differ": _differences(weights, mods, ours)}


def _differences(weights, mods, ours) -> dict:
    """Entries where torch's mask and ours differ, and whether all are ties at the threshold.

    float32 magnitudes repeat at this scale; torch's topk breaks ties arbitrarily, vlticket by
    name order then index, so masks may differ only among entries equal to the threshold.
    """
    threshold = max(
        float(w[~ours[n]].abs().max()) if (~ours[n]).any() else 0.0 for n, w in weights.items()
    )
    count, ties_only = 0, True
    for m, n in zip(mods, weights, strict=True):
        diff = m.weight_mask.bool() != ours[n]
        count += int(diff.sum())
        ties_only &= bool((weights[n][diff].abs() == threshold).all())
    return {"count": count, "ties_only": ties_only}


def imp_rounds(spec) -> dict:
    """Nine rounds of 10% in a row: time per round and resident memory after each."""
    weights = build(spec["model"], spec["quick"])
    base = rss()
    mask, times, floors, retained = None, [], [], []
    for _ in range(9):
        floors.append(timed(lambda: _floor(weights)))
        start = time.perf_counter()
        mask = vlticket.prune_magnitude(weights, amount=0.1, mask=mask)
        times.append(time.perf_counter() - start)
        _zero_pruned(weights, mask)  # the rewind keeps pruned weights at zero
        retained.append(rss() - base)
    return {"times": times, "floors": floors, "retained": retained, "sparsity": mask.sparsity}


# -- training step --------------------------------------------------------------------------
def _bert(seed: int, quick: bool):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = (
        BertConfig()
        if not quick
        else BertConfig(
            hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=1024
        )
    )
    return BertModel(cfg).train()


def _encoder_weights(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if n.startswith("encoder.") and p.dim() == 2}


def train_step(spec) -> dict:
    """Forward, backward and AdamW of three copies: dense, mask attached, torch prune hooks.

    ``spec["adamw"]`` picks torch's AdamW implementation: "fused" or "for-loop" (the default
    on CPU). Steps run in rotating order so drift in the machine's speed hits all three alike.
    """
    dense, masked, hooked = (_bert(0, spec["quick"]) for _ in range(3))
    fused = spec["adamw"] == "fused"

    def adamw(model):
        return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)

    opts = {m: adamw(m) for m in (dense, masked)}
    weights = _encoder_weights(masked)
    mask = vlticket.prune_magnitude(weights, sparsity=spec["sparsity"])
    mods = [hooked.get_submodule(n.rsplit(".", 1)[0]) for n in _encoder_weights(hooked)]
    torch_prune.global_unstructured(
        [(m, "weight") for m in mods], torch_prune.L1Unstructured, amount=spec["sparsity"]
    )
    opts[hooked] = adamw(hooked)

    upkeep = _Stopwatch()  # vlticket's hooks: gradient masking and the step checks
    for name in ("_before_exact_step", "_after_exact_step", "_after_any_step"):
        setattr(MaskHandle, name, upkeep.wrap(getattr(MaskHandle, name)))
    vlticket.core.attach._zero_pruned = upkeep.wrap(
        vlticket.core.attach._zero_pruned
    )  # looked up at call
    mask.attach(weights, opts[masked])
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, dense.config.vocab_size, (spec["batch"], spec["seq"]), generator=g)

    def step(model):
        if model is masked:
            upkeep.laps.append(0.0)
        opt = opts[model]
        opt.zero_grad(set_to_none=True)
        model(input_ids=ids).last_hidden_state.pow(2).mean().backward()
        opt.step()

    runs = {"dense": dense, "vlticket": masked, "torch": hooked}
    for model in runs.values():  # warm-up: allocate Adam state, first-touch pages
        step(model)
    times = {k: [] for k in runs}
    for r in range(spec["repeats"]):
        for name in list(runs)[r % 3 :] + list(runs)[: r % 3]:
            times[name].append(timed(lambda name=name: step(runs[name])))
    out = {"times": times, "upkeep": upkeep.laps[2:]}
    if not fused:  # the for-loop AdamW takes sqrt of every second moment, zeros included
        pruned = mask.num_pruned
        sqrt = {v: timed(lambda v=v: torch.full((pruned,), v).sqrt_()) for v in (0.0, 1.0)}
        out |= {"sqrt_zero": sqrt[0.0], "sqrt_one": sqrt[1.0]}
    return out


class _Stopwatch:
    """Adds the run time of wrapped functions to ``laps[-1]``; nested calls count once."""

    def __init__(self) -> None:
        self.laps = [0.0]
        self._depth = 0

    def wrap(self, fn):
        def timed_fn(*args, **kwargs):
            self._depth += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.laps[-1] += time.perf_counter() - start

        return timed_fn


# -- files and IoU --------------------------------------------------------------------------
def disk(spec) -> dict:
    """Mask.save / Mask.load vs torch.save / torch.load of torch prune's pruned state dict."""
    weights = build(spec["model"], spec["quick"])
    numel = sum(w.numel() for w in weights.values())
    mask = vlticket.prune_magnitude(weights, sparsity=0.2)
    mods = _modules(weights)
    _torch_prune(mods, 0.2)
    state = {f"{i}.{k}": v for i, m in enumerate(mods) for k, v in m.state_dict().items()}
    out = {"numel": numel, "vlticket": {"save": [], "load": []}, "torch": {"save": [], "load": []}}
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs = os.path.join(tmp, "mask.safetensors"), os.path.join(tmp, "pruned.pt")
        for _ in range(spec["repeats"]):
            out["vlticket"]["save"].append(timed(lambda: mask.save(ours)))
            out["vlticket"]["load"].append(timed(lambda: vlticket.Mask.load(ours)))
            out["torch"]["save"].append(timed(lambda: torch.save(state, theirs)))
            out["torch"]["load"].append(timed(lambda: torch.load(theirs, weights_only=True)))
        out["vlticket"]["bytes"] = os.path.getsize(ours)
        out["torch"]["bytes"] = os.path.getsize(theirs)
    return out


def _pairwise_iou(masks: dict[str, vlticket.Mask]) -> torch.Tensor:
    """The straightforward way: one AND and one OR per pair and tensor."""
    names = list(masks)
    n = len(names)
    out = torch.ones(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            a, b = masks[names[i]], masks[names[j]]
            inter = sum(int((a[t] & b[t]).sum()) for t in a)
            union = sum(int((a[t] | b[t]).sum()) for t in a)
            out[i, j] = out[j, i] = inter / union
    return out


def iou(spec) -> dict:
    """IoU matrix of 8 masks at 70% sparsity."""
    weights = build(spec["model"], spec["quick"])
    masks = {}
    for i in range(8):
        g = torch.Generator().manual_seed(100 + i)
        masks[f"task{i}"] = vlticket.Mask(
            {n: torch.rand(w.shape, generator=g) >= 0.7 for n, w in weights.items()}
        )
    del weights
    times = {"vlticket": [], "pairwise": []}
    for r in range(spec["repeats"]):
        start = time.perf_counter()
        _, ours = vlticket.iou_matrix(masks)
        times["vlticket"].append(time.perf_counter() - start)
        if r < spec["peer_repeats"]:
            start = time.perf_counter()
            theirs = _pairwise_iou(masks)
            times["pairwise"].append(time.perf_counter() - start)
            agree = bool(torch.allclose(ours, theirs))
    return {"times": times, "agree": agree}


# -- structured tickets: shrink ------------------------------------------------------------
def _hand_built(config, heads: int, neurons: int):
    """A BERT with ``heads`` heads per layer and ``neurons`` FFN neurons, built directly."""
    from transformers import BertModel

    model = BertModel(config).eval()
    size = config.hidden_size // config.num_attention_heads
    for layer in model.encoder.layer:
        att = layer.attention.self
        for name in ("query", "key", "value"):
            setattr(att, name, nn.Linear(config.hidden_size, heads * size))
        att.num_attention_heads, att.all_head_size = heads, heads * size
        layer.attention.output.dense = nn.Linear(heads * size, config.hidden_size)
        layer.intermediate.dense = nn.Linear(config.hidden_size, neurons)
        layer.output.dense = nn.Linear(neurons, config.hidden_size)
    return model.eval()


def _bytes_on_disk(model) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        return sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp))


def shrink(spec) -> dict:
    """Dense BERT vs the same model shrunk (1/3 of heads, 40% of neurons; with shrink's default
    ``align=8`` and with ``align=1``) vs a hand-built BERT of the exact shrunk shape: forward
    latency (interleaved; wall and process CPU time), parameters, bytes on disk; the time and
    memory of ``prune_structured`` and ``shrink``."""
    import copy

    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = (
        BertConfig()
        if not spec["quick"]
        else BertConfig(
            hidden_size=384, num_hidden_layers=2, num_attention_heads=6, intermediate_size=1024
        )
    )
    dense = BertModel(config).eval()
    heads = config.num_attention_heads - config.num_attention_heads // 3
    neurons = config.intermediate_size - round(0.4 * config.intermediate_size)
    times = {"prune_heads": [], "prune_neurons": [], "read": [], "shrink": []}
    for _ in range(spec["repeats"]):
        times["prune_heads"].append(
            timed(lambda: vlticket.prune_structured(dense, sparsity=1 / 3, scope="layer"))
        )
        times["prune_neurons"].append(
            timed(
                lambda: vlticket.prune_structured(
                    dense, granularity="neuron", sparsity=0.4, scope="layer"
                )
            )
        )
    mask = vlticket.prune_structured(dense, sparsity=1 / 3, scope="layer")
    mask = vlticket.prune_structured(
        dense, granularity="neuron", sparsity=0.4, scope="layer", mask=mask
    )
    mask.apply(dense, adapter="bert")
    weights = [p.detach() for p in dense.parameters()]
    model_bytes = sum(p.numel() * p.element_size() for p in weights)
    peaks = []
    small = None
    for _ in range(spec["repeats"]):
        times["read"].append(timed(lambda: sum(float(w.abs().sum()) for w in weights)))
        small = copy.deepcopy(dense)
        times["shrink"].append(timed(lambda s=small: vlticket.shrink(s, mask)))
        # The memory probe trims the heap first, so its call also pays the page faults of
        # fresh memory that the read pass does not: timed apart, side by side with the read.
        small = copy.deepcopy(dense)
        peak, _, _ = peak_extra(lambda s=small: vlticket.shrink(s, mask))
        peaks.append(peak)
    exact = copy.deepcopy(dense)
    vlticket.shrink(exact, mask, align=1)
    hand = _hand_built(config, heads, neurons)
    assert sum(p.numel() for p in hand.parameters()) == sum(p.numel() for p in exact.parameters())
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, config.vocab_size, (spec["batch"], spec["tokens"]), generator=g)
    models = {"dense": dense, "shrunk": small, "exact": exact, "hand": hand}
    latency = {k: [] for k in models}
    cpu = {k: [] for k in models}
    with torch.no_grad():
        for m in models.values():
            m(input_ids=ids)  # warm up
        for _ in range(spec["forward_repeats"]):
            for name, m in models.items():  # interleaved: load hits all of them alike
                start, start_cpu = time.perf_counter(), time.process_time()
                m(input_ids=ids)
                latency[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
        want = dense(input_ids=ids).last_hidden_state
        agree = all(
            torch.allclose(want, m(input_ids=ids).last_hidden_state, atol=1e-4)
            for m in (small, exact)
        )
    return {
        "times": times,
        "latency": latency,
        "cpu": cpu,
        "width": small.encoder.layer[0].intermediate.dense.out_features,
        "params": {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()},
        "disk": {k: _bytes_on_disk(m) for k, m in models.items()},
        "model_bytes": model_bytes,
        "shrink_peak": peaks,
        "agree": agree,
        "load": os.getloadavg()[0],
    }


TASKS = {
    "prune": prune,
    "prune_torch": prune_torch,
    "imp_rounds": imp_rounds,
    "train_step": train_step,
    "disk": disk,
    "iou": iou,
    "shrink": shrink,
    **EXPORT_TASKS,
}

if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    torch.set_num_threads(spec["threads"])
    print(json.dumps(TASKS[spec["task"]](spec)))
