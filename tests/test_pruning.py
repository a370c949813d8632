import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune as torch_prune

import vlticket
from vlticket import ArgumentError, Mask, NameMismatchError, ShapeMismatchError
from vlticket.core import _select as vp


def reference_magnitude(weights, k, mask=None):
    """Obviously correct global prune: stable sort of (|w|, name order, row-major index)."""
    entries = []
    for order, (name, w) in enumerate(weights.items()):
        flat = w.detach().reshape(-1).double().abs().tolist()
        keep = mask[name].reshape(-1).tolist() if mask is not None else [True] * len(flat)
        entries += [(v, order, i, name) for i, v in enumerate(flat) if keep[i]]
    entries.sort()
    out = {
        n: (mask[n].clone() if mask is not None else torch.ones_like(w, dtype=torch.bool))
        for n, w in weights.items()
    }
    for _, _, i, name in entries[:k]:
        out[name].view(-1)[i] = False
    return Mask(out)


shapes = st.lists(st.lists(st.integers(1, 6), min_size=1, max_size=3), min_size=1, max_size=4)


@st.composite
def weight_dicts(draw, ties=False):
    out = {}
    for i, shape in enumerate(draw(shapes)):
        n = math.prod(shape)
        seed = draw(st.integers(0, 2**31 - 1))
        g = torch.Generator().manual_seed(seed)
        t = torch.randint(-3, 4, (n,), generator=g).float() if ties else torch.randn(n, generator=g)
        out[f"layer{i}.weight"] = t.reshape(shape)
    return out


def test_hand_computed_example():
    m = vlticket.prune_magnitude({"w": torch.tensor([0.1, 0.9, -0.2, 0.5])}, sparsity=0.5)
    assert m["w"].tolist() == [False, True, False, True]
    m = vlticket.prune_magnitude(
        {"w": torch.tensor([0.1, 0.9, -0.2, 0.5])}, sparsity=0.5, largest=True
    )
    assert m["w"].tolist() == [True, False, True, False]


def test_ties_broken_by_name_order_then_index():
    w = {"b": torch.ones(2), "a": torch.ones(3)}
    assert vlticket.prune_magnitude(w, sparsity=0.6) == Mask(
        {"b": torch.tensor([False, False]), "a": torch.tensor([False, True, True])}
    )


@settings(max_examples=60, deadline=None)
@given(weight_dicts(), st.floats(0, 0.999), st.sampled_from(["global", "tensor"]))
def test_sparsity_is_exact(weights, s, scope):
    m = vlticket.prune_magnitude(weights, sparsity=s, scope=scope)
    if scope == "global":
        assert m.num_pruned == round(s * m.numel)
    else:
        for _name, t in m.items():
            assert t.numel() - int(t.sum()) == round(s * t.numel())


@settings(max_examples=60, deadline=None)
@given(weight_dicts(ties=True), st.floats(0, 0.999), st.booleans())
def test_matches_reference_with_ties(weights, s, with_mask):
    mask = vlticket.prune_random(weights, sparsity=0.3, seed=0) if with_mask else None
    k = round(s * sum(t.numel() for t in weights.values())) - (mask.num_pruned if mask else 0)
    assume(k >= 0)
    got = vlticket.prune_magnitude(weights, sparsity=s, mask=mask)
    assert got == reference_magnitude(weights, k, mask)


@pytest.mark.parametrize("sample, collect", [(8, 4), (3, 1), (1 << 20, 1 << 16)])
@pytest.mark.parametrize("ties", [False, True])
def test_bracket_search_paths_match_reference(monkeypatch, sample, collect, ties):
    # Tiny sample and collection caps force the miss, widen and bisect branches.
    monkeypatch.setattr(vp, "_SAMPLE", sample)
    monkeypatch.setattr(vp, "_MIN_CAP", collect)
    g = torch.Generator().manual_seed(3)
    w = {"x": torch.randn(40, 30, generator=g), "y": torch.randn(500, generator=g)}
    if ties:
        w = {n: t.round() for n, t in w.items()}
    prior = vlticket.prune_magnitude(w, sparsity=0.2)
    for amount in (0.05, 0.5, 0.9):
        got = vlticket.prune_magnitude(w, amount=amount, mask=prior)
        assert got == reference_magnitude(w, round(amount * prior.num_kept), prior)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes(dtype):
    g = torch.Generator().manual_seed(0)
    w = {"a": torch.randn(20, 10, generator=g).to(dtype), "b": torch.randn(50, generator=g)}
    got = vlticket.prune_magnitude(w, sparsity=0.37)
    assert got == reference_magnitude(w, round(0.37 * 250))


