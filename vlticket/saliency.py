"""Pruning at initialization: SNIP, GraSP and SynFlow scores, and one call that turns them into a
Mask through the same exact selection as magnitude pruning (:func:`vlticket.prune_by_score`).

Scores in, mask out: each function returns ``name -> score`` over the prunable tensors (every
floating-point parameter with two or more dimensions, or ``adapter.prunable(model)``). The model
is left exactly as it was: parameters bit for bit, ``requires_grad`` flags, train/eval mode,
``.grad`` (gradients come from ``torch.autograd.grad``, never ``backward``). Scoring runs in eval
mode so dropout is off and batch-norm statistics are not updated.

- SNIP (Lee et al. 2019): ``|θ ⊙ g|`` with ``g`` the loss gradient summed over ``batches``.
- GraSP (Wang et al. 2020): ``−θ ⊙ Hg``; the highest scores are pruned.
- SynFlow (Tanaka et al. 2020): data-free, ``|θ| ⊙ ∂R/∂|θ|`` with ``R`` the summed output of
  the network with every parameter replaced by its absolute value, on an all-ones input; pruned
  iteratively on an exponential schedule, re-scoring the remaining weights each step. Each
  LayerNorm divides by a power of two so R stays finite at any depth (see
  :func:`synflow_scores`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ._naming import AdapterArg, prunable_tensors, unwrap
from .core import Mask, prune_by_score
from .errors import ArgumentError, ShapeMismatchError

LossFn = Callable[[nn.Module, Any], torch.Tensor]
"""``loss_fn(model, batch) -> scalar loss``: how the user's model computes its loss."""

METHODS = ("snip", "grasp", "synflow")


# -- the model, untouched ------------------------------------------------------------------
@contextlib.contextmanager
def _scoring(model: nn.Module, params: dict[str, torch.Tensor]) -> Iterator[None]:
    """Eval mode and ``requires_grad`` on ``params`` while scoring; both restored afterwards."""
    module = unwrap(model)
    modes = {m: m.training for m in module.modules()}
    flags = {n: p.requires_grad for n, p in params.items()}
    module.eval()
    try:
        for p in params.values():
            p.requires_grad_(True)
        yield
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
        for m, training in modes.items():
            m.training = training


def _targets(model: nn.Module, adapter: AdapterArg) -> dict[str, torch.Tensor]:
    if not isinstance(model, nn.Module):
        raise ArgumentError(f"`model`: expected an nn.Module, found {type(model).__name__}")
    params = prunable_tensors(model, adapter=adapter, param="model")
    if not params:
        raise ArgumentError("`model`: no prunable tensors to score")
    for name, p in params.items():
        if not (isinstance(p, torch.Tensor) and p.is_leaf and p.is_floating_point()):
            raise ArgumentError(f"tensor {name!r}: expected a floating-point leaf parameter")
    return params


def _grads(
    loss: torch.Tensor, params: dict[str, torch.Tensor], what: str, **kw: Any
) -> list[torch.Tensor]:
    if not (isinstance(loss, torch.Tensor) and loss.numel() == 1):
        raise ArgumentError(f"{what}: expected a scalar tensor, found {loss!r:.80}")
    if not loss.requires_grad:
        raise ArgumentError(
            f"{what} returned a tensor without a graph (computed under torch.no_grad() or "
            "inference_mode, or detached); it must be differentiable in the model's parameters"
        )
    grads = torch.autograd.grad(loss.reshape(()), list(params.values()), allow_unused=True, **kw)
    unused = [n for n, g in zip(params, grads, strict=True) if g is None]
    if unused:
        raise ArgumentError(
            f"{what} does not depend on tensor {unused[0]!r} ({len(unused)} unused in all); it "
            "would score 0 and be pruned first: score only tensors the loss reaches (`adapter`)"
        )
    return list(grads)


def _batches(batches: Iterable[Any]) -> list[Any]:
    if isinstance(batches, (Mapping, str)):  # one batch (a tokenizer dict): keys are no batches
        raise ArgumentError(
            f"`batches`: expected an iterable of batches (a list), found one "
            f"{type(batches).__name__}; wrap a single batch as [batch]"
        )
    out = list(batches) if isinstance(batches, Iterable) else None
    if not out:
        raise ArgumentError("`batches`: expected a non-empty iterable of batches for `loss_fn`")
    return out


