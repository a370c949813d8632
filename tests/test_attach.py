import pytest
import torch
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
