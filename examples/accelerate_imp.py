"""IMP with rewinding through Hugging Face accelerate: the prepared (wrapped) model and optimizer.

One process:  python examples/accelerate_imp.py OUT_DIR
Two CPU processes (gloo), or GPUs:  accelerate launch --multi_gpu --num_processes 2 \\
    examples/accelerate_imp.py OUT_DIR

Each rank keeps its own run folder (a run folder has one writer) and writes its final mask to
OUT_DIR/mask.rank{N}.safetensors: the replicas train in lockstep, so every rank's mask is the
same, bit for bit. About 20 seconds on a 2-core CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn

import vlticket


def main(out_dir: str) -> None:
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    rank = accelerator.process_index
    torch.manual_seed(0)  # the same θ0 on every rank
    model = nn.Sequential(
        nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)
    )
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1024, 16, generator=g)
    y = (x[:, :4] @ torch.randn(4, 4, generator=g)).argmax(1)
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y),
        batch_size=64,
        shuffle=True,
        generator=torch.Generator().manual_seed(2),
    )
    model, data = accelerator.prepare(model, data)  # DDP-wrapped under accelerate launch

    search = vlticket.TicketSearch(
        model, sparsity=0.8, amount=0.4, progress=False, run_dir=Path(out_dir) / f"run.rank{rank}"
    )
    for rnd in search:
        optimizer = accelerator.prepare(torch.optim.AdamW(model.parameters(), lr=3e-3))
        rnd.add_optimizer(optimizer)  # the wrapped optimizer: its inner one gets the hooks
        for _ in range(3):
            for xb, yb in data:
                loss = nn.functional.cross_entropy(model(xb), yb)
                optimizer.zero_grad()
                accelerator.backward(loss)
                optimizer.step()
        with torch.no_grad():
            accuracy = (model(x.to(accelerator.device)).argmax(1).cpu() == y).float().mean()
        rnd.report(accuracy=accuracy)
        if accelerator.is_main_process:
            print(f"round {rnd.index}: sparsity {rnd.sparsity:.3f}, accuracy {accuracy:.3f}")
    search.mask.save(Path(out_dir) / f"mask.rank{rank}.safetensors")
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
