"""Relaxed-ticket selection on hand-computed tables, and the study's baselines."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import vlticket
from vlticket import baselines
from vlticket.errors import ArgumentError
from vlticket.search import relaxed_ticket


# -- relaxed ticket ------------------------------------------------------------------------------
def history(*rows):
    return [
        {"round": i, "sparsity": s, "metrics": {"accuracy": a, "loss": 1 - a}}
        for i, (s, a) in enumerate(rows)
    ]


@pytest.mark.parametrize(
    ("table", "p", "expected"),
    [
        ({0.0: 0.80, 0.5: 0.795, 0.7: 0.78}, 0.99, 0.5),  # threshold 0.792
        ({0.0: 0.80, 0.5: 0.792, 0.7: 0.7919}, 0.99, 0.5),  # exactly at the threshold counts
        ({0.0: 0.80, 0.3: 0.70, 0.5: 0.80, 0.7: 0.60}, 0.99, 0.5),  # not monotone: highest wins
        ({0.0: 0.80, 0.5: 0.70}, 0.99, 0.0),
        ({0.0: 0.80, 0.5: 0.70}, 0.85, 0.5),  # threshold 0.68
    ],
)
def test_relaxed_ticket_tables(table, p, expected):
    assert relaxed_ticket(table, p=p).sparsity == expected


def test_relaxed_ticket_none_when_nothing_qualifies():
    assert relaxed_ticket({0.5: 0.1, 0.7: 0.2}, dense=0.9) is None


def test_relaxed_ticket_from_history_needs_metric_name():
    h = history((0.0, 0.9), (0.2, 0.895), (0.36, 0.85))
    with pytest.raises(ArgumentError, match="metric"):
        relaxed_ticket(h)
    t = relaxed_ticket(h, metric="accuracy")
    assert (t.sparsity, t.mean, t.std, t.seeds) == (0.2, 0.895, 0.0, 1)
    assert t.threshold == pytest.approx(0.891)


def test_relaxed_ticket_mean_and_std_over_seeds():
    # sparsity 0.5: mean (0.78 + 0.80 + 0.82) / 3 = 0.80, sample std sqrt((0.02² * 2) / 2) = 0.02
    # dense mean 0.80 -> threshold 0.792: 0.5 qualifies, 0.7 (mean 0.79) does not.
    seeds = [
        history((0.0, 0.79), (0.5, 0.78), (0.7, 0.80)),
        history((0.0, 0.80), (0.5, 0.80), (0.7, 0.78)),
        history((0.0, 0.81), (0.5, 0.82), (0.7, 0.79)),
    ]
    t = relaxed_ticket(seeds, metric="accuracy", p=0.99)
    assert t.sparsity == 0.5
    assert t.mean == pytest.approx(0.80)
    assert t.std == pytest.approx(0.02)
    assert t.dense == pytest.approx(0.80)
    assert t.seeds == 3
    table = {0.0: [0.79, 0.80, 0.81], 0.5: [0.78, 0.80, 0.82], 0.7: [0.80, 0.78, 0.79]}
    assert relaxed_ticket(table, p=0.99) == t


def test_relaxed_ticket_explicit_dense_per_seed():
    t = relaxed_ticket({0.5: [0.9, 0.7], 0.8: [0.6, 0.6]}, dense=[0.8, 0.8], p=1.0)
    assert (t.sparsity, t.mean, t.std) == (0.5, pytest.approx(0.8), pytest.approx(math.sqrt(0.02)))


def test_relaxed_ticket_rejects_seeds_with_other_sparsities():
    with pytest.raises(ArgumentError, match="sparsities"):
        relaxed_ticket(
            [history((0.0, 0.8), (0.5, 0.8)), history((0.0, 0.8), (0.6, 0.8))], metric="accuracy"
        )


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.floats(0, 0.99), st.floats(0, 1), min_size=1), st.floats(0.01, 1))
def test_relaxed_ticket_property(table, p):
    table = {0.0: 0.5, **table}
    t = relaxed_ticket(table, p=p)
    threshold = p * table[0.0]
    qualifying = [s for s, v in table.items() if v >= threshold - 1e-12]
    assert t.sparsity == max(qualifying)


# -- baselines -----------------------------------------------------------------------------------
class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(10, 20)
        self.b = nn.Linear(20, 30)
        self.head = nn.Linear(30, 2)


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = Net()
    theta0 = vlticket.Checkpoint.capture(model.state_dict(keep_vars=True))
    ticket = vlticket.prune_magnitude(
        {"a.weight": model.a.weight, "b.weight": model.b.weight}, sparsity=0.7
    )
    with torch.no_grad():  # "training" moved the weights away from θ0
        for p in model.parameters():
            p.add_(1.0)
    return model, theta0, ticket


def test_random_mask_global_and_per_tensor(setup):
    _, _, ticket = setup
    glob = baselines.random_mask(ticket, seed=0)
    assert glob.num_pruned == ticket.num_pruned
    assert glob != ticket
    per = baselines.random_mask(ticket, per_tensor=True, seed=0)
    for name in ticket:
        assert per[name].sum() == ticket[name].sum()
    assert baselines.random_mask(ticket, seed=3) == baselines.random_mask(ticket, seed=3)


def test_retrain_resets_to_init_and_attaches(setup):
    model, theta0, ticket = setup
    handle = baselines.retrain(model, ticket, theta0)
    assert torch.equal(model.a.weight, theta0["a.weight"] * ticket["a.weight"])
    assert torch.equal(model.head.weight, theta0["head.weight"])
    assert handle.attached
    handle.remove()


@pytest.mark.parametrize("per_tensor", [False, True])
def test_random_pruning_baseline(setup, per_tensor):
    model, theta0, ticket = setup
    handle = baselines.random_pruning(model, ticket, theta0, per_tensor=per_tensor, seed=1)
    kept = handle.mask
    assert kept.num_pruned == ticket.num_pruned
    assert torch.equal(model.b.weight, theta0["b.weight"] * kept["b.weight"])
    handle.remove()


def test_complement_baseline(setup):
    model, theta0, ticket = setup
    with baselines.complement(model, ticket, theta0) as handle:
        assert handle.mask == ~ticket
        assert not model.a.weight[ticket["a.weight"]].any()


def test_shuffled_weights_baseline(setup):
    model, theta0, ticket = setup
    with baselines.shuffled_weights(model, ticket, theta0, seed=0):
        for name in ticket:
            w = model.get_parameter(name).detach()
            assert not w[~ticket[name]].any()
            assert not torch.equal(w, theta0[name] * ticket[name])
        # tensors the ticket does not cover keep θ0
        assert torch.equal(model.head.weight, theta0["head.weight"])
        assert torch.equal(model.a.bias, theta0["a.bias"])


def test_shuffled_weights_permutes_within_each_tensor(setup):
    model, theta0, ticket = setup
    full = vlticket.Mask({n: torch.ones_like(t) for n, t in ticket.items()})
    with baselines.shuffled_weights(model, full, theta0, seed=0):
        for name in ticket:
            got = model.get_parameter(name).detach().reshape(-1).sort().values
            assert torch.equal(got, theta0[name].reshape(-1).sort().values)


def test_foreign_weights_baseline(setup):
    model, theta0, ticket = setup
    foreign = vlticket.Checkpoint({"a.weight": torch.full((20, 10), 2.0)})
    with baselines.foreign_weights(model, ticket, theta0, foreign):
        assert torch.equal(model.a.weight, 2.0 * ticket["a.weight"])
        assert torch.equal(model.b.weight, theta0["b.weight"] * ticket["b.weight"])


class Canonical:
    """A stand-in adapter: task-independent names for the two backbone matrices."""

    def prunable(self, model):
        return {"layer.0": model.a.weight, "layer.1": model.b.weight}


def test_transfer_with_adapter_names(setup):
    model_s, _, _ = setup
    torch.manual_seed(1)
    model_t = Net()
    model_t.head = nn.Linear(30, 5)  # task T has its own head
    theta0_t = vlticket.Checkpoint.capture(model_t.state_dict(keep_vars=True))
    ticket_s = vlticket.prune_magnitude(model_s, sparsity=0.5, adapter=Canonical())
    with baselines.transfer(model_t, ticket_s, theta0_t, adapter=Canonical()):
        assert not model_t.a.weight[~ticket_s["layer.0"]].any()
        assert torch.equal(model_t.head.weight, theta0_t["head.weight"])
    with baselines.shuffled_weights(model_t, ticket_s, theta0_t, seed=0, adapter=Canonical()):
        assert not model_t.b.weight[~ticket_s["layer.1"]].any()


def test_baselines_reject_wrong_types(setup):
    model, theta0, ticket = setup
    with pytest.raises(ArgumentError, match="ticket"):
        baselines.retrain(model, {"a.weight": torch.ones(2)}, theta0)
    with pytest.raises(ArgumentError, match="init"):
        baselines.random_pruning(model, ticket, {"a.weight": torch.ones(2)})
