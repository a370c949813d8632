"""shrink: removing whole heads and neurons computes what the masked dense model computes."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json

import pytest
import torch
from original_models import ViLTransformerSS
from test_adapters_vilt import build as vilt_build
from test_adapters_vilt import original as original_vilt
from test_structured import bert, lxmert, vilt
from transformers import BertModel, ViltForQuestionAnswering, ViltModel

import vlticket
from vlticket import adapters
from vlticket.adapters import vilt as vilt_forms

torch.set_num_threads(1)


def structured_mask(model, heads=0.5, neurons=0.4, **kw):
    mask = vlticket.prune_structured(model, granularity="head", sparsity=heads, **kw)
    return vlticket.prune_structured(model, granularity="neuron", sparsity=neurons, mask=mask, **kw)


def bert_inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50, (3, 9), generator=g)
    attention = torch.ones(3, 9, dtype=torch.long)
    attention[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": attention}


def lxmert_inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(0, 50, (2, 7), generator=g),
        "visual_feats": torch.randn(2, 5, 8, generator=g),
        "visual_pos": torch.rand(2, 5, 4, generator=g),
    }


def vilt_inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(0, 50, (2, 7), generator=g),
        "pixel_values": torch.randn(2, 3, 32, 32, generator=g),
    }


def outputs(model, inputs):
    torch.manual_seed(0)  # ViLT samples image patches at random
    out = model(**inputs)
    return [t for t in out.values() if isinstance(t, torch.Tensor)]


CASES = [
    ("bert-eager", lambda: bert(attn_implementation="eager"), bert_inputs),
    ("bert-sdpa", lambda: bert(attn_implementation="sdpa"), bert_inputs),
    ("lxmert", lambda: lxmert(), lxmert_inputs),
    ("vilt", lambda: vilt(), vilt_inputs),
]


def shrunk_units(block, state, align):
    """Units shrink keeps, by its documented rule: the kept ones, plus the lowest-numbered
    pruned neurons until the count is a multiple of ``align``; and those padding units."""
    kept = (state != 0).nonzero().flatten()
    pruned = (state == 0).nonzero().flatten()
    pad = pruned[: -len(kept) % align] if block.kind == "neuron" else pruned[:0]
    units = torch.cat([kept, pad]).sort().values
    return units, torch.isin(units, pad).nonzero().flatten()


@pytest.mark.parametrize("align", [1, 8])
@pytest.mark.parametrize("case, build, inputs", CASES, ids=[c[0] for c in CASES])
def test_shrunk_model_computes_the_masked_model(case, build, inputs, align):
    dense = build()
    adapter = adapters.adapter_for(dense)
    mask = structured_mask(dense)
    mask.apply(dense, adapter=adapter)
    small = copy.deepcopy(dense)
    sites = adapters.blocks_for(dense)
    removed = vlticket.shrink(small, mask, align=align)
    assert sum(removed.values()) > 0
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in dense.parameters())
    batch = inputs()
    want, got = outputs(dense, batch), outputs(small, batch)
    assert len(want) == len(got) > 0
    for w, g in zip(want, got, strict=True):
        assert torch.allclose(w, g, atol=1e-5, rtol=1e-4)
    # Gradients of the remaining weights equal the dense model's at the kept entries.
    sum(t.square().sum() for t in outputs(dense, batch)).backward()
    sum(t.square().sum() for t in outputs(small, batch)).backward()
    dense_params = dict(dense.named_parameters())
    small_params = dict(small.named_parameters())
    names = adapter.names(dense)
    states = vlticket.core.structured.unit_state([s.block for s in sites], mask)
    for site in sites:
        keep, pad = shrunk_units(site.block, states[site.block.name], align)
        if site.block.kind == "neuron":
            assert len(keep) % align == 0 or len(keep) == site.block.count
        for axis in site.block.axes:
            name = names[axis.name]
            index = site.block.entries(keep, axis)
            want_grad = dense_params[name].grad.index_select(axis.dim, index)
            assert torch.allclose(small_params[name].grad, want_grad, atol=1e-5, rtol=1e-4)
            # Padding neurons are zero and stay zero: no gradient reaches them (GELU(0) = 0).
            padding = dataclasses.replace(site.block, count=len(keep)).entries(pad, axis)
            assert not small_params[name].index_select(axis.dim, padding).any()
            assert not small_params[name].grad.index_select(axis.dim, padding).any()
    # Parameters outside the blocks keep their shape and gradient.
    for name in ("embeddings.word_embeddings.weight", "pooler.dense.weight"):
        if name in small_params:
            assert torch.allclose(small_params[name].grad, dense_params[name].grad, atol=1e-5)


def test_shrink_updates_head_counts_and_records_them():
    model = bert(heads=4, layers=2)
    keep_one = {"encoder.layer.0.attention": torch.tensor([0.0, 5.0, 0.0, 0.0])}
    scores = {**keep_one, "encoder.layer.1.attention": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    mask = vlticket.prune_structured(model, sparsity=0.5, score=scores, scope="layer")
    vlticket.shrink(model, mask)
    att0 = model.encoder.layer[0].attention.self
    assert (att0.num_attention_heads, att0.all_head_size, att0.attention_head_size) == (2, 8, 4)
    assert att0.query.weight.shape == (8, 16) and att0.query.bias.shape == (8,)
    assert att0.query.out_features == 8
    assert model.encoder.layer[0].attention.output.dense.in_features == 8
    assert model.config.vlticket_shrunk == {
        "encoder.layer.0.attention": 2,
        "encoder.layer.1.attention": 2,
    }
    assert model.config.num_attention_heads == 4  # the dense count: load_shrunk needs it


@pytest.mark.parametrize(
    "sparsity, align, width, removed",
    [
        (0.5, 8, 16, 8),  # 12 kept + 4 zero neurons
        (0.5, 3, 12, 12),  # already a multiple
        (0.5, 1, 12, 12),
        (0.25, 8, 24, 0),  # 18 kept: padding fills the FFN, nothing removed
    ],
)
def test_align_keeps_zero_neurons_up_to_a_multiple(sparsity, align, width, removed):
    model = bert()
    mask = vlticket.prune_structured(model, granularity="neuron", sparsity=sparsity, scope="layer")
    masked = copy.deepcopy(model)
    mask.apply(masked, adapter="bert")  # `model` itself stays unmasked: shrink zeroes padding
    got = vlticket.shrink(model, mask, align=align)
    ffn = "encoder.layer.0.intermediate.dense"
    assert got.get(ffn, 0) == removed
    assert model.encoder.layer[0].intermediate.dense.out_features == width
    assert model.encoder.layer[0].output.dense.in_features == width
    if removed:
        assert model.config.vlticket_shrunk[ffn] == width
    zero_rows = ~model.encoder.layer[0].intermediate.dense.weight.any(dim=1)
    assert int(zero_rows.sum()) == width - (24 - round(sparsity * 24))
    batch = bert_inputs()
    for w, g in zip(outputs(masked, batch), outputs(model, batch), strict=True):
        assert torch.allclose(w, g, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("align", [0, -8, True, 8.0, "8"])
def test_bad_align_is_refused(align):
    model = bert()
    mask = structured_mask(model)
    before = state(model)
    with pytest.raises(vlticket.ArgumentError, match="`align`"):
        vlticket.shrink(model, mask, align=align)
    assert unchanged(model, before)


def test_lxmert_cross_attention_head_size_attribute():
    model = lxmert()
    mask = vlticket.prune_structured(model, sparsity=0.5, scope="layer")
    vlticket.shrink(model, mask)
    cross = model.encoder.x_layers[0].visual_attention.att
    assert (cross.num_attention_heads, cross.head_size, cross.attention_head_size) == (2, 8, 4)


@pytest.mark.parametrize(
    "cls, build, inputs", [(BertModel, bert, bert_inputs), (ViltModel, vilt, vilt_inputs)]
)
def test_save_pretrained_and_load_shrunk(tmp_path, cls, build, inputs):
    model = build()
    mask = structured_mask(model)
    vlticket.shrink(model, mask)
    model.save_pretrained(tmp_path)
    again = vlticket.load_shrunk(cls, tmp_path).eval()
    assert again.config.vlticket_shrunk == model.config.vlticket_shrunk
    for name, t in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], t), name
    batch = inputs()
    for w, g in zip(outputs(model, batch), outputs(again, batch), strict=True):
        assert torch.allclose(w, g, atol=1e-5)
    with pytest.raises(vlticket.FileFormatError, match="vlticket_shrunk"):
        build().save_pretrained(tmp_path / "dense")
        vlticket.load_shrunk(cls, tmp_path / "dense")


def state(model):
    return {n: t.clone() for n, t in model.state_dict().items()}


def unchanged(model, before):
    now = model.state_dict()
    return set(now) == set(before) and all(torch.equal(now[n], t) for n, t in before.items())


def test_partial_units_are_refused_unless_kept():
    model = bert()
    mask = structured_mask(model)
    mask["encoder.layer.1.intermediate.dense.weight"][3, 0] = False  # part of neuron 3
    before = state(model)
    with pytest.raises(
        vlticket.ArgumentError, match=r"neurons \[3\] of 'encoder.layer.1.intermediate.dense'"
    ):
        vlticket.shrink(model, mask)
    assert unchanged(model, before)
    vlticket.shrink(model, mask, keep_partial=True, align=1)
    kept = mask["encoder.layer.1.intermediate.dense.weight"].any(dim=1).sum()
    assert model.encoder.layer[1].intermediate.dense.out_features == kept


def test_bad_masks_leave_the_model_unchanged():
    model = bert()
    before = state(model)
    other = vlticket.Mask.ones(vilt(), adapter="vilt")
    with pytest.raises(vlticket.NameMismatchError):
        vlticket.shrink(model, other)
    no_heads = vlticket.prune_structured(
        model,
        sparsity=0.5,
        min_per_layer=0,
        score={
            "encoder.layer.0.attention": torch.zeros(4),
            "encoder.layer.1.attention": torch.ones(4),
        },
    )
    with pytest.raises(vlticket.ArgumentError, match="every head of 'encoder.layer.0.attention'"):
        vlticket.shrink(model, no_heads)
    assert unchanged(model, before)
    dense_mask = structured_mask(model)
    vlticket.shrink(model, dense_mask)
    shrunk = state(model)
    with pytest.raises(vlticket.ShapeMismatchError):
        vlticket.shrink(model, dense_mask)  # a dense-model mask on the shrunk model
    assert unchanged(model, shrunk)
    # The shrunk model's own mask works, and a second shrink removes more.
    again = vlticket.prune_structured(model, granularity="neuron", amount=0.5)
    vlticket.shrink(model, again)
    neurons = sum(layer.intermediate.dense.out_features for layer in model.encoder.layer)
    before = sum(shrunk[f"encoder.layer.{i}.intermediate.dense.weight"].shape[0] for i in (0, 1))
    assert neurons < before


def test_original_vilt_neurons_shrink_heads_refused():
    model = ViLTransformerSS(layers=1, h=16, i=32)
    heads = vlticket.prune_structured(model, sparsity=0.5, num_heads=4)
    before = state(model)
    with pytest.raises(vlticket.ArgumentError, match="head size from the hidden size"):
        vlticket.shrink(model, heads, num_heads=4)
    assert unchanged(model, before)
    neurons = vlticket.prune_structured(model, granularity="neuron", sparsity=0.5, num_heads=4)
    vlticket.shrink(model, neurons, num_heads=4)
    assert model.transformer.blocks[0].mlp.fc1.weight.shape == (16, 16)
    assert model.transformer.blocks[0].mlp.fc2.weight.shape == (16, 16)


def test_original_vilt_heads_shrink_in_the_transformers_form():
    """The original's fused-qkv heads, pruned there, are removed after conversion: the same
    heads as pruning the converted model, and the shrunk model computes the masked one."""
    orig = original_vilt(heads=("vqa",))
    mask = structured_mask(orig, num_heads=2)
    hf = vilt_build(ViltForQuestionAnswering).eval()
    hf.load_state_dict(vilt_forms.state_dict_to_transformers(orig.state_dict()), strict=True)
    converted = vlticket.Mask(vilt_forms.to_transformers(dict(mask)))
    assert all(torch.equal(converted[n], t) for n, t in structured_mask(hf).items())
    converted.apply(hf, adapter="vilt")
    small = copy.deepcopy(hf)
    removed = vlticket.shrink(small, converted)
    assert removed["encoder.layer.0.attention"] == 1
    assert small.vilt.encoder.layer[0].attention.attention.num_attention_heads == 1
    for w, g in zip(outputs(hf, vilt_inputs()), outputs(small, vilt_inputs()), strict=True):
        assert torch.allclose(w, g, atol=1e-5)


class FusedAttention(torch.nn.Module):
    """timm-style attention with one fused q/k/v weight that reads its head count and size from
    attributes (the original ViLT's derives the head size from the hidden size instead)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.qkv, self.proj = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = torch.nn.functional.scaled_dot_product_attention(*qkv)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class FusedEncoder(torch.nn.Module):
    def __init__(self, layers=2, dim=16, heads=4, ffn=24):
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.Module() for _ in range(layers))
        for block in self.blocks:
            block.attn = FusedAttention(dim, heads)
            block.mlp = torch.nn.Module()
            block.mlp.fc1, block.mlp.fc2 = torch.nn.Linear(dim, ffn), torch.nn.Linear(ffn, dim)

    def forward(self, x):
        for block in self.blocks:
            x = x + block.attn(x)
            x = x + block.mlp.fc2(torch.nn.functional.gelu(block.mlp.fc1(x)))
        return x


