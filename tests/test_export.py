"""Export for inference: CSR Linear layers equal the masked dense model; 2:4 needs CUDA."""

import copy
import sys

import pytest
import torch
import transformers
from torch import nn

import vlticket
from vlticket import ArgumentError, NameMismatchError, ShapeMismatchError
from vlticket.export import CSR_MIN_SPARSITY, SparseLinear


def _linears(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{n}.weight": m.weight for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def _bert() -> transformers.BertModel:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
    )
    return transformers.BertModel(cfg).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_csr_bert_matches_the_masked_dense_model(dtype):
    model = _bert().to(dtype)
    mask = vlticket.prune_magnitude(_linears(model), sparsity=0.95, scope="tensor")
    dense = copy.deepcopy(model)
    mask.apply(dense)
    out = vlticket.export(model, mask, to="csr")
    assert out is model
    swapped = [m for m in model.modules() if isinstance(m, SparseLinear)]
    assert len(swapped) == len(mask)
    assert all(m.weight.layout == torch.sparse_csr and m.weight.dtype == dtype for m in swapped)
    ids = torch.randint(0, 100, (3, 7))
    with torch.no_grad():
        want, got = dense(ids).last_hidden_state, model(ids).last_hidden_state
    torch.testing.assert_close(got, want)


def test_layers_below_min_sparsity_stay_dense_and_masked():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4, bias=False))
    lin = _linears(model)
    mask = vlticket.Mask(
        {
            "0.weight": vlticket.prune_magnitude({"w": lin["0.weight"]}, sparsity=0.5)["w"],
            "2.weight": vlticket.prune_magnitude({"w": lin["2.weight"]}, sparsity=0.95)["w"],
        }
    )
    dense = copy.deepcopy(model)
    mask.apply(dense)
    vlticket.export(model, mask)
    assert type(model[0]) is nn.Linear and type(model[2]) is SparseLinear
    assert model[2].bias is None
    assert not model[0].weight[~mask["0.weight"]].any()
    x = torch.randn(5, 16)
    torch.testing.assert_close(model(x), dense(x))
    assert 0.5 < CSR_MIN_SPARSITY < 1


def test_min_sparsity_zero_swaps_everything_and_3d_inputs_work():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8))
    mask = vlticket.prune_magnitude(model, sparsity=0.3)
    dense = copy.deepcopy(model)
    mask.apply(dense)
    vlticket.export(model, mask, min_sparsity=0.0)
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(model(x), dense(x))


def test_an_exported_model_copies_and_saves_like_any_other(tmp_path):
    """The CSR arrays are plain buffers: deepcopy, safetensors and load_state_dict work."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8))
    mask = vlticket.prune_magnitude(model, sparsity=0.95)
    dense = copy.deepcopy(model)
    mask.apply(dense)
    twin = copy.deepcopy(dense)
    vlticket.export(model, mask)
    x = torch.randn(4, 32)
    copied = copy.deepcopy(model)
    assert torch.equal(copied(x), model(x)) and copied[0].values is not model[0].values
    save_file(model.state_dict(), tmp_path / "exported.safetensors")
    vlticket.export(twin, mask)
    with torch.no_grad():
        twin[0].values.zero_()
    twin.load_state_dict(load_file(tmp_path / "exported.safetensors"))
    torch.testing.assert_close(twin(x), dense(x))


def test_a_damaged_exported_state_dict_is_refused_before_the_copy(tmp_path):
    """torch's CSR kernels trust their indices: a bad one from a file would read out of bounds."""
    model = nn.Sequential(nn.Linear(64, 64))
    vlticket.export(model, vlticket.prune_magnitude(model, sparsity=0.96))
    before = _state(model)
    for key, damage in (("0.col_indices", 10**6), ("0.crow_indices", -1)):
        state = _state(model)
        state[key][-1] = damage
        with pytest.raises(ShapeMismatchError, match="not a valid CSR matrix"):
            model.load_state_dict(state)
        assert _unchanged(model, before)
    model.half()  # after export: refused at the forward with our message, not torch's
    with pytest.raises(ArgumentError, match="float32 or float64 only"):
        model(torch.randn(2, 64).half())


