"""SNIP, GraSP and SynFlow scores against closed forms on a 2-layer linear net, the model left
untouched by scoring, and prune_at_init's selection (signed for GraSP)."""

import pytest
import torch
from torch import nn

import vlticket
from vlticket.saliency import grasp_scores, prune_at_init, snip_scores, synflow_scores


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False))


def _loss(m, b):
    x, y = b
    return 0.5 * (m(x) - y).pow(2).sum()


def _batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(5, 3, generator=g), torch.randn(5, 2, generator=g)) for _ in range(2)]


def _closed_form_grads(w1, w2, batches):
    """L = ½‖X W1ᵀ W2ᵀ − Y‖²: dL/dW2 = Rᵀ H, dL/dW1 = (R W2)ᵀ X with H = X W1ᵀ, R = H W2ᵀ − Y."""
    g1, g2 = torch.zeros_like(w1), torch.zeros_like(w2)
    for x, y in batches:
        h = x @ w1.T
        r = h @ w2.T - y
        g2 += r.T @ h
        g1 += (r @ w2).T @ x
    return g1, g2


def test_snip_closed_form():
    net, data = _net(), _batches()
    w1, w2 = net[0].weight.detach().clone(), net[1].weight.detach().clone()
    g1, g2 = _closed_form_grads(w1, w2, data)
    s = snip_scores(net, _loss, data)
    torch.testing.assert_close(s["0.weight"], (w1 * g1).abs())
    torch.testing.assert_close(s["1.weight"], (w2 * g2).abs())


def test_grasp_closed_form():
    """Hg by finite differences of the closed-form gradient: Hg ≈ (∇L(θ+εg) − ∇L(θ−εg)) / 2ε."""
    net, data = _net(), _batches()
    w1, w2 = net[0].weight.detach().double(), net[1].weight.detach().double()
    d64 = [(x.double(), y.double()) for x, y in data]
    g1, g2 = _closed_form_grads(w1, w2, d64)
    eps = 1e-6
    p1, p2 = _closed_form_grads(w1 + eps * g1, w2 + eps * g2, d64)
    m1, m2 = _closed_form_grads(w1 - eps * g1, w2 - eps * g2, d64)
    hg1, hg2 = (p1 - m1) / (2 * eps), (p2 - m2) / (2 * eps)
    s = grasp_scores(net.double(), _loss, d64)
    torch.testing.assert_close(s["0.weight"].double(), -w1 * hg1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s["1.weight"].double(), -w2 * hg2, rtol=1e-5, atol=1e-6)
    assert (s["0.weight"] < 0).any() or (s["1.weight"] < 0).any()  # signed scores


def test_synflow_closed_form():
    """R = 1ᵀ|W2||W1|1: ∂R/∂W1[i,j] = Σ_k |W2|[k,i], ∂R/∂W2[k,i] = Σ_j |W1|[i,j]."""
    net = _net()
    a1, a2 = net[0].weight.detach().abs().double(), net[1].weight.detach().abs().double()
    s = synflow_scores(net, lambda m: m(torch.ones(1, 3, dtype=torch.float64)))
    torch.testing.assert_close(s["0.weight"].double(), a1 * a2.sum(0)[:, None], rtol=1e-6, atol=0)
    torch.testing.assert_close(s["1.weight"].double(), a2 * a1.sum(1)[None, :], rtol=1e-6, atol=0)


def test_synflow_layernorm_is_affine_and_dropout_off():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(3, 4, bias=False), nn.LayerNorm(4), nn.Dropout(0.5), nn.Linear(4, 1, bias=False)
    )
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([1.0, -2.0, 0.5, 3.0]))
        net[1].bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
        net[0].weight.mul_(40)  # mean(h) ~ 10: the LayerNorm divides by a power of two, 8 or 16
    a1, a2 = net[0].weight.detach().abs().double(), net[3].weight.detach().abs().double()
    gamma, beta = net[1].weight.detach().abs().double(), net[1].bias.detach().abs().double()
    h = a1.sum(1)  # W1 1
    c = 2.0 ** torch.round(torch.log2(h.mean()))
    assert c not in (1.0, 2.0)
    s = synflow_scores(net, lambda m: m(torch.ones(1, 3, dtype=torch.float64)))
    # R = |W2| (h |γ| / c + |β|): c is held constant for the gradient
    col = a2[0] * gamma / c  # dR/dh
    torch.testing.assert_close(s["0.weight"].double(), a1 * col[:, None], rtol=1e-12, atol=0)
    torch.testing.assert_close(
        s["3.weight"].double(), a2 * (h * gamma / c + beta), rtol=1e-12, atol=0
    )