FUSED = adapters.PatternAdapter(
    include=[r"blocks\.\d+\.(attn\.(qkv|proj)|mlp\.fc\d)\.weight"],
    structure=[
        adapters.Structure(
            kind="head", where=r"blocks\.\d+\.attn\.", rows=("qkv",), columns=("proj",), fused=3
        ),
        adapters.Structure(
            kind="neuron", where=r"blocks\.\d+\.mlp\.", rows=("fc1",), columns=("fc2",)
        ),
    ],
)


def test_fused_qkv_heads_shrink_exactly_where_the_code_reads_the_head_count():
    torch.manual_seed(0)
    dense = FusedEncoder()
    mask = structured_mask(dense, adapter=FUSED, scope="layer")
    mask.apply(dense, adapter=FUSED)
    small = copy.deepcopy(dense)
    sites = adapters.blocks_for(dense, FUSED)
    states = vlticket.core.structured.unit_state([s.block for s in sites], mask)
    removed = vlticket.shrink(small, mask, adapter=FUSED, align=1)
    assert removed["blocks.0.attn"] == 2 and small.blocks[0].attn.num_heads == 2
    assert small.blocks[0].attn.qkv.weight.shape == (3 * 2 * 4, 16)  # q, k, v of 2 heads
    assert small.blocks[0].attn.proj.weight.shape == (16, 2 * 4)
    x = torch.randn(2, 5, 16)
    want, got = dense(x), small(x)
    assert torch.allclose(want, got, atol=1e-5)
    want.square().sum().backward()
    got.square().sum().backward()
    dense_params, small_params = dict(dense.named_parameters()), dict(small.named_parameters())
    for site in sites:
        keep = (states[site.block.name] != 0).nonzero().flatten()
        for axis in site.block.axes:
            index = site.block.entries(keep, axis)
            for kind in ("weight", "bias") if axis.dim == 0 else ("weight",):
                name = axis.name.replace(".weight", f".{kind}")
                want_grad = dense_params[name].grad.index_select(axis.dim, index)
                assert torch.allclose(small_params[name].grad, want_grad, atol=1e-5), name


