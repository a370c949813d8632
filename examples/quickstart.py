"""Quickstart: a lottery-ticket search (IMP with rewinding to θ0) around a plain training loop.

Runs in a few seconds on a CPU with synthetic data: a small MLP on a 4-class problem.
"""

import torch
from torch import nn

import vlticket

torch.manual_seed(0)
x = torch.randn(2048, 32)
y = (x[:, :4] @ torch.randn(4, 4)).argmax(1)
model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                      nn.Linear(128, 4))


def train(model: nn.Module, mask: vlticket.Mask, epochs: int = 30) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    with mask.attach(model, opt):  # pruned weights stay exactly zero
        for _ in range(epochs):
            for i in range(0, len(x), 256):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x[i : i + 256]), y[i : i + 256]).backward()
                opt.step()
    return (model(x).argmax(1) == y).float().mean().item()


theta0 = vlticket.Checkpoint.capture(model)          # rewind point θ0
mask = vlticket.Mask.ones(model)                    # every weight matrix, all kept
dense = train(model, mask)
print(f"dense            acc {dense:.3f}")
for rnd in range(1, 8):                              # IMP: prune 20% of what is left per round
    mask = vlticket.prune_magnitude(model, amount=0.2, mask=mask)
    theta0.restore(model, mask)                      # rewind, keep the mask
    acc = train(model, mask)
    print(f"round {rnd} sparsity {mask.sparsity:.3f} acc {acc:.3f}")

random = vlticket.prune_random(model, like=mask, seed=0)   # same per-tensor sparsity
theta0.restore(model, random)
print(f"random pruning   sparsity {random.sparsity:.3f} acc {train(model, random):.3f}")