# -- scores ---------------------------------------------------------------------------------
def snip_scores(
    model: nn.Module, loss_fn: LossFn, batches: Iterable[Any], *, adapter: AdapterArg = None
) -> dict[str, torch.Tensor]:
    """SNIP connection sensitivity ``|θ ⊙ ∂L/∂θ|``, the gradient summed over ``batches``.

    Args:
        model: the network at initialization (or at the pre-trained weights).
        loss_fn: ``loss_fn(model, batch) -> scalar loss``.
        batches: a few batches (a list, or any iterable; it is read once).
        adapter: score ``adapter.prunable(model)`` under its canonical names.

    Example:
        >>> import torch, vlticket
        >>> net = torch.nn.Linear(3, 2, bias=False)
        >>> loss = lambda m, b: m(b).pow(2).sum()
        >>> s = vlticket.saliency.snip_scores(net, loss, [torch.ones(1, 3)])
        >>> s["weight"].shape
        torch.Size([2, 3])
    """
    params = _targets(model, adapter)
    total = [torch.zeros_like(p, dtype=torch.float32) for p in params.values()]
    with _scoring(model, params):
        for b in _batches(batches):
            for t, g in zip(total, _grads(loss_fn(model, b), params, "`loss_fn`"), strict=True):
                t.add_(g.detach())
    return {
        n: (p.detach().float() * g).abs_() for (n, p), g in zip(params.items(), total, strict=True)
    }


def grasp_scores(
    model: nn.Module, loss_fn: LossFn, batches: Iterable[Any], *, adapter: AdapterArg = None
) -> dict[str, torch.Tensor]:
    """GraSP scores ``−θ ⊙ Hg``; prune the HIGHEST (``prune_by_score(..., largest=True)``).

    ``g`` is the loss gradient summed over ``batches`` (detached); ``Hg = ∂(Σ_b g_b · g)/∂θ`` by
    double backward. Sign convention as the authors' code (alecwangcq/GraSP, pruner/GraSP.py):
    the score is ``-θ * Hg`` and the top-scoring weights are removed, because removing them
    reduces gradient flow least (or increases it). Arguments as :func:`snip_scores`; the
    official code also divides logits by a temperature (T=200), which ``loss_fn`` may do.

    Example:
        >>> import torch, vlticket
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
        >>> loss = lambda m, b: m(b).pow(2).sum()
        >>> s = vlticket.saliency.grasp_scores(net, loss, [torch.ones(2, 3)])
        >>> sorted(s)
        ['0.weight', '2.weight']
    """
    params = _targets(model, adapter)
    data = _batches(batches)
    with _scoring(model, params):
        g = [torch.zeros_like(p) for p in params.values()]
        for b in data:
            for t, d in zip(g, _grads(loss_fn(model, b), params, "`loss_fn`"), strict=True):
                t.add_(d.detach())
        hg = [torch.zeros_like(p) for p in params.values()]
        # double backward: torch's fused attention kernels (transformers' default "sdpa") have
        # no second derivative; the math kernel computes the same attention and has one
        with sdpa_kernel(SDPBackend.MATH):
            for b in data:
                first = _grads(loss_fn(model, b), params, "`loss_fn`", create_graph=True)
                z = sum((a * d).sum() for a, d in zip(first, g, strict=True))
                if not z.requires_grad:  # the loss is linear in every tensor: Hg = 0
                    continue
                second = torch.autograd.grad(z, list(params.values()), allow_unused=True)
                for t, d in zip(hg, second, strict=True):
                    if d is not None:  # a tensor the loss reaches only linearly has Hg = 0
                        t.add_(d.detach())
    return {n: -(p.detach() * h).float() for (n, p), h in zip(params.items(), hg, strict=True)}


@contextlib.contextmanager
def _linearized(model: nn.Module) -> Iterator[None]:
    """Every floating-point parameter and buffer as ``|θ|`` in float64, LayerNorm as
    ``x·|γ| + |β|`` (its normalisation would map the constant all-ones signal to zero). The
    original tensors are put back afterwards: bit for bit, since they are never written."""
    module = unwrap(model)
    saved = []
    seen: set[int] = set()  # a tied tensor is listed by each owner: swap (and restore) it once
    for owner in module.modules():
        for store in (owner._parameters, owner._buffers):
            for t in store.values():
                if t is not None and t.is_floating_point() and id(t) not in seen:
                    seen.add(id(t))
                    saved.append((t, t.data))
                    t.data = t.data.detach().to(torch.float64).abs()
    hooks = [
        m.register_forward_hook(_affine_only)
        for m in module.modules()
        if isinstance(m, nn.LayerNorm)
    ]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
        for t, data in saved:
            t.data = data