def test_linear_subclasses_stay_dense_and_masked():
    """torch's attention and transformer layers read their Linears' weights in their fused
    no-grad paths: a SparseLinear there broke the forward. Those Linears, and subclasses of
    nn.Linear, stay dense (masked); a plain Linear called by its parent is swapped."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 2, dim_feedforward=64, batch_first=True)
    model = nn.Sequential(layer, nn.Linear(32, 32)).eval()
    mask = vlticket.prune_magnitude(_linears(model), sparsity=0.95, scope="tensor")
    dense = copy.deepcopy(model)
    mask.apply(dense)
    vlticket.export(model, mask)
    assert type(model[1]) is SparseLinear
    for name in ("self_attn.out_proj", "linear1", "linear2"):
        linear = model[0].get_submodule(name)
        assert type(linear) is not SparseLinear
        assert not linear.weight[~mask[f"0.{name}.weight"]].any()
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), dense(x))

    class Scaled(nn.Linear):  # a subclass may compute otherwise: kept as it is
        def forward(self, x):
            return 2 * super().forward(x)

    odd = nn.Sequential(Scaled(16, 16))
    odd_mask = vlticket.prune_magnitude(odd, sparsity=0.95)
    reference = copy.deepcopy(odd)
    odd_mask.apply(reference)
    vlticket.export(odd, odd_mask)
    assert type(odd[0]) is Scaled
    x = torch.randn(3, 16)
    torch.testing.assert_close(odd(x), reference(x))


def test_exported_modules_refuse_training():
    model = nn.Sequential(nn.Linear(8, 8))
    vlticket.export(model, vlticket.prune_magnitude(model, sparsity=0.95))
    model.eval()  # fine
    with pytest.raises(ArgumentError, match="inference-only"):
        model.train()
    assert not any(p.requires_grad for p in model.parameters())


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, before):
    after = model.state_dict()
    return after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_bad_input_leaves_the_model_unchanged(tiny_net):
    before = _state(tiny_net)
    with pytest.raises(ArgumentError, match="`to`"):
        vlticket.export(tiny_net, vlticket.prune_magnitude(tiny_net, sparsity=0.9), to="coo")
    with pytest.raises(ArgumentError, match="'emb.weight' is not the weight of an nn.Linear"):
        vlticket.export(tiny_net, vlticket.prune_magnitude(tiny_net, sparsity=0.9))
    with pytest.raises(NameMismatchError):
        vlticket.export(tiny_net, vlticket.prune_magnitude(_bert(), sparsity=0.9))
    with pytest.raises(ArgumentError, match="min_sparsity"):
        vlticket.export(
            tiny_net, vlticket.prune_magnitude(_linears(tiny_net), sparsity=0.9), min_sparsity=2
        )
    assert _unchanged(tiny_net, before)
    assert all(type(m) is not SparseLinear for m in tiny_net.modules())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_csr_on_cpu_is_refused_up_front(dtype):
    """torch has no half-precision CSR kernel on CPU: refused at export, not at the forward."""
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)).to(dtype)
    keep = {"0.weight": 0.5, "1.weight": 0.95}
    mask = vlticket.Mask(
        {
            n: vlticket.prune_magnitude({"w": p}, sparsity=keep[n])["w"]
            for n, p in _linears(model).items()
        }
    )
    before = _state(model)
    with pytest.raises(ArgumentError, match=f"'1.weight' is {dtype} on the CPU"):
        vlticket.export(model, mask)
    assert _unchanged(model, before) and type(model[1]) is nn.Linear
    vlticket.export(model, mask, min_sparsity=0.96)  # both stay dense, masked: allowed
    assert not model[1].weight[~mask["1.weight"]].any()


def test_a_failing_conversion_leaves_the_model_unchanged(monkeypatch):
    """Modules are built before any is swapped in: the third layer's failure changes nothing."""
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8))
    mask = vlticket.Mask(
        {
            n: vlticket.prune_magnitude({"w": p}, sparsity=0.95)["w"]
            for n, p in _linears(model).items()
        }
    )
    mask = vlticket.Mask({**mask, "3.weight": torch.ones(8, 8, dtype=torch.bool)})  # stays dense
    built = []

    class Failing(SparseLinear):
        def __init__(self, linear, keep):
            if len(built) == 2:
                raise RuntimeError("out of memory")
            built.append(linear)
            super().__init__(linear, keep)

    monkeypatch.setattr(sys.modules["vlticket.export"], "SparseLinear", Failing)
    before = _state(model)
    with pytest.raises(ArgumentError, match=r"'2.weight' \(shape \[8, 8\], torch.float32\)"):
        vlticket.export(model, mask)
    assert len(built) == 2 and all(type(m) is nn.Linear for m in model)
    assert _unchanged(model, before)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_two_four_without_cuda_is_refused(tiny_net):
    before = _state(tiny_net)
    mask = vlticket.prune_magnitude(_linears(tiny_net), pattern="2:4")
    with pytest.raises(ArgumentError, match="CUDA"):
        vlticket.export(tiny_net, mask, to="2:4")
    assert _unchanged(tiny_net, before)


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="2:4 sparse tensor cores need a CUDA GPU; none here"
)
def test_two_four_on_cuda_matches_the_masked_dense_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64)).half().cuda()
    mask = vlticket.prune_magnitude(model, pattern="2:4")
    dense = copy.deepcopy(model)
    mask.apply(dense)
    with pytest.raises(ArgumentError, match="more than 2"):
        vlticket.export(
            copy.deepcopy(model), vlticket.prune_magnitude(model, sparsity=0.5), to="2:4"
        )
    vlticket.export(model, mask, to="2:4")
    x = torch.randn(64, 128, dtype=torch.half, device="cuda")
    torch.testing.assert_close(model(x), dense(x), rtol=1e-2, atol=1e-2)


