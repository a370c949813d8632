"""DynamicSparsity (RigL/SET): hand-computed drop and grow, dense gradients under an attached
mask, exact counts, the schedule, exact resume through safetensors, and bad input."""

import copy
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import vlticket
from vlticket import DynamicSparsity, Mask


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 3))


def _data(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 12, generator=g), torch.randint(0, 3, (32,), generator=g)


def _loss(net, x, y):
    return nn.functional.cross_entropy(net(x), y)


def test_hand_computed_drop_and_grow():
    """One tensor, 4 of 8 kept, alpha·(1+cos(π/end))/2 with end huge ≈ alpha: drop 2, grow 2."""
    w = nn.Parameter(torch.tensor([[0.5, -0.1, 0.0, 0.0], [0.3, 0.0, -0.2, 0.0]]))
    keep = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=torch.bool)
    x = torch.tensor([[1.0, -3.0, 2.0, 0.5]])
    opt = torch.optim.SGD([w], lr=0.0)  # lr 0: the weights only change through the update
    handle = Mask({"w": keep.clone()}).attach({"w": w}, opt)
    ds = DynamicSparsity(handle, opt, update_every=1, end=10**9, alpha=0.5)
    # loss = sum(x @ w.T) => dense grad of every entry of row r is x
    (x @ w.T).sum().backward()
    assert torch.equal(w.grad, torch.tensor([[1.0, -3.0, 0, 0], [1.0, 0, 2.0, 0]]))  # masked
    opt.step()
    assert ds.step()
    # drop the 2 smallest |w| among kept: -0.1 (0,1) and -0.2 (1,2)
    # grow the 2 largest |dense grad| among the other 6 (x broadcast): |-3| at (0,1) (regrown)
    # and (1,1); ties broken row-major
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(handle.mask["w"], expected)
    assert torch.equal(w.detach(), torch.tensor([[0.5, 0.0, 0, 0], [0.3, 0, 0, 0]]))