@settings(max_examples=40, deadline=None)
@given(weight_dicts(), st.floats(0, 0.999))
def test_global_matches_torch_global_unstructured(weights, s):
    # torch's topk breaks magnitude ties arbitrarily: compare on tie-free input only.
    magnitudes = torch.cat([w.abs().reshape(-1) for w in weights.values()])
    assume(magnitudes.unique().numel() == magnitudes.numel())
    modules = []
    for w in weights.values():
        m = nn.Module()
        m.weight = nn.Parameter(w.clone())
        modules.append(m)
    torch_prune.global_unstructured(
        [(m, "weight") for m in modules], pruning_method=torch_prune.L1Unstructured, amount=s
    )
    ours = vlticket.prune_magnitude(weights, sparsity=s)
    for m, name in zip(modules, weights, strict=True):
        assert torch.equal(m.weight_mask.bool(), ours[name])


def test_imp_rounds_match_torch_iterative_pruning(tiny_net):
    weights = {n: p.detach().clone() for n, p in tiny_net.named_parameters() if p.dim() >= 2}
    ours = None
    for _ in range(5):
        ours = vlticket.prune_magnitude(weights, amount=0.1, mask=ours)
        torch_prune.global_unstructured(
            [(tiny_net.get_submodule(n.rsplit(".", 1)[0]), "weight") for n in weights],
            pruning_method=torch_prune.L1Unstructured,
            amount=0.1,
        )
    assert ours == Mask.from_torch_prune(tiny_net)


def test_layer_scope_matches_torch_l1_unstructured(weights):
    ours = vlticket.prune_magnitude(weights, sparsity=0.3, scope="tensor")
    for name, w in weights.items():
        m = nn.Module()
        m.weight = nn.Parameter(w.clone())
        torch_prune.l1_unstructured(m, "weight", amount=0.3)
        assert torch.equal(m.weight_mask.bool(), ours[name])


@settings(max_examples=30, deadline=None)
@given(weight_dicts(ties=True), st.integers(1, 12))
def test_imp_rounds_nest_and_follow_the_schedule(weights, rounds):
    mask, kept = None, sum(t.numel() for t in weights.values())
    n = kept
    for _ in range(rounds):
        new = vlticket.prune_magnitude(weights, amount=0.1, mask=mask)
        if mask is not None:
            assert (new & ~mask).num_kept == 0  # nothing revives
        kept -= round(0.1 * kept)
        assert new.num_kept == kept
        mask = new
    assert abs(mask.sparsity - (1 - 0.9**rounds)) <= rounds / n + 1e-12


@settings(max_examples=30, deadline=None)
@given(weight_dicts(ties=True), st.floats(0, 0.999))
def test_idempotent(weights, s):
    once = vlticket.prune_magnitude(weights, sparsity=s)
    assert vlticket.prune_magnitude(weights, sparsity=s, mask=once) == once
    assert vlticket.prune_magnitude(weights, sparsity=s) == once  # deterministic


def test_largest_prunes_the_high_magnitude_half(weights):
    low = vlticket.prune_magnitude(weights, sparsity=0.5)
    high = vlticket.prune_magnitude(weights, sparsity=0.5, largest=True)
    assert high.num_pruned == low.num_pruned
    kept_low = torch.cat([w[low[n]].abs() for n, w in weights.items()])
    kept_high = torch.cat([w[high[n]].abs() for n, w in weights.items()])
    assert kept_high.max() <= kept_low.min()


def test_largest_respects_prior_mask(weights):
    prior = vlticket.prune_random(weights, sparsity=0.5, seed=1)
    high = vlticket.prune_magnitude(weights, amount=0.5, mask=prior, largest=True)
    assert (high & ~prior).num_kept == 0
    assert high.num_kept == prior.num_kept - round(0.5 * prior.num_kept)


def test_module_input_uses_default_prunable_set(tiny_net):
    m = vlticket.prune_magnitude(tiny_net, sparsity=0.5)
    assert set(m) == {"emb.weight", "fc1.weight", "fc2.weight", "head.weight"}
    assert all(p.device == m[n].device for n, p in tiny_net.named_parameters() if n in m)


# -- random pruning --------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    weight_dicts(),
    st.floats(0, 0.999),
    st.sampled_from(["global", "tensor"]),
    st.integers(0, 2**32 - 1),
)
def test_random_counts_exact_and_seeded(weights, s, scope, seed):
    a = vlticket.prune_random(weights, sparsity=s, scope=scope, seed=seed)
    assert a == vlticket.prune_random(weights, sparsity=s, scope=scope, seed=seed)
    if scope == "global":
        assert a.num_pruned == round(s * a.numel)
    else:
        assert all(t.numel() - int(t.sum()) == round(s * t.numel()) for t in a.values())


def test_random_like_matches_per_tensor_counts(weights):
    ticket = vlticket.prune_magnitude(weights, sparsity=0.6)
    rand = vlticket.prune_random(weights, like=ticket, seed=0)
    assert {n: int(t.sum()) for n, t in rand.items()} == {
        n: int(t.sum()) for n, t in ticket.items()
    }
    assert rand != ticket


