import copy

import pytest
import torch
from conftest import TinyNet
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import vlticket
from vlticket import ArgumentError


def _train(model, opt, steps, handle=None):
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        ids = torch.randint(0, 10, (8, 5), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(ids), torch.randint(0, 3, (8,), generator=g)).backward()
        if handle is not None:
            for name, p in model.named_parameters():
                if name in handle.mask and p.grad is not None:
                    assert torch.all(p.grad[~handle.mask[name]] == 0)
        opt.step()


def _assert_zero(model, mask):
    for name, p in model.named_parameters():
        if name in mask:
            assert torch.all(p[~mask[name]] == 0), name


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3),
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
        lambda ps: torch.optim.Adam(ps, lr=1e-2),
    ],
    ids=["sgd-momentum", "adamw", "adam"],
)
def test_pruned_weights_stay_zero_even_with_dense_optimizer_state(tiny_net, make_opt):
    opt = make_opt(tiny_net.parameters())
    _train(tiny_net, opt, 5)  # momentum / Adam moments from dense training
    mask = vlticket.prune_magnitude(tiny_net, sparsity=0.6)
    names = {n: id(p) for n, p in tiny_net.named_parameters()}
    keys = list(tiny_net.state_dict())
    with mask.attach(tiny_net, opt) as handle:
        _assert_zero(tiny_net, mask)
        _train(tiny_net, opt, 40, handle)
        _assert_zero(tiny_net, mask)
    assert {n: id(p) for n, p in tiny_net.named_parameters()} == names
    assert list(tiny_net.state_dict()) == keys
    _train(tiny_net, opt, 1)  # once removed, the dense optimizer state revives weights again
    assert any(torch.any(p[~mask[n]] != 0) for n, p in tiny_net.named_parameters() if n in mask)


def test_kept_weights_still_train(tiny_net):
    mask = vlticket.prune_magnitude(tiny_net, sparsity=0.5)
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.1)
    before = {n: p.detach().clone() for n, p in tiny_net.named_parameters()}
    with mask.attach(tiny_net, opt):
        _train(tiny_net, opt, 3)
    w = tiny_net.fc1.weight
    assert not torch.equal(w[mask["fc1.weight"]], before["fc1.weight"][mask["fc1.weight"]])


def test_without_optimizer_gradients_are_masked(tiny_net):
    mask = vlticket.prune_magnitude(tiny_net, sparsity=0.5)
    handle = mask.attach(tiny_net)
    tiny_net(torch.randint(0, 10, (4, 3))).sum().backward()
    for name, p in tiny_net.named_parameters():
        if name in mask:
            assert torch.all(p.grad[~mask[name]] == 0)
    handle.remove()
    assert not handle.attached
    tiny_net.zero_grad()
    tiny_net(torch.randint(0, 10, (4, 3))).sum().backward()
    assert torch.any(tiny_net.fc2.weight.grad[~mask["fc2.weight"]] != 0)


def test_remove_detaches_the_optimizer_hook(tiny_net):
    mask = vlticket.prune_magnitude(tiny_net, sparsity=0.5)
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.1, weight_decay=0.0)
    mask.attach(tiny_net, opt).remove()
    with torch.no_grad():
        tiny_net.fc1.weight.fill_(1.0)
    opt.step()  # no grads: the step itself changes nothing, and no hook re-zeroes
    assert torch.all(tiny_net.fc1.weight == 1.0)


def test_attach_validates_before_touching(tiny_net):
    mask = vlticket.prune_magnitude(tiny_net, sparsity=0.5)
    mask["ghost.weight"] = torch.ones(2, dtype=torch.bool)
    before = tiny_net.fc1.weight.detach().clone()
    with pytest.raises(vlticket.NameMismatchError, match="ghost.weight"):
        mask.attach(tiny_net)
    assert torch.equal(tiny_net.fc1.weight, before)
    with pytest.raises(ArgumentError, match="optimizer"):
        vlticket.prune_magnitude(tiny_net, sparsity=0.5).attach(tiny_net, optimizer="sgd")


