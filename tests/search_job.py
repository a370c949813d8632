"""A deterministic IMP run on synthetic data, for the kill-and-resume test.

Usage: python search_job.py RUN_DIR OUT_MASK [--hang-in-round R]
With --hang-in-round R the process touches RUN_DIR/hanging halfway through round R's training
and then sleeps, so the test can SIGKILL it mid-round.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

import vlticket
from vlticket.search import TicketSearch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("out_mask")
    parser.add_argument("--hang-in-round", type=int, default=-1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2)
    )
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 8, generator=g)
    y = (x[:, 0] * x[:, 1] > 0).long()
    search = TicketSearch(model, sparsity=0.6, amount=0.2, run_dir=args.run_dir, progress=False)
    for rnd in search:
        torch.manual_seed(100 + rnd.index)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        rnd.add_optimizer(opt)
        for step in range(40):
            if rnd.index == args.hang_in_round and step == 20:
                Path(args.run_dir, "hanging").touch()
                time.sleep(120)
            idx = torch.randint(0, 256, (32,))
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc = (model(x).argmax(1) == y).float().mean()
        rnd.report(accuracy=acc)
    search.mask.save(args.out_mask)
    assert isinstance(search.mask, vlticket.Mask)


if __name__ == "__main__":
    main()