def _chain(seed: int) -> nn.Sequential:
    """Bias-free: Linear, LayerNorm without β, ReLU, ... — positively homogeneous once |θ|."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(6, 9, bias=False),
        nn.LayerNorm(9, bias=False),
        nn.ReLU(),
        nn.Linear(9, 7, bias=False),
        nn.LayerNorm(7, bias=False),
        nn.Linear(7, 3, bias=False),
    )
    with torch.no_grad():
        for i in (0, 3, 5):
            net[i].weight.mul_(30)  # activations far from 1: each LayerNorm rescales
        net[1].weight.uniform_(0.5, 2.0)
        net[4].weight.uniform_(0.5, 2.0)
    return net


def _unscaled_synflow(net: nn.Sequential) -> dict[str, torch.Tensor]:
    """SynFlow of the same linearized chain written out by hand, without any rescaling."""
    a = {n: p.detach().abs().double().requires_grad_(True) for n, p in net.named_parameters()}
    h = a["0.weight"] @ torch.ones(6, dtype=torch.float64)
    h = a["3.weight"] @ (h * a["1.weight"])  # ReLU is the identity on positive values
    r = (a["5.weight"] @ (h * a["4.weight"])).sum()
    names = ("0.weight", "3.weight", "5.weight")
    grads = torch.autograd.grad(r, [a[n] for n in names])
    return {n: (a[n] * g).detach() for n, g in zip(names, grads, strict=True)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synflow_rescaling_keeps_scores_proportional_and_selection(seed):
    net = _chain(seed)
    ones = lambda m: m(torch.ones(1, 6, dtype=torch.float64))  # noqa: E731
    s = synflow_scores(net, ones)
    ref = _unscaled_synflow(net)
    factor = s["0.weight"][0, 0] / ref["0.weight"][0, 0]
    assert factor != 1.0 and torch.log2(factor) == torch.round(torch.log2(factor))  # 2^-k
    for n in ref:  # one exact power of two for every score
        torch.testing.assert_close(s[n], ref[n] * factor, rtol=1e-13, atol=0)
    for sparsity in (0.3, 0.6, 0.9):
        assert vlticket.prune_by_score(s, sparsity=sparsity) == vlticket.prune_by_score(
            ref, sparsity=sparsity
        )
    iterative = prune_at_init(net, "synflow", sparsity=0.8, forward=ones, iterations=5)
    assert iterative.num_pruned == round(0.8 * sum(t.numel() for t in ref.values()))


def test_synflow_deep_bert_scores_are_finite():
    """12 layers, tiny width, large weights: the unscaled |θ| product overflowed float64 here
    (query/key rounding noise through softmax of logits ~1e100); the LayerNorm rescale keeps it
    finite, and every value, output and feed-forward weight gets a positive score."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=20,
        hidden_size=16,
        num_hidden_layers=12,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=8,
        initializer_range=1.0,
    )
    model = transformers.BertModel(config, add_pooling_layer=False)
    encoder = {
        n: p for n, p in model.named_parameters() if n.startswith("encoder.") and p.dim() == 2
    }

    class Encoder:  # score the encoder's matrices: word embeddings are not reached
        def prunable(self, module):
            return dict(encoder)

    ones = torch.ones(2, 4, 16, dtype=torch.float64)
    forward = lambda m: m(inputs_embeds=ones).last_hidden_state  # noqa: E731
    s = synflow_scores(model, forward, adapter=Encoder())
    assert set(s) == set(encoder) and len(s) == 12 * 6
    for n, t in s.items():
        assert bool(torch.isfinite(t).all()), n
        if ".query." not in n and ".key." not in n:  # (softmax is not monotone in query/key)
            assert bool((t > 0).all()), n  # value, output and FFN weights all carry flow
    mask = prune_at_init(
        model, "synflow", sparsity=0.5, forward=forward, iterations=3, adapter=Encoder()
    )
    assert mask.num_pruned == round(0.5 * sum(t.numel() for t in encoder.values()))


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow"])
def test_scoring_leaves_model_unchanged(method):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(3, 4), nn.LayerNorm(4), nn.BatchNorm1d(4), nn.Dropout(0.1), nn.Linear(4, 2)
    )
    net[0].weight.requires_grad_(False)
    net.train()
    net[4].eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = {n: p.requires_grad for n, p in net.named_parameters()}
    modes = {n: m.training for n, m in net.named_modules()}
    ids = {n: id(p) for n, p in net.named_parameters()}
    prune_at_init(
        net,
        method,
        sparsity=0.5,
        loss_fn=_loss,
        batches=_batches(),
        forward=lambda m: m(torch.ones(2, 3, dtype=torch.float64)),
        iterations=3,
    )
    after = net.state_dict()
    for k, v in before.items():
        assert after[k].dtype == v.dtype
        assert torch.equal(
            after[k].view(torch.uint8) if v.is_floating_point() else after[k],
            v.view(torch.uint8) if v.is_floating_point() else v,
        ), k
    assert flags == {n: p.requires_grad for n, p in net.named_parameters()}
    assert modes == {n: m.training for n, m in net.named_modules()}
    assert ids == {n: id(p) for n, p in net.named_parameters()}
    assert all(p.grad is None for p in net.parameters())