def test_docstring_example():
    import doctest
    import sys

    module = sys.modules["vlticket.export"]
    result = doctest.testmod(module, extraglobs={"vlticket": vlticket, "torch": torch})
    assert result.failed == 0 and result.attempted > 0


def test_a_linear_used_twice_is_swapped_everywhere():
    """named_children lists a repeated module once: its second use stayed dense and unpruned."""
    torch.manual_seed(0)
    shared = nn.Linear(16, 16)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    mask = vlticket.prune_magnitude(model, sparsity=0.95, adapter=None)
    dense = copy.deepcopy(model)
    mask.apply(dense)
    vlticket.export(model, mask)
    assert type(model[0]) is SparseLinear and model[2] is model[0]
    x = torch.randn(3, 16)
    torch.testing.assert_close(model(x), dense(x))


def test_a_weight_tied_to_an_embedding_is_masked_there_too():
    """BertForMaskedLM's decoder is its word embeddings: exporting the decoder must not leave
    the embedding unpruned, or the outputs differ from the masked dense model's."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    model = transformers.BertForMaskedLM(cfg).eval()
    emb = model.bert.embeddings.word_embeddings.weight
    mask = vlticket.prune_magnitude({"bert.embeddings.word_embeddings.weight": emb}, sparsity=0.95)
    dense = copy.deepcopy(model)
    mask.apply(dense)
    vlticket.export(model, mask)
    assert type(model.cls.predictions.decoder) is SparseLinear
    ids = torch.randint(0, cfg.vocab_size, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, dense(ids).logits)


def test_export_follows_the_masks_adapter_refuses_meta_and_says_when_already_exported():
    model = _bert()
    mask = vlticket.prune_magnitude(model, sparsity=0.95)  # records the detected adapter
    assert mask.adapter is not None
    vlticket.export(model, mask, min_sparsity=0.0)
    with pytest.raises(NameMismatchError, match="already exported"):
        vlticket.export(model, mask, min_sparsity=0.0)
    with torch.device("meta"):
        ghost = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(ArgumentError, match="'0.weight' is on the meta device"):
        vlticket.export(ghost, vlticket.Mask({"0.weight": torch.ones(8, 8, dtype=torch.bool)}))


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
@pytest.mark.parametrize(("n_in", "n_out"), [(0, 4), (4, 0), (3, 5)])
def test_sparse_linear_matches_linear_on_empty_shapes(n_in, n_out):
    """A layer with no inputs got x.reshape(-1, 0), which torch cannot size."""
    torch.manual_seed(0)
    linear = nn.Linear(n_in, n_out)
    layer = SparseLinear(linear, torch.ones(n_out, n_in, dtype=torch.bool))
    for x in (torch.randn(2, 3, n_in), torch.randn(0, n_in)):
        torch.testing.assert_close(layer(x), linear(x))


def test_a_model_that_is_one_linear_is_returned_swapped():
    """It has no parent to swap it in: it was refused as 'not the weight of an nn.Linear'."""
    torch.manual_seed(0)
    linear = nn.Linear(16, 16)
    mask = vlticket.prune_magnitude(linear, sparsity=0.95, adapter=None)
    dense = copy.deepcopy(linear)
    mask.apply(dense)
    fast = vlticket.export(linear, mask)
    assert type(fast) is SparseLinear
    x = torch.randn(3, 16)
    torch.testing.assert_close(fast(x), dense(x))


def test_a_parametrized_weight_is_named_with_the_way_out():
    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    model = nn.Sequential(nn.Linear(8, 8))
    torch.nn.utils.parametrize.register_parametrization(model[0], "weight", Double())
    mask = vlticket.prune_magnitude(model, sparsity=0.95, adapter=None)
    with pytest.raises(ArgumentError, match="parametrized.*remove_parametrizations"):
        vlticket.export(model, mask)
    assert torch.nn.utils.parametrize.is_parametrized(model[0], "weight")


def test_min_sparsity_is_never_silently_ignored(tiny_net):
    mask = vlticket.prune_magnitude(_linears(tiny_net), sparsity=0.95)
    with pytest.raises(ArgumentError, match="`min_sparsity`.*csr"):
        vlticket.export(tiny_net, mask, to="2:4", min_sparsity=0.9)
    with pytest.raises(ArgumentError, match="`min_sparsity`.*True"):
        vlticket.export(tiny_net, mask, min_sparsity=True)
    assert all(type(m) is not SparseLinear for m in tiny_net.modules())
