"""Cheaper-ticket costs on a BERT-base encoder (random weights, CPU), side by side, medians.

- SNIP scoring (1 batch of 8 × 128 tokens) and one SynFlow iteration (every encoder matrix,
  query/key included, on 128 all-ones tokens) vs one forward+backward;
- an EarlyBird check (one magnitude draw + distances to a full queue of 5) vs a training step,
  and its cost per step when checking every 10 steps (``TicketSearch``'s default) or every 5;
- a RigL update (drop, grow, write; every encoder matrix at 70% sparsity, fraction 0.3) vs one
  AdamW step of the whole model.

Usage: ``python benchmarks/cheaper.py [--repeats 3] [--threads 2]``. Prints one line per measure
and the machine's load average before and after (the measures are interleaved, so a load
change hits all of them alike).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from transformers import BertConfig, BertModel

import vlticket
from vlticket.saliency import snip_scores, synflow_scores


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--layers", type=int, default=12)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = BertModel(BertConfig(num_hidden_layers=args.layers, hidden_dropout_prob=0.0))
    ids = torch.randint(0, 30522, (8, 128))
    prunable = {
        n: p for n, p in model.named_parameters() if n.startswith("encoder.") and p.dim() == 2
    }

    def loss_fn(m, b):
        return m(input_ids=b).last_hidden_state.pow(2).mean()

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        loss_fn(model, ids).backward()

    def snip():
        snip_scores(model, loss_fn, [ids], adapter=_Prunable(prunable))

    ones = torch.ones(1, 128, 768, dtype=torch.float64)

    def synflow_iteration():  # one score + one exact selection, as each of the 100 iterations
        s = synflow_scores(
            model, lambda m: m(inputs_embeds=ones).last_hidden_state, adapter=_Prunable(prunable)
        )
        vlticket.prune_by_score(s, sparsity=0.5)

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step():
        fwd_bwd()
        opt.step()

    # the draw targets 0.8 while the mask attached below zeroes 70%, as an IMP round's does: a
    # target equal to the zeroed fraction puts the k-th magnitude inside millions of tied zeros,
    # the selection's slow tie path (~1 s per 14 M weights, before and after this change)
    eb = vlticket.EarlyBird(sparsity=0.8, adapter=_Prunable(prunable), queue=5)
    for _ in range(4):
        eb.check(model)
    eb.drawn = False

    def eb_check():
        eb.drawn = False
        eb.check(model)

    def opt_step():
        opt.step()

    mask = vlticket.prune_magnitude(prunable, sparsity=0.7)
    handle = mask.attach(prunable, opt)
    ds = vlticket.DynamicSparsity(handle, opt, update_every=1, end=10**9, alpha=0.3)
    fwd_bwd()  # dense gradients caught for the update (the hook is armed: every step is due)

    def rigl_update():  # every step is due: the fraction is alpha/2 (1 + cos(pi t / 1e9)) = 0.3
        assert ds.step()

    load_before = os.getloadavg()
    rows = {
        k: []
        for k in (
            "fwd_bwd",
            "snip",
            "synflow_iter",
            "train_step",
            "eb_check",
            "opt_step",
            "rigl_update",
        )
    }
    train_step()  # warm the optimizer state
    for _ in range(args.repeats):
        rows["fwd_bwd"].append(timed(fwd_bwd))
        rows["snip"].append(timed(snip))
        try:
            rows["synflow_iter"].append(timed(synflow_iteration))
        except vlticket.ArgumentError as e:  # R beyond float64: see saliency.py
            print(f"synflow: {str(e)[:80]}")
            rows["synflow_iter"].append(float("nan"))
        rows["train_step"].append(timed(train_step))
        rows["eb_check"].append(timed(eb_check))
        ds._dense.clear()  # the armed hooks also caught the scoring passes' gradients
        fwd_bwd()
        rows["opt_step"].append(timed(opt_step))
        rows["rigl_update"].append(timed(rigl_update))
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(
        f"BERT-base encoder ({args.layers} layers), batch 8x128, {args.threads} threads, "
        f"{args.repeats} repeats, load average before {load_before}, after {os.getloadavg()}"
    )
    for k, v in rows.items():
        print(f"{k:13s} median {med[k]:8.3f} s  ({', '.join(f'{x:.3f}' for x in v)})")
    print(f"snip / fwd_bwd            {med['snip'] / med['fwd_bwd']:.2f}  (goal <= 2)")
    print(f"synflow_iter / fwd_bwd    {med['synflow_iter'] / med['fwd_bwd']:.2f}  (goal <= 2)")
    eb = med["eb_check"] / med["train_step"]
    print(
        f"eb_check / train_step     {eb:.3f} per check; per step {eb / 10:.4f} checking every 10 "
        f"steps, {eb / 5:.4f} every 5  (goal <= 0.03 per step)"
    )
    print(f"rigl_update / opt_step    {med['rigl_update'] / med['opt_step']:.2f}  (goal <= 1)")
    handle.remove()
    ds.remove()


class _Prunable:
    """An adapter-like view: the encoder's weight matrices (word embeddings are not reached by
    SynFlow's inputs_embeds)."""

    def __init__(self, tensors):
        self.tensors = tensors

    def prunable(self, module):
        return dict(self.tensors)


if __name__ == "__main__":
    main()
