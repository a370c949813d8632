"""Shared fixtures: tiny models and weight dictionaries built in code (no downloads)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

torch.set_num_threads(1)


class TinyNet(nn.Module):
    """An embedding, two linear layers, a layer norm and a head: prunable set = 3 matrices + emb."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.fc1 = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids).mean(1)
        h = self.norm(torch.relu(self.fc1(h)))
        return self.head(torch.relu(self.fc2(h)))


@pytest.fixture
def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture
def weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "a.weight": torch.randn(12, 7, generator=g),
        "b.weight": torch.randn(5, 4, 3, generator=g),
        "c.weight": torch.randn(33, generator=g),
    }