def test_structured_imp_by_hand_with_rewind_and_attach():
    """Structured IMP without TicketSearch: train, prune more units, rewind, repeat; shrink."""
    model = vilt()
    adapter = adapters.adapter_for(model)
    theta0 = vlticket.Checkpoint.capture(model, adapter=adapter)
    mask = vlticket.Mask.ones(model, adapter=adapter)
    masks = []
    for _ in range(3):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        with mask.attach(model, optimizer, adapter=adapter):
            for _ in range(2):
                outputs(model, vilt_inputs())[0].square().mean().backward()
                optimizer.step()
                optimizer.zero_grad()
        mask = vlticket.prune_structured(model, granularity="neuron", amount=0.25, mask=mask)
        mask = vlticket.prune_structured(model, granularity="head", amount=0.25, mask=mask)
        theta0.restore(model, mask, adapter=adapter)
        masks.append(mask)
    for looser, tighter in itertools.pairwise(masks):
        assert all(not (tighter[n] & ~looser[n]).any() for n in looser)
    sites = adapters.blocks_for(model)
    state = vlticket.core.structured.unit_state([s.block for s in sites], mask)
    heads = sum(int((state[s.block.name] == 0).sum()) for s in sites if s.block.kind == "head")
    assert heads == 2 + 2 + 1  # round(0.25 * 8), round(0.25 * 6), round(0.25 * 4)
    dense = copy.deepcopy(model)
    vlticket.shrink(model, mask)
    for w, g in zip(outputs(dense, vilt_inputs()), outputs(model, vilt_inputs()), strict=True):
        assert torch.allclose(w, g, atol=1e-5)


