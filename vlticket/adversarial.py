"""VILLA-style adversarial training: perturb the input embeddings, not the pixels or the words.

A perturbation δ is added to each embedding input (text and image features). A few steps of
projected gradient ascent grow δ inside a Frobenius-norm ball of radius ε per example and input,
maximising the label-preserving adversarial loss ``CE(f(x+δ), y) + α·SKL(f(x), f(x+δ))``, where
SKL is the symmetric KL divergence between the clean and perturbed predictions. The training
loss is ``CE(f(x), y) + CE(f(x+δ), y) + α·SKL(f(x), f(x+δ))``.

Any model works through two callables (the *hooks*):

* ``embed(batch) -> dict[str, Tensor]``: the embedding inputs; floating-point entries are
  perturbed, other entries (e.g. masks) pass through unchanged;
* ``forward(batch, embeddings) -> logits``.

:func:`embedding_hooks` gives them for any model whose adapter knows its embeddings
(transformers ViLT and LXMERT built in).
Only δ's gradient is taken during the ascent (``torch.autograd.grad``), so parameter gradients
come from the returned loss alone and an attached mask keeps pruned weights at zero.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .adapters import adapter_for
from .adapters.base import Embed, Forward
from .errors import ArgumentError


@dataclass
class AdversarialLoss:
    """The parts of the objective; ``loss`` is what to call ``backward()`` on.

    Attributes:
        loss: ``clean + adversarial + alpha * kl``.
        clean: cross-entropy on the clean inputs.
        adversarial: cross-entropy under the perturbation.
        kl: symmetric KL between clean and perturbed predictions.
        delta: the final perturbation of each perturbed input (detached).
    """

    loss: torch.Tensor
    clean: torch.Tensor
    adversarial: torch.Tensor
    kl: torch.Tensor
    delta: dict[str, torch.Tensor]


def symmetric_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """``KL(p || q) + KL(q || p)`` of two softmax distributions, averaged over the batch."""
    log_p = F.log_softmax(logits_p, dim=-1)
    log_q = F.log_softmax(logits_q, dim=-1)
    kl_pq = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")
    kl_qp = F.kl_div(log_p, log_q, log_target=True, reduction="batchmean")
    return kl_pq + kl_qp


def _per_example_norm(t: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of each example (all dims but the first), shaped to broadcast."""
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def project(delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Scale each example of ``delta`` back onto the ε-ball if it lies outside it."""
    return delta * (epsilon / _per_example_norm(delta)).clamp(max=1.0)


def _check(epsilon: float, steps: int, step_size: float | None, alpha: float) -> float:
    for name, value in (("epsilon", epsilon), ("alpha", alpha)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ArgumentError(f"`{name}`: expected a number >= 0, found {value!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ArgumentError(f"`steps`: expected an int >= 1, found {steps!r}")
    if step_size is None:
        return 2.0 * epsilon / steps
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or step_size <= 0:
        raise ArgumentError(f"`step_size`: expected a number > 0, found {step_size!r}")
    return float(step_size)


def adversarial_loss(
    batch: Any,
    labels: torch.Tensor,
    *,
    embed: Embed,
    forward: Forward,
    epsilon: float = 1.0,
    steps: int = 3,
    step_size: float | None = None,
    alpha: float = 1.0,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> AdversarialLoss:
    """The VILLA-style adversarial training loss of one batch.

    Args:
        batch: whatever ``embed`` and ``forward`` take.
        labels: targets for ``loss_fn`` (class indices for the default cross-entropy).
        embed, forward: the hooks (see the module documentation, :func:`embedding_hooks`).
        epsilon: radius of the Frobenius-norm ball, per example and input.
        steps: projected gradient ascent steps.
        step_size: ascent step along the normalised gradient (default ``2 * epsilon / steps``).
        alpha: weight of the symmetric KL term.
        loss_fn: the label-preserving loss, e.g. BCE with logits for VQA soft scores.

    Example:

    ```python
    embed, forward = vlticket.adversarial.embedding_hooks(model)
    out = vlticket.adversarial.adversarial_loss(batch, batch["labels"], embed=embed,
                                                forward=forward, epsilon=1.0, steps=3)
    out.loss.backward()
    optimizer.step()
    ```
    """
    eta = _check(epsilon, steps, step_size, alpha)
    embeddings = dict(embed(batch))
    names = [n for n, t in embeddings.items() if torch.is_floating_point(t)]
    if not names:
        raise ArgumentError("`embed` returned no floating-point tensor to perturb")
    clean_logits = forward(batch, embeddings)
    clean = loss_fn(clean_logits, labels)
    target = clean_logits.detach()

    def perturbed(delta: Mapping[str, torch.Tensor], detach: bool) -> dict[str, torch.Tensor]:
        out = dict(embeddings)
        for n in names:
            base = embeddings[n].detach() if detach else embeddings[n]
            out[n] = base + delta[n]
        return out

    delta = {n: torch.zeros_like(embeddings[n], requires_grad=True) for n in names}
    for _ in range(steps):
        logits = forward(batch, perturbed(delta, detach=True))
        objective = loss_fn(logits, labels) + alpha * symmetric_kl(target, logits)
        grads = torch.autograd.grad(objective, [delta[n] for n in names])
        with torch.no_grad():
            delta = {
                n: project(delta[n] + eta * g / _per_example_norm(g), epsilon)
                for n, g in zip(names, grads, strict=True)
            }
        for t in delta.values():
            t.requires_grad_(True)
    final = {n: t.detach() for n, t in delta.items()}
    adv_logits = forward(batch, perturbed(final, detach=False))
    adversarial = loss_fn(adv_logits, labels)
    kl = symmetric_kl(clean_logits, adv_logits)
    return AdversarialLoss(clean + adversarial + alpha * kl, clean, adversarial, kl, final)


def embedding_hooks(model: nn.Module) -> tuple[Embed, Forward]:
    """The ``(embed, forward)`` hooks of a model whose family's adapter has them (transformers
    ViLT and LXMERT built in: :func:`vlticket.adapters.vilt.embedding_hooks`,
    :func:`vlticket.adapters.lxmert.embedding_hooks`).

    Example:
        >>> embed, forward = vlticket.adversarial.embedding_hooks(model)  # doctest: +SKIP
    """
    adapter = adapter_for(model)
    hooks = getattr(adapter, "embedding_hooks", None)
    if hooks is None:
        raise ArgumentError(
            f"adapter {adapter.name!r} has no embedding hooks; write `embed(batch)` and "
            "`forward(batch, embeddings)` for this model (see vlticket.adversarial)"
        )
    return hooks(model)


__all__ = [
    "AdversarialLoss",
    "adversarial_loss",
    "embedding_hooks",
    "project",
    "symmetric_kl",
]
