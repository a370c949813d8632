"""The demo's model: a small transformers ViLT built from a config (random weights, no download).

Images enter as ``image_embeds`` computed in one batched pass (patch projection, [CLS] and
position embeddings): ViLT's own per-image embedding loop gives the same result for full-size
images but is several times slower on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .data import Split


def build_model(
    vocab_size: int, num_labels: int, *, hidden: int = 64, layers: int = 2
) -> nn.Module:
    """A ViltForQuestionAnswering with hidden size 64, 2 layers, 4 heads, 16×16 patches."""
    from transformers import ViltConfig, ViltForQuestionAnswering

    config = ViltConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=4 * hidden,
        image_size=64,
        patch_size=16,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=num_labels,
    )
    return ViltForQuestionAnswering(config)


def image_embeds(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """ViLT's visual embedding of full 64×64 images, batched: (n, 1 + patches, hidden)."""
    emb = model.vilt.embeddings
    x = emb.patch_embeddings(pixels).flatten(2).transpose(1, 2)
    cls = emb.cls_token.expand(x.shape[0], -1, -1)
    return torch.cat([cls, x], dim=1) + emb.position_embeddings


def batch(split: Split, images: torch.Tensor, rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """The tensors of questions ``rows``: word ids, their mask, pixels and labels."""
    return {
        "input_ids": split.input_ids[rows],
        "attention_mask": split.attention_mask[rows],
        "pixels": images[split.image_index[rows]],
        "labels": split.labels[rows],
    }


def embed(model: nn.Module, b: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The embedding inputs ViLT accepts: word embeddings and image embeddings."""
    words = model.vilt.embeddings.text_embeddings.word_embeddings(b["input_ids"])
    return {"inputs_embeds": words, "image_embeds": image_embeds(model, b["pixels"])}


def forward(
    model: nn.Module, b: Mapping[str, torch.Tensor], embeddings: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """Logits from embedding inputs (what adversarial training perturbs)."""
    n_img = embeddings["image_embeds"].shape[1]
    image_embeds = embeddings["image_embeds"]
    pixel_mask = torch.ones(
        image_embeds.shape[0], n_img, dtype=torch.long, device=image_embeds.device
    )
    return model(
        inputs_embeds=embeddings["inputs_embeds"],
        attention_mask=b["attention_mask"],
        image_embeds=embeddings["image_embeds"],
        pixel_mask=pixel_mask,
    ).logits


def logits(model: nn.Module, b: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return forward(model, b, embed(model, b))


def train(
    model: nn.Module,
    split: Split,
    images: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    add_optimizer: Callable[[torch.optim.Optimizer], None] | None = None,
    on_step: Callable[[], None] | None = None,
    weights: torch.Tensor | None = None,
) -> int:
    """Plain AdamW fine-tuning with cross-entropy; returns the number of optimizer steps.

    ``add_optimizer(optimizer)`` is called first, ``on_step()`` after every optimizer step (a
    search round counts its steps that way). Questions are drawn uniformly, or in proportion
    to ``weights`` (one per question: the pre-training objective samples answers evenly).
    """
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    if add_optimizer is not None:
        add_optimizer(opt)
    model.train()
    for _ in range(steps):
        if weights is None:
            rows = torch.randint(0, len(split), (batch_size,), generator=g)
        else:
            rows = torch.multinomial(weights, batch_size, replacement=True, generator=g)
        b = batch(split, images, rows)
        loss = nn.functional.cross_entropy(logits(model, b), b["labels"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if on_step is not None:
            on_step()
    return steps


@torch.inference_mode()
def accuracy(model: nn.Module, split: Split, images: torch.Tensor, batch_size: int = 512) -> float:
    """The fraction of ``split``'s questions answered right (evaluation mode, no autograd)."""
    model.eval()
    correct = 0
    for start in range(0, len(split), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(split)))
        b = batch(split, images, rows)
        correct += int((logits(model, b).argmax(1) == b["labels"]).sum())
    return correct / max(1, len(split))


def fit(
    model: nn.Module,
    handle: Any,
    train_split: Split,
    test_split: Split,
    data: Any,
    s: Mapping[str, Any],
    seed: int,
) -> dict[str, Any]:
    """Train with ``handle``'s mask attached (a :class:`~vlticket.MaskHandle`), then remove it:
    the test accuracy and the optimizer steps taken."""
    steps = train(
        model,
        train_split,
        data.train_images,
        steps=s["steps"],
        batch_size=s["batch_size"],
        lr=s["lr"],
        seed=seed,
        add_optimizer=handle.add_optimizer,
    )
    handle.remove()
    return {"accuracy": accuracy(model, test_split, data.test_images), "steps": steps}