def test_a_non_bool_mask_is_refused_by_name_and_the_model_kept():
    model = bert()
    floats = {n: t.float() for n, t in structured_mask(model).items()}
    before = state(model)
    with pytest.raises(vlticket.ArgumentError, match=r"mask\['encoder.*expected dtype torch.bool"):
        vlticket.shrink(model, floats)
    assert unchanged(model, before)


def test_models_sharing_one_config_keep_their_own_records(tmp_path):
    first = bert()
    config = first.config
    second = BertModel(config).eval()  # one config object, two models
    inputs = bert_inputs()
    for model, heads in ((first, 0.5), (second, 0.25)):
        mask = structured_mask(model, heads=heads, neurons=0.25 + heads)
        mask.apply(model)
        vlticket.shrink(model, mask)
    assert first.config.vlticket_shrunk != second.config.vlticket_shrunk
    assert getattr(config, "vlticket_shrunk", None) is None  # a third model is built dense
    assert first.encoder.layer[0].attention.self.config is first.config  # submodules follow
    for i, model in enumerate((first, second)):
        model.save_pretrained(tmp_path / str(i))
        again = vlticket.load_shrunk(BertModel, tmp_path / str(i)).eval()
        with torch.no_grad():
            for a, b in zip(outputs(again, inputs), outputs(model, inputs), strict=True):
                assert torch.allclose(a, b, atol=1e-5)


def test_load_shrunk_keeps_the_saved_precision(tmp_path):
    model = bert().to(torch.bfloat16)
    mask = structured_mask(model)
    mask.apply(model)
    vlticket.shrink(model, mask)
    model.save_pretrained(tmp_path)
    again = vlticket.load_shrunk(BertModel, tmp_path).eval()
    assert {p.dtype for p in again.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        for a, b in zip(outputs(again, bert_inputs()), outputs(model, bert_inputs()), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("value", [0, True, -1, 5, 2.0])
def test_load_shrunk_refuses_an_impossible_head_count(tmp_path, value):
    model = bert()
    vlticket.shrink(model, structured_mask(model))
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["vlticket_shrunk"]["encoder.layer.0.attention"] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(vlticket.FileFormatError, match=r"attention'\]`: expected 1\.\.4"):
        vlticket.load_shrunk(BertModel, tmp_path)