def _affine_only(module: nn.LayerNorm, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """LayerNorm as ``x·|γ|·2^-k + |β|``: no centring (it would send the constant signal to 0),
    and the scale divided by a power of two near mean(|x|), held constant for the gradient.
    That division keeps every block's output near 1, as the real LayerNorm does, so R stays
    finite at any depth and attention logits stay small (their rounding noise with them); being
    an exact power of two it multiplies every score by the same factor in a network without
    biases, where the ranking is then exactly that of the unscaled R."""
    x = args[0]
    m = x.detach().abs().mean()
    usable = (m > 0) & torch.isfinite(m)
    scale = torch.where(usable, torch.exp2(-torch.round(torch.log2(m))), torch.ones_like(m))
    x = x * (module.weight * scale if module.weight is not None else scale)
    return x + module.bias if module.bias is not None else x


def _synflow_once(
    model: nn.Module, forward: Callable[[nn.Module], torch.Tensor], params: dict, keep: dict
) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        for n, p in params.items():
            if n in keep:
                p.mul_(keep[n])
    out = forward(model)
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        raise ArgumentError(
            f"`forward(model)`: expected a floating-point tensor, found {type(out).__name__}"
        )
    r = out.sum()
    if not bool(torch.isfinite(r)):
        raise ArgumentError(
            f"SynFlow's R = sum(forward(model)) is {r.item()} in float64: the product of |θ| "
            "over this many layers overflows (only LayerNorm rescales it); feed a smaller "
            "constant than ones (the ranking is the same for a bias-free network) or score "
            "fewer layers"
        )
    grads = _grads(r, params, "`forward(model)`")
    # float64 scores: R grows by orders of magnitude per layer (1e59 for BERT-base), past float32
    scores = {n: p.detach() * g for (n, p), g in zip(params.items(), grads, strict=True)}
    for n, s in scores.items():
        if not bool(torch.isfinite(s).all()):
            raise ArgumentError(
                f"SynFlow score of tensor {n!r} is not finite in float64: the gradient of R "
                "overflows (a deep network without LayerNorm, or `forward` producing inf/NaN "
                "gradients); score fewer layers or feed a smaller constant than ones"
            )
    return scores


def synflow_scores(
    model: nn.Module,
    forward: Callable[[nn.Module], torch.Tensor],
    *,
    mask: Mask | None = None,
    adapter: AdapterArg = None,
) -> dict[str, torch.Tensor]:
    """SynFlow scores ``|θ| ⊙ ∂R/∂|θ|`` of one step, with ``R = sum(forward(model))`` (data-free),
    in float64.

    The linearized network. While scoring, every floating-point parameter and buffer is ``|θ|``
    in float64 (pruned entries of ``mask`` at 0) and dropout is off; the model is restored bit
    for bit afterwards. ``forward(model)`` must feed an all-ones input in float64.

    - Embeddings: for a transformer feed ``inputs_embeds`` of ones; word embeddings are then
      not reached (leave them out with an ``adapter``: an unreached tensor is refused), and
      position or token-type embeddings enter as ``|E|`` added to the ones, like biases.
    - ``nn.LayerNorm`` acts as ``x·|γ|·2^-k + |β|``: no centring (it would send the constant
      signal to 0), and ``2^k`` a power of two near ``mean(|x|)``, held constant for the
      gradient. Without it ``R`` grows by the layer gain every block (about 1e5 per BERT-base
      layer, 1e62 after 12) and attention logits reach 1e100, where softmax amplifies float64
      rounding noise to inf. Dividing by an exact power of two keeps every block's output near
      1, as the real LayerNorm does, and in a network without biases multiplies every score by
      the same factor: the ranking is exactly that of the unscaled ``R``. With biases it sets
      them against activations of the real network's scale instead of vanishing ones.
    - Softmax is not replaced: it sees the logits of the ``|θ|`` network. Where every token is
      the same (one token, no position embeddings) they are equal, attention is the plain mean
      of the values, and query and key weights get a zero score and are pruned first, whole
      matrices at a time: score them another way or leave them out. Softmax is not monotone in
      its logits, so query/key scores may be slightly negative (``prune_by_score`` ranks them).
    - Activations (ReLU, GELU) see the positive signal and pass it on.

    A network whose ``R`` still overflows float64 (very deep, no LayerNorm) is refused.

    Example:
        >>> import torch, vlticket
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
        >>> ones = lambda m: m(torch.ones(1, 3, dtype=torch.float64))
        >>> s = vlticket.saliency.synflow_scores(net, ones)
        >>> bool((s["0.weight"] >= 0).all())
        True
    """
    params = _targets(model, adapter)
    keep = _kept(mask, params)
    with _scoring(model, params), _linearized(model):
        return _synflow_once(model, forward, params, keep)


def _kept(mask: Mask | None, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of ``mask`` for the scored tensors, each checked against its tensor."""
    if mask is None:
        return {}
    if not isinstance(mask, Mask):
        raise ArgumentError(f"`mask`: expected a vlticket.Mask, found {type(mask).__name__}")
    keep = {n: mask[n] for n in params if n in mask}
    for n, k in keep.items():
        if k.shape != params[n].shape:
            raise ShapeMismatchError(
                f"`mask[{n!r}]` has shape {tuple(k.shape)}, tensor {n!r} has "
                f"{tuple(params[n].shape)}"
            )
    return {n: k.to(params[n].device) for n, k in keep.items()}


def _synflow_iterative(
    model: nn.Module, forward: Callable, sparsity: float, iterations: int, adapter: AdapterArg
) -> Mask:
    params = _targets(model, adapter)
    mask: Mask | None = None
    with _scoring(model, params), _linearized(model):
        for k in range(1, iterations + 1):
            keep = {} if mask is None else dict(mask.items())
            scores = _synflow_once(model, forward, params, keep)
            s_k = 1.0 - (1.0 - sparsity) ** (k / iterations)
            mask = prune_by_score(scores, sparsity=s_k, mask=mask)
    return mask


# -- scores to a mask -----------------------------------------------------------------------
def prune_at_init(
    model: nn.Module,
    method: str,
    *,
    sparsity: float,
    loss_fn: LossFn | None = None,
    batches: Iterable[Any] | None = None,
    forward: Callable[[nn.Module], torch.Tensor] | None = None,
    iterations: int = 100,
    scope: str = "global",
    adapter: AdapterArg = None,
) -> Mask:
    """Prune before training with SNIP, GraSP (both need ``loss_fn`` and ``batches``) or
    SynFlow (needs ``forward``; data-free, ``iterations`` rounds on the schedule
    ``s_k = 1 − (1 − sparsity)^(k/iterations)``). The model is not changed: apply or attach
    the returned mask, then train once.

    Args:
        model: the network to prune.
        method: ``"snip"``, ``"grasp"`` or ``"synflow"``.
        sparsity: fraction pruned in all, in [0, 1).
        loss_fn, batches: see :func:`snip_scores`.
        forward: see :func:`synflow_scores`.
        iterations: SynFlow's number of prune-and-rescore steps (100 in the paper).
        scope: ``"global"`` (the methods' own) or ``"tensor"``.
        adapter: score ``adapter.prunable(model)`` under its canonical names.

    Example:
        >>> import torch, vlticket
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> ones = lambda m: m(torch.ones(1, 8, dtype=torch.float64))
        >>> mask = vlticket.saliency.prune_at_init(net, "synflow", sparsity=0.5, forward=ones)
        >>> mask.num_pruned
        40
    """
    if method not in METHODS:
        raise ArgumentError(f"`method`: expected one of {METHODS}, found {method!r}")
    if method == "synflow":
        if forward is None or not callable(forward):
            raise ArgumentError("`forward`: SynFlow needs `forward(model) -> output` on ones")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ArgumentError(f"`iterations`: expected an int >= 1, found {iterations!r}")
        if not (isinstance(sparsity, (int, float)) and 0.0 <= sparsity < 1.0):
            raise ArgumentError(f"`sparsity`: expected a float in [0, 1), found {sparsity!r}")
        if scope != "global":
            raise ArgumentError("`scope`: SynFlow ranks globally; give scope='global'")
        return _synflow_iterative(model, forward, float(sparsity), iterations, adapter)
    if loss_fn is None or batches is None:
        raise ArgumentError(f"`loss_fn` and `batches`: {method!r} needs both")
    if method == "snip":
        scores = snip_scores(model, loss_fn, batches, adapter=adapter)
        return prune_by_score(scores, sparsity=sparsity, scope=scope)
    scores = grasp_scores(model, loss_fn, batches, adapter=adapter)
    return prune_by_score(scores, sparsity=sparsity, scope=scope, largest=True)


__all__ = ["METHODS", "grasp_scores", "prune_at_init", "snip_scores", "synflow_scores"]
