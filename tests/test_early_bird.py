"""EarlyBird: the queue, the distance rule, a custom draw, bad input, and an early stop."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import vlticket
from vlticket import EarlyBird, Mask


def _mask(bits):
    return Mask({"w": torch.tensor(bits, dtype=torch.bool)})


def _scripted(masks):
    it = iter(masks)
    return lambda model: next(it)


def test_drawn_only_when_newest_is_close_to_every_queued_mask():
    a = _mask([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    b = _mask([1, 1, 1, 0, 1, 0, 0, 0, 0, 0])  # distance 0.2 from a
    c = _mask([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])  # = a, distance 0.2 from b
    eb = EarlyBird(draw=_scripted([a, b, c, c, c, c]), epsilon=0.1, queue=3)
    got = [eb.check(None) for _ in range(5)]
    # queue [a,b,c]: c vs b is 0.2 > 0.1; [b,c,c]: still b; [c,c,c]: drawn
    assert got == [False, False, False, False, True]
    assert eb.distances == [1.0, 0.2, 0.2, 0.2, 0.0]
    assert eb.drawn and eb.mask == c and eb.checks == 5
    assert eb.check(None) is True and eb.checks == 5  # nothing more once drawn


def test_epsilon_is_inclusive():
    a, b = _mask([1, 0, 0, 0, 0, 0, 0, 0, 0, 0]), _mask([0, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    eb = EarlyBird(draw=_scripted([a, b]), epsilon=0.2, queue=2)
    assert [eb.check(None), eb.check(None)] == [False, True]


def test_magnitude_draw_matches_prune_magnitude():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 2))
    eb = EarlyBird(sparsity=0.6, queue=2)
    eb.check(net)
    assert eb.mask == vlticket.prune_magnitude(net, sparsity=0.6)


def test_stops_training_early_when_masks_settle():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    eb = EarlyBird(sparsity=0.5, epsilon=0.05, queue=3)
    steps = 0
    for step in range(1, 1001):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps = step
        if step % 10 == 0 and eb.check(net):
            break
    assert eb.drawn and steps < 1000
    assert eb.mask == vlticket.prune_magnitude(net, sparsity=0.5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sparsity": 0.5, "epsilon": 0.0}, "epsilon"),
        ({"sparsity": 0.5, "epsilon": 1.0}, "epsilon"),
        ({"sparsity": 0.5, "epsilon": -0.1}, "epsilon"),
        ({"sparsity": 0.5, "queue": 1}, "queue"),
        ({"sparsity": 0.5, "queue": 2.0}, "queue"),
        ({}, "exactly one"),
        ({"sparsity": 0.5, "draw": lambda m: None}, "exactly one"),
        ({"sparsity": 1.5}, "sparsity"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(vlticket.ArgumentError, match=match):
        EarlyBird(**kwargs)


def test_draw_must_return_a_mask():
    eb = EarlyBird(draw=lambda m: {"w": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(vlticket.ArgumentError, match="draw"):
        eb.check(None)
    assert eb.checks == 0 and eb.mask is None


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 70), min_size=1, max_size=3),
    queue=st.integers(2, 4),
    draws=st.integers(1, 7),
    seed=st.integers(0, 2**16),
)
def test_packed_distances_match_mask_distance(sizes, queue, draws, seed):
    """The queue holds packed bits; each check's distance is mask_distance's, on the last masks."""
    g = torch.Generator().manual_seed(seed)
    masks = [
        Mask({f"t{i}": torch.rand(n, generator=g) < 0.5 for i, n in enumerate(sizes)})
        for _ in range(draws)
    ]
    eb = EarlyBird(draw=_scripted(masks), epsilon=0.01, queue=queue)
    for k in range(draws):
        if eb.drawn:  # identical masks in a full queue: drawn, later checks do nothing
            assert eb.check(None) and len(eb.distances) == k
            break
        eb.check(None)
        window = masks[max(0, k - queue + 1) : k]
        expected = max((vlticket.mask_distance(masks[k], m) for m in window), default=1.0)
        assert eb.distances[-1] == pytest.approx(expected, abs=1e-12)
        assert eb.mask == masks[k]


@pytest.mark.parametrize(
    "bad, error",
    [
        (Mask({"w": torch.ones(11, dtype=torch.bool)}), vlticket.ShapeMismatchError),
        (Mask({"v": torch.ones(10, dtype=torch.bool)}), vlticket.NameMismatchError),
    ],
)
def test_draw_with_another_layout_raises_and_changes_nothing(bad, error):
    a = _mask([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    eb = EarlyBird(draw=_scripted([a, bad]), queue=3)
    eb.check(None)
    with pytest.raises(error):
        eb.check(None)
    assert eb.checks == 1 and eb.distances == [1.0] and eb.mask == a and not eb.drawn
