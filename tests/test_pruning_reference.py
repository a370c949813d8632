"""The fast pruning, IoU and attach paths against slow, obviously correct references.

The search constants are shrunk in some tests so that small inputs take every path: many
chunks, a sparse sample, misses, full-pass histograms and the two-pass tie finish.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import vlticket
from vlticket import Mask
from vlticket.core import _passes as passes
from vlticket.core import _select as vs

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


# -- the reference ----------------------------------------------------------------------------
def _order(weights, mask, names):
    """Eligible entries sorted by (|w|, name order, row-major index)."""
    entries = []
    for order, name in enumerate(names):
        mags = weights[name].detach().reshape(-1).double().abs().tolist()
        keep = mask[name].reshape(-1).tolist() if mask is not None else [True] * len(mags)
        entries += [(m, order, i, name) for i, m in enumerate(mags) if keep[i]]
    return sorted(entries)


def reference(weights, *, sparsity=None, amount=None, mask=None, scope="global", largest=False):
    out = {
        n: (
            mask[n].clone(memory_format=torch.contiguous_format)
            if mask is not None
            else torch.ones_like(w, dtype=torch.bool)
        )
        for n, w in weights.items()
    }
    pools = [[n] for n in weights] if scope == "tensor" else [list(weights)]
    for pool in pools:
        entries = _order(weights, mask, pool)
        numel = sum(weights[n].numel() for n in pool)
        if amount is not None:
            k = round(amount * len(entries))
        else:
            k = round(sparsity * numel) - (numel - len(entries))
        # Pruning the k largest is keeping the (eligible - k) smallest, earliest ties first.
        pruned = entries[len(entries) - k :] if largest else entries[:k]
        for _, _, i, name in pruned:
            out[name].view(-1)[i] = False
    return Mask(out)


@contextlib.contextmanager
def tiny_search(chunk=5, sample=6, collect=2, block=2, bins=4):
    saved = (passes.CHUNK, vs._SAMPLE, vs._MIN_CAP, vs._BLOCK, passes.BINS)
    passes.CHUNK, vs._SAMPLE, vs._MIN_CAP, vs._BLOCK, passes.BINS = (
        chunk,
        sample,
        collect,
        block,
        bins,
    )
    try:
        yield
    finally:
        passes.CHUNK, vs._SAMPLE, vs._MIN_CAP, vs._BLOCK, passes.BINS = saved


# -- random inputs --------------------------------------------------------------------------
@st.composite
def problems(draw):
    n_tensors = draw(st.integers(1, 4))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    ties = draw(st.sampled_from(["none", "heavy", "zeros"]))
    weights = {}
    for i in range(n_tensors):
        shape = tuple(draw(st.lists(st.integers(0, 9), min_size=1, max_size=3)))
        if ties == "heavy":
            t = torch.randint(-2, 3, shape, generator=g).float() / 2
        elif ties == "zeros":  # +0.0 and -0.0 tie; a few distinct values
            t = torch.randn(shape, generator=g) * (torch.rand(shape, generator=g) < 0.3)
        else:
            t = torch.randn(shape, generator=g)
        weights[f"m{draw(st.integers(0, 99))}.{i}"] = t.to(draw(st.sampled_from(DTYPES)))
    mask = None
    if draw(st.booleans()):
        mask = Mask({n: torch.rand(w.shape, generator=g) < 0.7 for n, w in weights.items()})
    kwargs = {
        "mask": mask,
        "largest": draw(st.booleans()),
        "scope": draw(st.sampled_from(["global", "tensor"])),
    }
    if draw(st.booleans()) or mask is not None:
        kwargs["amount"] = draw(st.floats(0, 0.999))
    else:
        kwargs["sparsity"] = draw(st.floats(0, 0.999))
    return weights, kwargs


@settings(max_examples=150, deadline=None)
@given(problems())
def test_matches_reference(problem):
    weights, kwargs = problem
    assert vlticket.prune_magnitude(weights, **kwargs) == reference(weights, **kwargs)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(), st.sampled_from([(3, 4, 0, 1, 2), (5, 6, 2, 2, 4), (16, 32, 1, 4, 1024)]))
def test_matches_reference_on_every_search_path(problem, sizes):
    weights, kwargs = problem
    with tiny_search(*sizes):
        got = vlticket.prune_magnitude(weights, **kwargs)
    assert got == reference(weights, **kwargs)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(), st.booleans())
def test_scores_match_reference(problem, tiny):
    """prune_by_score ranks any non-negative scores as prune_magnitude ranks |w|."""
    weights, kwargs = problem
    scores = {n: w.abs() for n, w in weights.items()}
    with tiny_search() if tiny else contextlib.nullcontext():
        got = vlticket.prune_by_score(scores, **kwargs)
    assert got == reference(scores, **kwargs)
    assert got == vlticket.prune_magnitude(weights, **kwargs)


def test_paths_are_taken(monkeypatch):
    """The shrunk search really reaches the fallback branches the references check."""
    calls = {"hist": 0, "threshold": 0, "collected": 0}
    for key, fn in (
        ("hist", "histogram"),
        ("threshold", "_finish_threshold"),
        ("collected", "_finish_collected"),
    ):
        original = getattr(vs, fn)

        def counting(*a, _key=key, _f=original, **k):
            calls[_key] += 1
            return _f(*a, **k)

        monkeypatch.setattr(vs, fn, counting)
    g = torch.Generator().manual_seed(0)
    distinct = {"a": torch.randn(30, 20, generator=g), "b": torch.randn(300, generator=g)}
    # Ties of ~600 entries: more than a pass may collect.
    tied = {"a": distinct["a"], "b": torch.randint(-2, 3, (3000,), generator=g).float()}
    with tiny_search():
        for w in (distinct, tied):
            for s in (0.1, 0.3, 0.5, 0.7):
                assert vlticket.prune_magnitude(w, sparsity=s) == reference(w, sparsity=s)
    assert all(calls.values()), calls


# -- default sizes: many chunks, a real sample -----------------------------------------------
def _fast_reference(weights, k, mask=None):
    """Sort-based reference for large inputs: stable argsort of |w| in name/index order."""
    names = list(weights)
    mags = torch.cat([weights[n].detach().reshape(-1).double().abs() for n in names])
    keep = torch.cat(
        [
            (
                mask[n] if mask is not None else torch.ones_like(weights[n], dtype=torch.bool)
            ).reshape(-1)
            for n in names
        ]
    )
    mags[~keep] = math.inf
    order = torch.sort(mags, stable=True).indices[:k]
    keep[order] = False
    sizes = [weights[n].numel() for n in names]
    parts = keep.split(sizes)
    return Mask({n: p.reshape(weights[n].shape) for n, p in zip(names, parts, strict=True)})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("ties", [False, True])
def test_large_inputs_match_sort_reference(dtype, ties):
    g = torch.Generator().manual_seed(7)
    w = {f"l{i}": torch.randn(257, 300 + i, generator=g) for i in range(4)}
    w["z"] = torch.randn(123_457, generator=g)
    if ties:
        w = {n: (t * 4).round() / 4 for n, t in w.items()}
    w = {n: t.to(dtype) for n, t in w.items()}
    numel = sum(t.numel() for t in w.values())
    first = vlticket.prune_magnitude(w, sparsity=0.2)
    assert first == _fast_reference(w, round(0.2 * numel))
    for amount in (0.1, 0.5):
        got = vlticket.prune_magnitude(w, amount=amount, mask=first)
        assert got == _fast_reference(w, round(0.2 * numel) + round(amount * first.num_kept))


def test_nan_is_reported_by_name_even_with_nothing_to_prune():
    w = {"a": torch.ones(3), "b": torch.tensor([1.0, float("nan"), float("inf")])}
    for kwargs in ({"sparsity": 0.0}, {"sparsity": 0.5}, {"amount": 0.99}):
        with pytest.raises(vlticket.ArgumentError, match=r"'b'.* 2 NaN or inf"):
            vlticket.prune_magnitude(w, **kwargs)


def test_non_contiguous_weights_and_masks():
    g = torch.Generator().manual_seed(1)
    w = {"t": torch.randn(30, 40, generator=g).t(), "u": torch.randn(64, 9, generator=g)[::2]}
    mask = Mask({n: (torch.rand(t.t().shape, generator=g) < 0.8).t() for n, t in w.items()})
    with tiny_search(chunk=37, sample=50, collect=8, block=4, bins=16):
        got = vlticket.prune_magnitude(w, amount=0.3, mask=mask)
    assert got == reference(w, amount=0.3, mask=mask)


# -- IoU and attach ---------------------------------------------------------------------------
def _pairwise(masks):
    names = list(masks)
    out = torch.ones(len(names), len(names), dtype=torch.float64)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            out[i, j] = vlticket.iou(masks[a], masks[b])
    return out


@pytest.mark.parametrize("n_masks", [1, 3, 8, 11])
@pytest.mark.parametrize("numpy_popcount", [True, False])
def test_iou_matrix_matches_pairwise_iou(monkeypatch, n_masks, numpy_popcount):
    if not numpy_popcount and hasattr(np, "bitwise_count"):
        monkeypatch.delattr(np, "bitwise_count")  # the NumPy < 2 branch
    g = torch.Generator().manual_seed(n_masks)
    shapes = {"a": (13, 7), "b": (0, 4), "c": (65,)}  # odd sizes: packing pads the last word
    masks = {
        f"m{i}": Mask({n: torch.rand(s, generator=g) < 0.3 for n, s in shapes.items()})
        for i in range(n_masks)
    }
    masks["empty"] = Mask({n: torch.zeros(s, dtype=torch.bool) for n, s in shapes.items()})
    names, matrix = vlticket.iou_matrix(masks)
    assert names == list(masks)
    assert torch.allclose(matrix, _pairwise(masks))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_attached_mask_keeps_pruned_weights_at_zero(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 4)).to(dtype)
    model[0].weight.data = model[0].weight.data.t().contiguous().t()  # a non-contiguous one
    mask = vlticket.prune_magnitude(model, sparsity=0.5)
    # Momentum and weight decay: the two hooks keep pruned entries at exactly zero.
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.1)
    with mask.attach(model, opt):
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(5, 6, dtype=dtype)).square().sum().backward()
            for name, p in model.named_parameters():
                if name in mask:
                    assert not p.grad[~mask[name]].any()
            opt.step()
    for name, p in model.named_parameters():
        if name in mask:
            assert not p[~mask[name]].any()
            assert p[mask[name]].ne(0).all()
