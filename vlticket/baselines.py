"""The study's baselines for a ticket, each one call that readies ``model`` for training.

Every function resets ``model`` to ``init`` (a :class:`~vlticket.Checkpoint` of the whole model,
e.g. ``search.rewind_checkpoint``), puts a subnetwork in place and returns the attached
:class:`~vlticket.MaskHandle`. Train as usual after ``handle.add_optimizer(optimizer)``, evaluate,
then ``handle.remove()``:

```python
handle = vlticket.baselines.random_pruning(model, ticket, theta0, seed=0)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
handle.add_optimizer(optimizer)
train(model, optimizer)
handle.remove()
```

``adapter`` names the prunable weights as the ticket does (by default the adapter the ticket
recorded); ``init`` always uses the model's own parameter names. Every function checks the
ticket, ``init`` (and ``foreign``) against the model before it writes anything: on a mismatch it
raises and the model is untouched.
"""

from __future__ import annotations

import torch
from torch import nn

from ._naming import AUTO, AdapterArg, model_state
from .core import Checkpoint, Mask, MaskHandle, prune_random
from .errors import ArgumentError
from .registry import Naming


def _check(
    model: nn.Module,
    ticket: Mask,
    init: Checkpoint,
    adapter: AdapterArg,
    foreign: Checkpoint | None = None,
) -> Naming | None:
    """Check every argument against the model, before the first write; return the adapter."""
    if not isinstance(model, nn.Module):
        raise ArgumentError(f"`model`: expected an nn.Module, found {type(model).__name__}")
    if not isinstance(ticket, Mask):
        raise ArgumentError(f"`ticket`: expected a vlticket.Mask, found {type(ticket).__name__}")
    if not isinstance(init, Checkpoint):
        raise ArgumentError(f"`init`: expected a vlticket.Checkpoint, found {type(init).__name__}")
    naming = ticket.naming(model, adapter)
    init.check(model_state(model))
    ticket.check(model, adapter=naming)
    if foreign is not None:
        foreign.check(model, adapter=naming)
    return naming


def _reset(model: nn.Module, init: Checkpoint) -> None:
    init.restore(model_state(model))


def _shapes_only(mask: Mask) -> dict[str, torch.Tensor]:
    # Zero-stride float tensors: the pruning functions need shapes, not values or memory.
    return {n: torch.zeros((), dtype=torch.float32).expand(t.shape) for n, t in mask.items()}


def random_mask(ticket: Mask, *, per_tensor: bool = False, seed: int | None = None) -> Mask:
    """A uniformly random mask with the ticket's sparsity (pure: no model involved).

    Args:
        ticket: the mask to match.
        per_tensor: keep exactly as many weights as the ticket in every tensor ("matched per
            tensor"); default: the same total, spread at random over all tensors ("global").
        seed: seed of the random generator.

    Example:
        >>> import torch, vlticket
        >>> t = vlticket.Mask({"a": torch.tensor([True, False, False, False]),
        ...                    "b": torch.tensor([True, True, True, True])})
        >>> m = vlticket.baselines.random_mask(t, per_tensor=True, seed=0)
        >>> [int(m[n].sum()) for n in m]
        [1, 4]
    """
    if not isinstance(ticket, Mask):
        raise ArgumentError(f"`ticket`: expected a vlticket.Mask, found {type(ticket).__name__}")
    if not len(ticket):
        return Mask({}, adapter=ticket.adapter)
    shapes = _shapes_only(ticket)
    if per_tensor:
        out = prune_random(shapes, like=ticket, seed=seed)
    else:
        out = prune_random(shapes, sparsity=ticket.num_pruned / max(1, ticket.numel), seed=seed)
    out.adapter = ticket.adapter
    return out.to(next(iter(ticket.values())).device)


def retrain(
    model: nn.Module, ticket: Mask, init: Checkpoint, *, adapter: AdapterArg = AUTO
) -> MaskHandle:
    """The ticket itself: reset to ``init`` (θ0 or θi) and attach ``ticket``."""
    naming = _check(model, ticket, init, adapter)
    _reset(model, init)
    return ticket.attach(model, adapter=naming)


def transfer(
    model: nn.Module, ticket: Mask, init: Checkpoint, *, adapter: AdapterArg = AUTO
) -> MaskHandle:
    """A ticket found on task S re-trained on task T: ``model`` is T's model (its own head),
    ``init`` its starting weights; the ticket's names must be T's prunable names (use the
    same adapter for both tasks so names do not depend on the head)."""
    return retrain(model, ticket, init, adapter=adapter)


def random_pruning(
    model: nn.Module,
    ticket: Mask,
    init: Checkpoint,
    *,
    per_tensor: bool = False,
    seed: int | None = None,
    adapter: AdapterArg = AUTO,
) -> MaskHandle:
    """Random pruning at the ticket's sparsity, on ``init``; see :func:`random_mask`."""
    naming = _check(model, ticket, init, adapter)
    mask = random_mask(ticket, per_tensor=per_tensor, seed=seed)
    _reset(model, init)
    return mask.attach(model, adapter=naming)


def complement(
    model: nn.Module, ticket: Mask, init: Checkpoint, *, adapter: AdapterArg = AUTO
) -> MaskHandle:
    """The complement subnetwork ``~ticket``: exactly the weights the ticket pruned."""
    return retrain(model, ~ticket, init, adapter=adapter)


def shuffled_weights(
    model: nn.Module,
    ticket: Mask,
    init: Checkpoint,
    *,
    seed: int | None = None,
    adapter: AdapterArg = AUTO,
) -> MaskHandle:
    """The ticket on θ0'': ``init`` with each masked tensor's values shuffled within it.

    Only the tensors the ticket covers are shuffled; the rest (embeddings, norms, head) stay.
    """
    naming = _check(model, ticket, init, adapter)
    _reset(model, init)
    covered = Checkpoint.capture(model, names=list(ticket), adapter=naming)
    covered.shuffled(seed).restore(model, adapter=naming)
    return ticket.attach(model, adapter=naming)


def foreign_weights(
    model: nn.Module,
    ticket: Mask,
    init: Checkpoint,
    foreign: Checkpoint,
    *,
    adapter: AdapterArg = AUTO,
) -> MaskHandle:
    """The ticket on θ0': ``init``, then ``foreign``'s tensors (e.g. BERT's) in their place.

    Args:
        foreign: weights under the ticket's names, e.g.
            ``Checkpoint(vlticket.adapters.bert_to_vl(bert.state_dict(), model))``.
    """
    if not isinstance(foreign, Checkpoint):
        raise ArgumentError(
            f"`foreign`: expected a vlticket.Checkpoint, found {type(foreign).__name__}"
        )
    naming = _check(model, ticket, init, adapter, foreign)
    _reset(model, init)
    foreign.restore(model, adapter=naming)
    return ticket.attach(model, adapter=naming)


__all__ = [
    "complement",
    "foreign_weights",
    "random_mask",
    "random_pruning",
    "retrain",
    "shuffled_weights",
    "transfer",
]