def test_prune_at_init_selects_through_prune_by_score():
    net, data = _net(), _batches()
    s = snip_scores(net, _loss, data)
    assert prune_at_init(
        net, "snip", sparsity=0.5, loss_fn=_loss, batches=data
    ) == vlticket.prune_by_score(s, sparsity=0.5)
    g = grasp_scores(net, _loss, data)
    m = prune_at_init(net, "grasp", sparsity=0.25, loss_fn=_loss, batches=data)
    assert m.num_pruned == 5
    pruned = torch.cat([g[n][~m[n]] for n in m])
    kept = torch.cat([g[n][m[n]] for n in m])
    assert pruned.min() >= kept.max()  # GraSP removes the highest scores


def test_synflow_iterative_schedule_and_count():
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    ones = lambda m: m(torch.ones(1, 8, dtype=torch.float64))  # noqa: E731
    m = prune_at_init(net, "synflow", sparsity=0.8, forward=ones, iterations=10)
    assert m.num_pruned == round(0.8 * (8 * 16 + 16 * 4))
    one = prune_at_init(net, "synflow", sparsity=0.8, forward=ones, iterations=1)
    assert one == vlticket.prune_by_score(synflow_scores(net, ones), sparsity=0.8)
    # iterating avoids layer collapse: no layer is pruned away entirely
    assert all(t.any() for t in m.values())


def test_bad_input():
    net = _net()
    with pytest.raises(vlticket.ArgumentError, match="method"):
        prune_at_init(net, "magic", sparsity=0.5)
    with pytest.raises(vlticket.ArgumentError, match="loss_fn"):
        prune_at_init(net, "snip", sparsity=0.5)
    with pytest.raises(vlticket.ArgumentError, match="forward"):
        prune_at_init(net, "synflow", sparsity=0.5)
    with pytest.raises(vlticket.ArgumentError, match="batches"):
        snip_scores(net, _loss, [])
    with pytest.raises(vlticket.ArgumentError, match="does not depend"):
        snip_scores(net, lambda m, b: m[0](b[0]).sum(), _batches())


# -- prune_by_score ranks signed scores exactly --------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_signed_scores_rank_by_value(dtype):
    g = torch.Generator().manual_seed(0)
    s = {"a": torch.randn(7, 5, generator=g).to(dtype), "b": torch.randn(11, generator=g).to(dtype)}
    s["a"][0, 0] = -0.0
    m = vlticket.prune_by_score(s, sparsity=0.4)
    # reference: a stable sort by value over the names in order, then row-major position
    flat = torch.cat([s["a"].double().reshape(-1), s["b"].double().reshape(-1)])
    order = torch.sort(flat, stable=True).indices[: round(0.4 * flat.numel())]
    ref = torch.ones(flat.numel(), dtype=torch.bool)
    ref[order] = False
    got = torch.cat([m["a"].reshape(-1), m["b"].reshape(-1)])
    # -0.0 ranks just below +0.0 in prune_by_score, equal in sort: no +0.0 here, so same
    assert torch.equal(got, ref)


def test_signed_float32_ties_and_neighbours_exact():
    x = torch.tensor(
        [
            1.0,
            -1.0,
            torch.nextafter(torch.tensor(-1.0), torch.tensor(0.0)).item(),
            -1.0000001,
            0.0,
            -1e-45,
        ]
    )
    m = vlticket.prune_by_score({"x": x}, sparsity=0.5)
    assert m["x"].tolist() == [True, False, False, False, True, True]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_scores_refused(bad):
    with pytest.raises(vlticket.ArgumentError, match="NaN or inf"):
        vlticket.prune_by_score({"x": torch.tensor([1.0, bad, -2.0])}, sparsity=0.5)