def _train(net, opt, ds, steps, x, y):
    for _ in range(steps):
        loss = _loss(net, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ds.step()


@pytest.mark.parametrize("scope", ["tensor", "global"])
def test_counts_exact_and_grown_weights_start_at_zero(scope):
    net = _net()
    x, y = _data()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    mask = vlticket.prune_random(net, sparsity=0.7, seed=0)
    counts = {n: int(t.sum()) for n, t in mask.items()}
    handle = mask.attach(net, opt)
    ds = DynamicSparsity(handle, opt, update_every=3, end=30, alpha=0.3, scope=scope)
    _train(net, opt, ds, 2, x, y)
    before = handle.mask.clone()
    _train(net, opt, ds, 1, x, y)  # step 3: an update
    assert ds.updates == 1
    after = handle.mask
    if scope == "tensor":
        assert {n: int(t.sum()) for n, t in after.items()} == counts
    assert after.num_kept == sum(counts.values())
    params = dict(net.named_parameters())
    for n in mask:
        grown = after[n] & ~before[n]
        assert grown.any()
        assert torch.all(params[n][grown] == 0)
        for v in opt.state[params[n]].values():
            if v.shape == params[n].shape:
                assert torch.all(v[grown] == 0) and torch.all(v[~after[n]] == 0)
        assert torch.all(params[n][~after[n]] == 0)
    # the mask stays attached and in force: pruned weights stay zero through more steps
    _train(net, opt, ds, 2, x, y)
    for n in mask:
        assert torch.all(params[n][~handle.mask[n]] == 0)


def test_growth_uses_the_dense_gradient():
    net = _net()
    ref = copy.deepcopy(net)
    x, y = _data()
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    mask = vlticket.prune_random(net, sparsity=0.8, seed=3)
    mask.apply(ref)
    handle = mask.attach(net, opt)
    ds = DynamicSparsity(handle, opt, update_every=1, end=100, alpha=0.2)
    loss = _loss(net, x, y)
    opt.zero_grad()
    loss.backward()
    dense = torch.autograd.grad(_loss(ref, x, y), [ref[0].weight, ref[2].weight])
    for d, name in zip(dense, ["0.weight", "2.weight"], strict=True):
        torch.testing.assert_close(ds._dense[name], d)
        assert not torch.equal(dict(net.named_parameters())[name].grad, d)  # .grad is masked
    opt.step()
    old = mask.clone()
    ds.step()
    frac = 0.2 / 2 * (1 + math.cos(math.pi / 100))
    for name, d in zip(["0.weight", "2.weight"], dense, strict=True):
        k = old[name]
        dropped = round(frac * int(k.sum()))
        grown = handle.mask[name] & ~k
        assert int(grown.sum()) <= dropped  # some dropped may regrow
        # every grown entry has a dense gradient at least as large as any candidate left out
        left = ~k & ~handle.mask[name]
        if grown.any() and left.any():
            assert d.abs()[grown].min() >= d.abs()[left].max()


def test_schedule():
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    handle = vlticket.prune_random(net, sparsity=0.5, seed=0).attach(net, opt)
    ds = DynamicSparsity(handle, opt, update_every=4, end=13, alpha=0.3)
    x, y = _data()
    steps = []
    for t in range(1, 21):
        opt.zero_grad()
        _loss(net, x, y).backward()
        opt.step()
        if ds.step():
            steps.append(t)
    assert steps == [4, 8, 12]
    assert ds.fraction(0) == pytest.approx(0.3) and ds.fraction(13) == pytest.approx(0.0)


def test_set_is_seeded():
    masks = []
    for _ in range(2):
        net = _net()
        opt = torch.optim.SGD(net.parameters(), lr=0.05)
        handle = vlticket.prune_random(net, sparsity=0.6, seed=0).attach(net, opt)
        ds = DynamicSparsity(handle, opt, update_every=2, end=20, grow="random", seed=7)
        _train(net, opt, ds, 6, *_data())
        masks.append(handle.mask.clone())
    assert masks[0] == masks[1]


def _setup(seed_state=None):
    net = _net()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    handle = vlticket.prune_random(net, sparsity=0.7, seed=0).attach(net, opt)
    return net, opt, handle


@pytest.mark.parametrize("grow", ["gradient", "random"])
def test_resume_is_exact(tmp_path, grow):
    x, y = _data()
    kw = dict(update_every=2, end=30, alpha=0.4, grow=grow, seed=5)
    net, opt, handle = _setup()
    ds = DynamicSparsity(handle, opt, **kw)
    _train(net, opt, ds, 12, x, y)
    full_mask, full_w = handle.mask.clone(), copy.deepcopy(net.state_dict())

    net, opt, handle = _setup()
    ds = DynamicSparsity(handle, opt, **kw)
    _train(net, opt, ds, 5, x, y)
    save_file(ds.state_dict(), tmp_path / "ds.safetensors")
    saved_model, saved_opt = copy.deepcopy(net.state_dict()), copy.deepcopy(opt.state_dict())

    net2, opt2, handle2 = _setup()
    net2.load_state_dict(saved_model)
    opt2.load_state_dict(saved_opt)
    ds2 = DynamicSparsity(handle2, opt2, **kw)
    ds2.load_state_dict(load_file(tmp_path / "ds.safetensors"))
    _train(net2, opt2, ds2, 7, x, y)
    assert handle2.mask == full_mask and ds2.t == 12
    for k, v in full_w.items():
        assert torch.equal(net2.state_dict()[k], v), k


def test_state_from_another_model_raises_and_changes_nothing():
    _, opt, handle = _setup()
    ds = DynamicSparsity(handle, opt, update_every=2, end=10)
    other = nn.Sequential(nn.Linear(12, 11), nn.ReLU(), nn.Linear(11, 3))
    o_opt = torch.optim.SGD(other.parameters(), lr=0.1)
    o_ds = DynamicSparsity(
        vlticket.prune_random(other, sparsity=0.5).attach(other, o_opt),
        o_opt,
        update_every=2,
        end=10,
    )
    before = handle.mask.clone()
    with pytest.raises(vlticket.ShapeMismatchError):
        ds.load_state_dict(o_ds.state_dict())
    state = ds.state_dict()
    state.pop("keep.0.weight")
    with pytest.raises(vlticket.NameMismatchError):
        ds.load_state_dict(state)
    other_cfg = DynamicSparsity(handle, opt, update_every=3, end=10).state_dict()
    with pytest.raises(vlticket.ArgumentError, match="config"):
        ds.load_state_dict(other_cfg)
    assert handle.mask == before and ds.t == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"update_every": 0, "end": 10}, "update_every"),
        ({"update_every": -1, "end": 10}, "update_every"),
        ({"end": 0}, "end"),
        ({"end": 10, "alpha": 1.0}, "alpha"),
        ({"end": 10, "scope": "layer"}, "scope"),
        ({"end": 10, "grow": "magic"}, "grow"),
    ],
)
def test_bad_arguments(kwargs, match):
    _, opt, handle = _setup()
    with pytest.raises(vlticket.ArgumentError, match=match):
        DynamicSparsity(handle, opt, **kwargs)


def test_optimizer_not_attached_is_added_to_the_handle():
    net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    handle = vlticket.prune_random(net, sparsity=0.7, seed=0).attach(net)  # no optimizer
    ds = DynamicSparsity(handle, opt, update_every=1, end=100, alpha=0.3)
    assert handle.optimizers == (opt,)
    x, y = _data()
    _train(net, opt, ds, 3, x, y)
    params = dict(net.named_parameters())
    for n, keep in handle.kept.items():  # the mask is in force through the optimizer's steps
        assert torch.all(params[n][~keep] == 0)
        for v in opt.state[params[n]].values():
            if v.shape == keep.shape:
                assert torch.all(v[~keep] == 0), n