def test_attach_refuses_views(tiny_net):
    view = {"fc1.weight": tiny_net.fc1.weight[:4]}
    mask = vlticket.Mask({"fc1.weight": torch.ones(4, 8, dtype=torch.bool)})
    with pytest.raises(ArgumentError, match="leaf"):
        mask.attach(view)


def test_bad_optimizer_is_refused_before_the_model_changes(tiny_net):
    mask = vlticket.prune_magnitude(tiny_net, sparsity=0.5)
    before = tiny_net.fc1.weight.detach().clone()
    with pytest.raises(ArgumentError, match="optimizer"):
        mask.attach(tiny_net, tiny_net.parameters())
    assert torch.equal(tiny_net.fc1.weight, before)
    tiny_net(torch.randint(0, 10, (4, 3))).sum().backward()  # no hook was left behind
    assert torch.any(tiny_net.fc1.weight.grad[~mask["fc1.weight"]] != 0)


class WrappedOptimizer(torch.optim.Optimizer):
    """Like accelerate's AcceleratedOptimizer: a subclass that skips Optimizer.__init__."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def step(self, closure=None):
        return self.optimizer.step(closure)

    def zero_grad(self, set_to_none=True):
        self.optimizer.zero_grad(set_to_none)


def test_wrapped_optimizer_is_hooked_through_its_inner_one(tiny_net):
    opt = WrappedOptimizer(torch.optim.AdamW(tiny_net.parameters(), lr=1e-2, weight_decay=0.1))
    _train(tiny_net, opt, 3)
    mask = vlticket.prune_magnitude(tiny_net, sparsity=0.6)
    with mask.attach(tiny_net, opt):
        _train(tiny_net, opt, 10)
        _assert_zero(tiny_net, mask)


def test_dense_optimizer_state_is_cleared_for_pruned_weights(tiny_net):
    opt = torch.optim.Adam(tiny_net.parameters(), lr=1e-2)
    _train(tiny_net, opt, 3)
    mask = vlticket.prune_magnitude(tiny_net, sparsity=0.6)
    with mask.attach(tiny_net, opt):
        state = opt.state[tiny_net.fc2.weight]
        pruned = ~mask["fc2.weight"]
        assert torch.all(state["exp_avg"][pruned] == 0)
        assert torch.all(state["exp_avg_sq"][pruned] == 0)


# -- the fast path for torch's elementwise optimizers ----------------------------------------
EXACT_OPTIMIZERS = {
    "sgd-nesterov-wd": lambda ps: torch.optim.SGD(
        ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2
    ),
    "adam-amsgrad-l2": lambda ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True, weight_decay=0.1),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
    "adamw-foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, foreach=True),
    "adamw-fused": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, fused=True),
    "adamax": lambda ps: torch.optim.Adamax(ps, lr=1e-2, weight_decay=0.1),
    "nadam-decoupled": lambda ps: torch.optim.NAdam(
        ps, lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True
    ),
    "radam": lambda ps: torch.optim.RAdam(ps, lr=1e-2, weight_decay=0.1),
    "adagrad": lambda ps: torch.optim.Adagrad(ps, lr=1e-2, initial_accumulator_value=0.1),
    "rmsprop-centered": lambda ps: torch.optim.RMSprop(
        ps, lr=1e-3, momentum=0.9, centered=True, weight_decay=0.1
    ),
}


def test_every_fast_path_optimizer_is_tested():
    made = {type(make([nn.Parameter(torch.ones(1))])) for make in EXACT_OPTIMIZERS.values()}
    assert made == vlticket.core.attach._ZERO_PRESERVING


class _Counting:
    """Records which tensors the hooks zero, by storage address."""

    def __init__(self, monkeypatch):
        self.zeroed: list[int] = []
        real = vlticket.core.attach._zero_pruned

        def counting(t, keep):
            self.zeroed.append(t.data_ptr())
            real(t, keep)

        monkeypatch.setattr(vlticket.core.attach, "_zero_pruned", counting)


@pytest.mark.parametrize("make_opt", EXACT_OPTIMIZERS.values(), ids=EXACT_OPTIMIZERS.keys())
def test_elementwise_optimizers_keep_zeros_without_a_weight_pass(tiny_net, make_opt, monkeypatch):
    opt = make_opt(tiny_net.parameters())
    _train(tiny_net, opt, 3)
    mask = vlticket.prune_magnitude(tiny_net, sparsity=0.6)
    counting = _Counting(monkeypatch)
    with mask.attach(tiny_net, opt) as handle:
        _train(tiny_net, opt, 2, handle)
        counting.zeroed.clear()
        _train(tiny_net, opt, 20, handle)
        _assert_zero(tiny_net, mask)
    weights = {p.data_ptr() for n, p in tiny_net.named_parameters() if n in mask}
    assert counting.zeroed, "gradients are still masked"
    assert weights.isdisjoint(counting.zeroed), "no weight needed re-zeroing"


class SignedDrift(torch.optim.SGD):
    """Not elementwise-safe: moves every entry, zero gradient or not."""

    @torch.no_grad()
    def step(self, closure=None):
        super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(1e-3)


@pytest.mark.parametrize(
    "make_opt",
    [lambda ps: SignedDrift(ps, lr=0.1), lambda ps: torch.optim.LBFGS(ps, lr=0.1)],
    ids=["subclass", "lbfgs"],
)
def test_other_optimizers_get_the_weights_rezeroed_after_each_step(tiny_net, make_opt):
    opt = make_opt(tiny_net.parameters())
    mask = vlticket.prune_magnitude(tiny_net, sparsity=0.5)
    ids = torch.randint(0, 10, (8, 5))

    def closure():
        opt.zero_grad()
        loss = tiny_net(ids).pow(2).mean()
        loss.backward()
        return loss

    with mask.attach(tiny_net, opt):
        for _ in range(3):
            opt.step(closure)
            _assert_zero(tiny_net, mask)


def _dense_states(make_opt, seed=3):
    torch.manual_seed(seed)
    dense = TinyNet()
    opt = make_opt(dense.parameters())
    _train(dense, opt, 3)
    return dense.state_dict(), opt.state_dict()


def _step_with(model, opt, ids, events):
    opt.zero_grad()
    model(ids).pow(2).mean().backward()
    if "noise" in events:  # e.g. differential privacy, added after the hooks ran
        for p in model.parameters():
            p.grad.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(7)))
    if "replace" in events:
        model.fc1.weight.grad = torch.ones_like(model.fc1.weight)
    if "clip" in events:
        nn.utils.clip_grad_norm_(model.parameters(), 0.01)
    opt.step()


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(sorted(EXACT_OPTIMIZERS)),
    script=st.lists(
        st.sets(st.sampled_from(["noise", "replace", "clip", "load-weights", "load-state"])),
        min_size=1,
        max_size=6,
    ),
)
def test_fast_path_matches_rezeroing_every_step_bit_for_bit(name, script):
    """Whatever writes weights, gradients or optimizer state between steps, the fast path
    gives the same weights as the full re-zeroing pass (taken for a subclass)."""
    make_opt = EXACT_OPTIMIZERS[name]
    weights_sd, opt_sd = _dense_states(make_opt)
    runs = []
    for exact in (True, False):
        torch.manual_seed(0)
        model = TinyNet()
        opt = make_opt(model.parameters())
        if not exact:
            opt.__class__ = type("Sub", (type(opt),), {})
        mask = vlticket.prune_magnitude(model, sparsity=0.5)
        with mask.attach(model, opt):
            for i, events in enumerate(script):
                if "load-weights" in events:
                    model.load_state_dict(weights_sd)
                if "load-state" in events:
                    opt.load_state_dict(copy.deepcopy(opt_sd))  # torch aliases its tensors
                _step_with(model, opt, torch.randint(0, 10, (4, 5)).fill_(i), events)
                _assert_zero(model, mask)
        runs.append(model.state_dict())
    fast, full = runs
    assert all(torch.equal(fast[k], full[k]) for k in fast)


_POISON = [float("nan"), float("inf"), float("-inf"), -0.0, -1e30]


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from([*sorted(EXACT_OPTIMIZERS), "subclass"]),
    where=st.sets(st.sampled_from(["weight", "grad", "state", "at-attach"]), min_size=1),
    seed=st.integers(0, 2**16),
)
def test_pruned_entries_are_exactly_plus_zero_whatever_was_written_there(name, where, seed):
    """NaN * 0 is NaN: the hooks must overwrite pruned entries, not multiply them by zero."""
    make_opt = EXACT_OPTIMIZERS["adamw" if name == "subclass" else name]
    torch.manual_seed(0)
    model = TinyNet()
    opt = make_opt(model.parameters())
    if name == "subclass":  # the full re-zeroing path
        opt.__class__ = type("Sub", (type(opt),), {})
    _train(model, opt, 1)  # optimizer state exists
    mask = vlticket.prune_magnitude(model, sparsity=0.5, adapter=None)
    g = torch.Generator().manual_seed(seed)
    params = {n: p for n, p in model.named_parameters() if n in mask}

    def poison(t, keep):
        pruned = (~keep).nonzero()
        pick = pruned[torch.randint(0, len(pruned), (5,), generator=g)]
        values = torch.tensor(_POISON)[torch.randint(0, len(_POISON), (5,), generator=g)]
        with torch.no_grad():
            t[tuple(pick.T)] = values.to(t.dtype)

    if "at-attach" in where:
        for n, p in params.items():
            poison(p, mask[n])
    with mask.attach(model, opt):
        for _ in range(2):
            opt.zero_grad()
            model(torch.randint(0, 10, (4, 5), generator=g)).pow(2).mean().backward()
            for n, p in params.items():
                if "weight" in where:
                    poison(p, mask[n])
                if "grad" in where:
                    poison(p.grad, mask[n])
                if "state" in where:
                    for v in opt.state[p].values():
                        if v.shape == p.shape:
                            poison(v, mask[n])
            opt.step()
            for n, p in params.items():
                pruned = p.detach()[~mask[n]]
                assert torch.equal(pruned, torch.zeros_like(pruned)), n
                assert not torch.signbit(pruned).any(), f"{n}: -0.0 at a pruned entry"
                assert torch.isfinite(p).all(), f"{n}: a poisoned entry leaked into kept weights"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_zero_pruned_matches_masked_fill_bit_for_bit(dtype, layout):
    g = torch.Generator().manual_seed(0)
    t = torch.randn(6, 7, generator=g).to(dtype)
    t[0, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0]).to(dtype)
    keep = torch.rand(6, 7, generator=g) > 0.5
    keep[0, :4] = False
    if layout == "transposed":
        t, keep = t.T, keep.T
    want = t.masked_fill(~keep, 0)
    vlticket.core.attach._zero_pruned(t, keep)
    assert torch.equal(t, want)
    assert not torch.signbit(t[~keep]).any()


# -- changing the mask while attached (MaskHandle.update_) --------------------------------
def _momentum_setup():
    w = nn.Parameter(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    handle = vlticket.Mask({"w": torch.tensor([True, True, False, False])}).attach({"w": w}, opt)
    (w * torch.tensor([1.0, -1.0, 2.0, 3.0])).sum().backward()
    opt.step()  # momentum buffer [1, -1, 0, 0]: the pruned entries' gradient was masked
    return w, opt, handle


def test_update_zeroes_newly_pruned_and_reset_entries_and_stays_in_force():
    w, opt, handle = _momentum_setup()
    w_before = w.detach().clone()
    keep = torch.tensor([False, True, True, False])
    handle.update_("w", keep, reset=torch.tensor([False, False, True, False]))
    # entry 0 dropped (zeroed), entry 2 grown at 0 with fresh momentum, entry 1 untouched
    assert w.tolist() == [0.0, w_before[1].item(), 0.0, 0.0]
    assert opt.state[w]["momentum_buffer"].tolist() == [0.0, -1.0, 0.0, 0.0]
    assert handle.kept["w"].tolist() == keep.tolist() and handle.mask["w"].tolist() == keep.tolist()
    # the new mask is in force: the stale gradient is re-masked, new gradients masked on arrival
    w.grad.fill_(5.0)
    opt.step()
    assert w[0] == 0 and w[3] == 0 and w[2] != 0
    opt.zero_grad()
    (w * torch.tensor([1.0, 1.0, 1.0, 1.0])).sum().backward()
    assert w.grad.tolist() == [0.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize(
    "name, keep, reset, match",
    [
        ("v", torch.ones(4, dtype=torch.bool), None, "name"),
        ("w", torch.ones(3, dtype=torch.bool), None, "keep"),
        ("w", torch.ones(4), None, "keep"),
        ("w", torch.ones(4, dtype=torch.bool), torch.ones(2, dtype=torch.bool), "reset"),
        ("w", [True] * 4, None, "keep"),
    ],
)
def test_update_bad_input_changes_nothing(name, keep, reset, match):
    w, opt, handle = _momentum_setup()
    before = (w.detach().clone(), handle.kept["w"].clone(), opt.state[w]["momentum_buffer"].clone())
    with pytest.raises(ArgumentError, match=match):
        handle.update_(name, keep, reset=reset)
    assert torch.equal(w.detach(), before[0]) and torch.equal(handle.kept["w"], before[1])
    assert torch.equal(opt.state[w]["momentum_buffer"], before[2])


def test_kept_params_optimizers_are_read_only_views():
    w, opt, handle = _momentum_setup()
    assert set(handle.kept) == {"w"} and handle.params["w"] is w and handle.optimizers == (opt,)
    with pytest.raises(TypeError):
        handle.kept["w"] = torch.ones(4, dtype=torch.bool)
    handle.remove()
    assert dict(handle.params) == {} and handle.optimizers == ()
    with pytest.raises(ArgumentError, match="removed"):
        handle.update_("w", torch.ones(4, dtype=torch.bool))


@pytest.mark.parametrize(
    "make_opt, dtype",
    [
        (lambda ps: torch.optim.Adam(ps, lr=0.01), torch.float16),  # eps 1e-8 is 0 in float16
        (lambda ps: torch.optim.AdamW(ps, lr=0.01), torch.float16),
        (lambda ps: torch.optim.Adagrad(ps, lr=0.01), torch.float16),
        (lambda ps: torch.optim.RMSprop(ps, lr=0.01), torch.float16),
        (lambda ps: torch.optim.Adam(ps, lr=0.01, eps=0.0), torch.float32),
    ],
)
def test_vanishing_eps_cannot_revive_pruned_weights_as_nan(make_opt, dtype):
    torch.manual_seed(0)
    net = nn.Linear(16, 16).to(dtype)
    opt = make_opt(net.parameters())
    handle = vlticket.prune_random(net, sparsity=0.8, seed=0).attach(net, opt)
    for _ in range(3):
        net(torch.randn(4, 16).to(dtype)).float().sum().backward()
        opt.step()
        opt.zero_grad()
    pruned = net.weight.detach()[~handle.kept["weight"]]
    assert (pruned == 0).all() and not pruned.signbit().any()  # +0.0, not NaN
    assert net.weight.detach()[handle.kept["weight"]].ne(0).any()