def test_random_respects_mask_and_amount(weights):
    prior = vlticket.prune_magnitude(weights, sparsity=0.5)
    new = vlticket.prune_random(weights, amount=0.2, mask=prior, seed=0)
    assert (new & ~prior).num_kept == 0
    assert new.num_kept == prior.num_kept - round(0.2 * prior.num_kept)


def test_random_global_is_spread_over_tensors():
    w = {"big": torch.zeros(9000), "small": torch.zeros(1000)}
    m = vlticket.prune_random(w, sparsity=0.5, seed=0)
    assert abs(m.tensor_sparsity()["small"] - 0.5) < 0.06  # hypergeometric sd is ~0.015
    assert vlticket.prune_random(w, sparsity=0.5, seed=1) != m


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [vlticket.prune_magnitude, vlticket.prune_random])
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "exactly one"),
        ({"sparsity": 0.5, "amount": 0.1}, "exactly one"),
        ({"sparsity": 1.0}, "sparsity"),
        ({"sparsity": -0.1}, "sparsity"),
        ({"sparsity": float("nan")}, "sparsity"),
        ({"amount": 1.5}, "amount"),
        ({"amount": "0.1"}, "amount"),
        ({"sparsity": True}, "sparsity"),
        ({"sparsity": 0.5, "scope": "row"}, "scope"),
    ],
)
def test_bad_arguments(fn, weights, kwargs, match):
    with pytest.raises(ArgumentError, match=match):
        fn(weights, **kwargs)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_raise(weights, value):
    weights["b.weight"][1, 2, 0] = value
    with pytest.raises(ArgumentError, match="b.weight.*NaN or inf"):
        vlticket.prune_magnitude(weights, sparsity=0.5)


def test_mask_layout_must_match(weights):
    bad_name = Mask({"a.weight": torch.ones(12, 7, dtype=torch.bool)})
    with pytest.raises(NameMismatchError, match="b.weight"):
        vlticket.prune_magnitude(weights, amount=0.1, mask=bad_name)
    bad_shape = Mask.ones(weights)
    bad_shape["c.weight"] = torch.ones(34, dtype=torch.bool)
    with pytest.raises(ShapeMismatchError, match="c.weight"):
        vlticket.prune_random(weights, amount=0.1, mask=bad_shape)


def test_sparsity_below_current_raises(weights):
    prior = vlticket.prune_magnitude(weights, sparsity=0.5)
    with pytest.raises(ArgumentError, match="already has sparsity"):
        vlticket.prune_magnitude(weights, sparsity=0.3, mask=prior)


def test_non_float_weights_raise():
    with pytest.raises(ArgumentError, match="floating-point"):
        vlticket.prune_magnitude({"w": torch.arange(4)}, sparsity=0.5)
    with pytest.raises(ArgumentError, match="weights"):
        vlticket.prune_magnitude([torch.ones(3)], sparsity=0.5)


def test_scores_from_gradients_rank_by_salience():
    w = torch.tensor([0.1, 0.9, -0.2, 0.5])
    grad = torch.tensor([4.0, 0.1, 1.0, 1.0])
    m = vlticket.prune_by_score({"w": (w * grad).abs()}, sparsity=0.5)
    assert m["w"].tolist() == [True, False, False, True]  # |w·g| = 0.4, 0.09, 0.2, 0.5


def test_scores_match_torch_global_unstructured_with_importance_scores():
    g = torch.Generator().manual_seed(5)
    a, b = nn.Linear(7, 5), nn.Linear(5, 3)
    scores = {"a.weight": torch.rand(5, 7, generator=g), "b.weight": torch.rand(3, 5, generator=g)}
    torch_prune.global_unstructured(
        [(a, "weight"), (b, "weight")],
        pruning_method=torch_prune.L1Unstructured,
        amount=0.4,
        importance_scores={(a, "weight"): scores["a.weight"], (b, "weight"): scores["b.weight"]},
    )
    ours = vlticket.prune_by_score(scores, amount=0.4)
    assert torch.equal(ours["a.weight"], a.weight_mask.bool())
    assert torch.equal(ours["b.weight"], b.weight_mask.bool())


@pytest.mark.parametrize(
    "scores, match",
    [
        ({"w": torch.tensor([0.5, -float("inf")])}, r"`scores\['w'\]` holds NaN or inf"),
        ({"w": torch.tensor([0.5, float("nan")])}, "NaN or inf"),
        ({"w": torch.tensor([1, 2])}, "floating-point"),
        ([torch.ones(2)], "`scores`"),
    ],
)
def test_bad_scores_are_refused(scores, match):
    with pytest.raises(ArgumentError, match=match):
        vlticket.prune_by_score(scores, sparsity=0.5)


def test_scores_must_fit_the_mask():
    mask = Mask({"w": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ShapeMismatchError):
        vlticket.prune_by_score({"w": torch.ones(4)}, amount=0.5, mask=mask)
