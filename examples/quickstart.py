"""Quickstart: a lottery-ticket search (IMP, rewinding to θ0) around a plain training loop.

A small MLP on a synthetic 4-class problem: about 10 seconds on a 2-core CPU. It prints each round's
held-out accuracy, then the relaxed winning ticket and the random-pruning baseline at the same
sparsity.
"""

import tempfile

import torch
from torch import nn

import vlticket
from vlticket import baselines

torch.manual_seed(0)
x = torch.randn(3000, 32)
y = (x[:, :8] @ torch.randn(8, 4)).argmax(1)
train_x, train_y, test_x, test_y = x[:2000], y[:2000], x[2000:], y[2000:]
model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))


def train(model: nn.Module, optimizer: torch.optim.Optimizer, epochs: int = 8) -> None:
    for _ in range(epochs):
        for i in range(0, len(train_x), 100):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(train_x[i : i + 100]), train_y[i : i + 100])
            loss.backward()
            optimizer.step()


def accuracy(model: nn.Module) -> float:
    with torch.no_grad():
        return (model(test_x).argmax(1) == test_y).float().mean().item()


run_dir = tempfile.mkdtemp(prefix="vlticket-quickstart-")
search = vlticket.TicketSearch(model, sparsity=0.95, amount=0.3, run_dir=run_dir, progress=False)
for rnd in search:
    torch.manual_seed(rnd.index)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    rnd.add_optimizer(optimizer)  # pruned weights stay exactly zero
    train(model, optimizer)
    rnd.report(accuracy=accuracy(model))
    print(f"round {rnd.index}: sparsity {rnd.sparsity:.3f}  accuracy {rnd.metrics['accuracy']:.3f}")

best = vlticket.relaxed_ticket(search.history, p=0.99)
print(f"highest sparsity keeping 99% of dense accuracy: {best.sparsity:.3f} ({best.mean:.3f})")

torch.manual_seed(0)
handle = baselines.random_pruning(model, search.mask, search.rewind_checkpoint, seed=0)
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
handle.add_optimizer(optimizer)
train(model, optimizer)
handle.remove()
print(f"random pruning at sparsity {search.mask.sparsity:.3f}: accuracy {accuracy(model):.3f}")