def test_nan_gradient_raises_and_changes_nothing():
    net, opt, handle = _setup()
    pruned = ~handle.mask["0.weight"]  # a NaN there never reaches the weights, only RigL
    net[0].weight.register_hook(lambda g: g.masked_fill(pruned, float("nan")))
    ds = DynamicSparsity(handle, opt, update_every=1, end=10)
    x, y = _data()
    _loss(net, x, y).backward()
    opt.step()
    mask, weights = handle.mask.clone(), copy.deepcopy(net.state_dict())
    with pytest.raises(vlticket.ArgumentError, match="dense gradient.*NaN"):
        ds.step()
    assert handle.mask == mask and ds.t == 0 and ds.updates == 0
    for k, v in weights.items():
        assert torch.equal(net.state_dict()[k], v), k


@pytest.mark.parametrize("grow", ["gradient", "random"])
def test_frozen_tensors_keep_their_mask(grow):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16))
    net[0].weight.requires_grad_(False)  # frozen: whatever it grew would stay 0 for good
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    handle = vlticket.prune_magnitude(net, sparsity=0.5).attach(net, opt)
    frozen_keep, frozen_w = handle.kept["0.weight"].clone(), net[0].weight.detach().clone()
    trained_keep = handle.kept["1.weight"].clone()
    rigl = DynamicSparsity(handle, opt, update_every=1, end=10, alpha=0.5, grow=grow)
    net(torch.randn(4, 16)).pow(2).sum().backward()
    opt.step()
    assert rigl.step()
    assert torch.equal(handle.kept["0.weight"], frozen_keep)
    assert torch.equal(net[0].weight, frozen_w)
    assert not torch.equal(handle.kept["1.weight"], trained_keep)  # the trained one moved


def test_all_frozen_refused_and_handle_untouched():
    net = nn.Linear(8, 8)
    net.weight.requires_grad_(False)
    opt = torch.optim.SGD([net.bias], lr=0.1)
    handle = vlticket.prune_random(net, sparsity=0.5, seed=0).attach(net)
    with pytest.raises(vlticket.ArgumentError, match="`handle`.*requires grad"):
        DynamicSparsity(handle, opt, update_every=1, end=10)
    assert handle.optimizers == ()


def test_step_after_the_handle_was_removed_raises_clearly():
    net = nn.Linear(16, 16)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    handle = vlticket.prune_random(net, sparsity=0.8, seed=0).attach(net, opt)
    rigl = DynamicSparsity(handle, opt, update_every=2, end=10)
    handle.remove()
    net(torch.randn(4, 16)).sum().backward()
    assert not rigl.step()  # not an update step: nothing needed
    with pytest.raises(vlticket.ArgumentError, match="`handle` was removed"):
        rigl.step()
    assert rigl.t == 1 and rigl.updates == 0


def test_a_tensor_no_gradient_reached_keeps_its_mask_and_weights():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 4))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    handle = vlticket.prune_magnitude(net, sparsity=0.7).attach(net, opt)
    idle_keep, idle_w = handle.kept["2.weight"].clone(), net[2].weight.detach().clone()
    used_keep = handle.kept["1.weight"].clone()
    rigl = DynamicSparsity(handle, opt, update_every=1, end=20, alpha=0.5)
    for _ in range(2):  # gradient accumulation: net[2] is not used in this step
        net[1](net[0](torch.randn(4, 16))).pow(2).sum().backward()
    opt.step()
    assert rigl.step()
    assert torch.equal(handle.kept["2.weight"], idle_keep)
    assert torch.equal(net[2].weight, idle_w)  # its trained weights were not dropped for zeros
    assert not torch.equal(handle.kept["1.weight"], used_keep)
    # once a gradient reaches it again, it is updated
    net(torch.randn(4, 16)).pow(2).sum().backward()
    opt.step()
    assert rigl.step()
    assert not torch.equal(handle.kept["2.weight"], idle_keep)


def _ranks_differ_in_reach(rank: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=2)
    torch.manual_seed(0)  # the same model and mask on both ranks
    net = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 4))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    handle = vlticket.prune_magnitude(net, sparsity=0.7).attach(net, opt)
    rigl = DynamicSparsity(handle, opt, update_every=1, end=20, alpha=0.5)
    before = handle.kept["2.weight"].clone()
    torch.manual_seed(1 + rank)
    x = torch.randn(4, 16)
    # only rank 0 reaches net[2] (a branch taken on some ranks' data)
    out = net(x) if rank == 0 else net[1](net[0](x))
    out.pow(2).sum().backward()
    rigl.step()
    kept = {n: k.clone() for n, k in handle.kept.items()}
    save_file({"before": before, **kept}, f"{out_dir}/rank{rank}.safetensors")
    dist.destroy_process_group()


def test_ranks_agree_when_a_gradient_reaches_a_tensor_on_one_rank_only(tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(
        _ranks_differ_in_reach, args=(str(tmp_path),), nprocs=2, join=True, start_method="spawn"
    )
    a, b = (load_file(tmp_path / f"rank{r}.safetensors") for r in range(2))
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    assert not torch.equal(a["2.weight"], a["before"])  # reached on rank 0: updated on both