def test_wrong_shape_scores_refused():
    mask = vlticket.Mask({"x": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(vlticket.VlticketError):
        vlticket.prune_by_score({"x": torch.tensor([1.0, -2.0])}, sparsity=0.5, mask=mask)


def _deep(layers: int) -> nn.Sequential:
    net = nn.Sequential(*[nn.Linear(64, 64, bias=False) for _ in range(layers)])
    with torch.no_grad():
        for m in net:
            m.weight.fill_(1.0)
        net[0].weight[0, 0] = 0.5
    return net


def test_synflow_scores_beyond_float32_range():
    net = _deep(25)  # R = 64^25 ≈ 1e45: past float32, fine in float64
    s = synflow_scores(net, lambda m: m(torch.ones(1, 64, dtype=torch.float64)))
    assert s["0.weight"].dtype == torch.float64 and all(
        bool(t.isfinite().all()) for t in s.values()
    )
    assert s["0.weight"][0, 0] == s["0.weight"][0, 1] / 2
    mask = vlticket.prune_by_score(s, amount=1 / 64**2 / 25)
    assert not mask["0.weight"][0, 0] and mask.num_pruned == 1


def test_synflow_overflow_is_refused():
    net = _deep(200)  # 64^200 overflows float64
    with pytest.raises(vlticket.ArgumentError, match="overflows"):
        synflow_scores(net, lambda m: m(torch.ones(1, 64, dtype=torch.float64)))


def test_synflow_nonfinite_scores_are_refused():
    net = _net()  # sqrt at 0: R = 0 is finite, its gradient is not
    with pytest.raises(vlticket.ArgumentError, match="not finite in float64"):
        synflow_scores(net, lambda m: torch.sqrt(m(torch.ones(1, 3, dtype=torch.float64)) * 0))


def test_synflow_mask_of_wrong_shape_refused_and_model_untouched():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    bad = vlticket.Mask({"0.weight": torch.ones(1, 3, dtype=torch.bool)})  # would broadcast
    with pytest.raises(vlticket.ShapeMismatchError, match="0.weight"):
        synflow_scores(net, lambda m: m(torch.ones(1, 3, dtype=torch.float64)), mask=bad)
    with pytest.raises(vlticket.ArgumentError, match="mask"):
        synflow_scores(net, lambda m: m(torch.ones(1, 3, dtype=torch.float64)), mask={"x": 1})
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())


class _Tied(nn.Module):
    """Two layers sharing one weight, as a language model's tied embeddings and decoder."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_synflow_restores_tied_weights():
    torch.manual_seed(0)
    net = _Tied()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ones = lambda m: m(torch.ones(1, 4, dtype=torch.float64))  # noqa: E731
    mask = prune_at_init(net, "synflow", sparsity=0.5, forward=ones, iterations=2)
    assert mask.num_pruned == 8
    assert net.a.weight is net.b.weight
    for k, v in net.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k


def test_one_batch_mapping_refused():
    net = _net()
    batch = {"x": torch.ones(2, 3)}
    with pytest.raises(vlticket.ArgumentError, match=r"`batches`.*\[batch\]"):
        snip_scores(net, lambda m, b: m(b["x"]).sum(), batch)


def test_grasp_on_a_transformers_model_with_fused_attention():
    transformers = pytest.importorskip("transformers")
    kw = dict(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    torch.manual_seed(0)
    fused = transformers.BertForSequenceClassification(transformers.BertConfig(**kw))
    assert fused.config._attn_implementation == "sdpa"  # no double backward of its own
    config = transformers.BertConfig(**kw)
    config._attn_implementation = "eager"
    eager = transformers.BertForSequenceClassification(config)
    eager.load_state_dict(fused.state_dict())
    batch = {"input_ids": torch.randint(0, 50, (2, 8)), "labels": torch.tensor([0, 1])}
    loss = lambda m, b: m(**b).loss  # noqa: E731
    got, want = grasp_scores(fused, loss, [batch]), grasp_scores(eager, loss, [batch])
    assert got.keys() == want.keys()
    for n in want:
        assert (got[n] - want[n]).abs().max() <= 1e-4 * want[n].abs().max(), n  # float32 noise


@pytest.mark.parametrize("method", ["snip", "grasp"])
def test_loss_without_a_graph_is_refused_clearly(method):
    net = _net()
    with torch.no_grad():
        before = [p.clone() for p in net.parameters()]
    with pytest.raises(vlticket.ArgumentError, match=r"`loss_fn`.*no_grad"):
        prune_at_init(
            net, method, sparsity=0.5, loss_fn=lambda m, b: _loss(m, b).detach(), batches=_batches()
        )
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_grasp_of_a_loss_linear_in_every_tensor_is_zero():
    net = nn.Linear(3, 2, bias=False)  # d(loss)/dθ does not depend on θ: the Hessian is 0
    scores = grasp_scores(net, lambda m, b: m(b).sum(), [torch.ones(1, 3)])
    assert torch.equal(scores["weight"], torch.zeros(2, 3))
