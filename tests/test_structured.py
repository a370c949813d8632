"""Structured tickets: unit selection (core), family structure tables, prune_structured."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from original_models import LXRTModel, UniterModel, ViLTransformerSS
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    LxmertConfig,
    LxmertModel,
    ViltConfig,
    ViltModel,
)

import vlticket
from vlticket import adapters
from vlticket.core.structured import Axis, Block, select_units, unit_scores, unit_state, units_mask

torch.set_num_threads(1)


def bert(heads=4, layers=2, seed=0, **kw):
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=24,
        **kw,
    )
    return BertModel(config).eval()


def lxmert(seed=0, **kw):
    torch.manual_seed(seed)
    config = LxmertConfig(
        vocab_size=50,
        hidden_size=16,
        num_attention_heads=4,
        intermediate_size=24,
        l_layers=2,
        x_layers=1,
        r_layers=1,
        visual_feat_dim=8,
        visual_pos_dim=4,
        **kw,
    )
    return LxmertModel(config).eval()


def vilt(seed=0, **kw):
    torch.manual_seed(seed)
    config = ViltConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=24,
        image_size=32,
        patch_size=16,
        max_image_length=4,
        max_position_embeddings=40,
        **kw,
    )
    return ViltModel(config).eval()


# -- core: selection over index sets --------------------------------------------------------
def block(name, count, size=1, stream="all", tensors=("w",)):
    return Block(name, "head", count, size, tuple(Axis(f"{name}.{t}", 0) for t in tensors), stream)


def test_global_selection_by_hand():
    a, b = block("a", 3), block("b", 3)
    scores = {"a": torch.tensor([5.0, 1.0, 3.0]), "b": torch.tensor([2.0, 4.0, 0.5])}
    keep = select_units([a, b], scores, sparsity=0.5)  # 3 lowest: b2 (0.5), a1 (1), b0 (2)
    assert keep["a"].tolist() == [True, False, True]
    assert keep["b"].tolist() == [False, True, False]
    keep = select_units([a, b], scores, sparsity=0.5, scope="layer")  # 2 per block (round 1.5)
    assert keep["a"].tolist() == [True, False, False]
    assert keep["b"].tolist() == [False, True, False]


def test_ties_go_to_the_earlier_block_then_lower_index():
    a, b = block("a", 2), block("b", 2)
    keep = select_units([a, b], {"a": torch.ones(2), "b": torch.ones(2)}, sparsity=0.25)
    assert keep["a"].tolist() == [False, True] and keep["b"].all()


def test_minimum_per_block_and_amount_and_already_pruned():
    a, b = block("a", 2), block("b", 4)
    scores = {"a": torch.tensor([0.0, 0.1]), "b": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    keep = select_units([a, b], scores, sparsity=0.5)  # a keeps its last head: a0, b0, b1
    assert keep["a"].tolist() == [False, True]
    assert keep["b"].tolist() == [False, False, True, True]
    keep = select_units([a, b], scores, sparsity=0.5, min_per_block=0)
    assert keep["a"].tolist() == [False, False] and keep["b"].tolist() == [False, True, True, True]
    pruned = {"b": torch.tensor([False, False, False, True])}  # b3 stays pruned
    keep = select_units([a, b], scores, amount=0.4, pruned=pruned)  # round(0.4 * 5) = 2 more
    assert keep["a"].tolist() == [False, True]
    assert keep["b"].tolist() == [False, True, True, False]
    with pytest.raises(vlticket.ArgumentError, match="min_per_layer"):
        select_units([a], {"a": scores["a"]}, sparsity=0.9, min_per_block=2)


def test_stream_budgets():
    lang, vis = block("l", 4, stream="language"), block("v", 4, stream="vision")
    scores = {"l": torch.arange(4.0), "v": torch.arange(4.0) - 10}
    keep = select_units([lang, vis], scores, sparsity=0.5, budgets={"language": 0.25})
    assert keep["l"].tolist() == [False, True, True, True]  # 1 of 4
    assert keep["v"].tolist() == [False, False, True, True]  # 2 of 4 (the default sparsity)
    with pytest.raises(vlticket.ArgumentError, match="unknown stream 'cross'"):
        select_units([lang, vis], scores, sparsity=0.5, budgets={"cross": 0.5})


def test_budgets_for_every_stream_need_no_sparsity_and_refuse_amount():
    lang, vis = block("l", 4, stream="language"), block("v", 4, stream="vision")
    scores = {"l": torch.arange(4.0), "v": torch.arange(4.0)}
    keep = select_units([lang, vis], scores, budgets={"language": 0.25, "vision": 0.75})
    assert keep["l"].tolist() == [False, True, True, True]
    assert keep["v"].tolist() == [False, False, False, True]
    with pytest.raises(vlticket.ArgumentError, match="exactly one of `sparsity` and `amount`"):
        select_units([lang, vis], scores, budgets={"language": 0.25})  # vision has no target
    with pytest.raises(vlticket.ArgumentError, match="`budgets` sets each stream's final"):
        select_units([lang, vis], scores, amount=0.5, budgets={"language": 0.25})  # was ignored


def test_fused_rows_and_columns_by_hand():
    # 2 heads of size 1, q/k/v fused: rows [q0, q1, k0, k1, v0, v1]; output columns [h0, h1].
    b = Block("att", "head", 2, 1, (Axis("qkv", 0, parts=3), Axis("out", 1)))
    qkv = torch.tensor([[1.0, -1.0], [2.0, 0.0], [0.0, 3.0], [1.0, 1.0], [0.0, 0.0], [4.0, 0.0]])
    out = torch.tensor([[1.0, 2.0], [3.0, -4.0]])
    scores = unit_scores([b], {"qkv": qkv, "out": out})["att"]
    assert scores.tolist() == [2 + 3 + 0 + 4, 2 + 2 + 4 + 6]
    l2 = unit_scores([b], {"qkv": qkv, "out": out}, norm="l2")["att"]
    assert torch.allclose(
        l2,
        torch.tensor(
            [(1 + 1 + 9 + 1 + 9) ** 0.5, (4 + 2 + 16 + 4 + 16) ** 0.5], dtype=torch.float64
        ),
    )
    base = {"qkv": torch.ones(6, 2, dtype=torch.bool), "out": torch.ones(2, 2, dtype=torch.bool)}
    mask = units_mask([b], {"att": torch.tensor([True, False])}, base)
    assert mask["qkv"][:, 0].tolist() == [True, False, True, False, True, False]
    assert mask["out"].tolist() == [[True, False], [True, False]]
    assert unit_state([b], mask)["att"].tolist() == [1, 0]
    mask["out"][0, 0] = False
    assert unit_state([b], mask)["att"].tolist() == [-1, 0]


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(1, 6), min_size=1, max_size=5),
    size=st.integers(1, 3),
    sparsity=st.floats(0.0, 0.99),
    minimum=st.integers(0, 2),
    scope=st.sampled_from(["global", "layer"]),
    seed=st.integers(0, 1000),
)
def test_selection_properties(counts, size, sparsity, minimum, scope, seed):
    g = torch.Generator().manual_seed(seed)
    blocks = [
        Block(f"b{i}", "head", c, size, (Axis(f"q{i}", 0), Axis(f"o{i}", 1)))
        for i, c in enumerate(counts)
    ]
    scores = {b.name: torch.randint(0, 3, (b.count,), generator=g).float() for b in blocks}
    scopes = [blocks] if scope == "global" else [[b] for b in blocks]
    feasible = all(
        round(sparsity * sum(b.count for b in s)) <= sum(b.count - min(minimum, b.count) for b in s)
        for s in scopes
    )
    if not feasible:
        with pytest.raises(vlticket.ArgumentError):
            select_units(blocks, scores, sparsity=sparsity, scope=scope, min_per_block=minimum)
        return
    keep = select_units(blocks, scores, sparsity=sparsity, scope=scope, min_per_block=minimum)
    for s in scopes:  # exact counts
        assert sum(int((~keep[b.name]).sum()) for b in s) == round(
            sparsity * sum(b.count for b in s)
        )
    for b in blocks:  # minimum kept, and a kept unit never scores below a pruned one of its scope
        assert int(keep[b.name].sum()) >= min(minimum, b.count)
    if minimum == 0:
        for s in scopes:
            kept = [scores[b.name][keep[b.name]] for b in s]
            gone = [scores[b.name][~keep[b.name]] for b in s]
            kept, gone = torch.cat(kept), torch.cat(gone)
            if len(kept) and len(gone):
                assert gone.max() <= kept.min()
    base = {}
    for i, b in enumerate(blocks):
        base[f"q{i}"] = torch.ones(b.count * size, 3, dtype=torch.bool)
        base[f"o{i}"] = torch.ones(3, b.count * size, dtype=torch.bool)
    mask = units_mask(blocks, keep, base)
    state = unit_state(blocks, mask)  # whole rows and columns: no partial unit
    for b in blocks:
        assert (state[b.name] == keep[b.name].to(torch.int8)).all()
        assert mask[f"q{blocks.index(b)}"].sum() == keep[b.name].sum() * size * 3


# -- adapters: where the blocks are ---------------------------------------------------------
def test_bert_blocks_from_the_table():
    model = bert()
    assert adapters.adapter_for(model).name == "bert"
    sites = adapters.blocks_for(model)
    assert [(s.block.name, s.block.kind, s.block.count, s.block.size) for s in sites] == [
        ("encoder.layer.0.attention", "head", 4, 4),
        ("encoder.layer.0.intermediate.dense", "neuron", 24, 1),
        ("encoder.layer.1.attention", "head", 4, 4),
        ("encoder.layer.1.intermediate.dense", "neuron", 24, 1),
    ]
    assert [a.name for a in sites[0].block.axes] == [
        "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.0.attention.self.key.weight",
        "encoder.layer.0.attention.self.value.weight",
        "encoder.layer.0.attention.output.dense.weight",
    ]
    assert [a.dim for a in sites[2].block.axes] == [0, 0, 0, 1]


def test_lxmert_blocks_include_cross_attention_in_streams():
    sites = adapters.blocks_for(lxmert(), kind="head")
    names = {s.block.name: s.block.stream for s in sites}
    assert names == {
        "encoder.layer.0.attention": "language",
        "encoder.layer.1.attention": "language",
        "encoder.r_layers.0.attention": "vision",
        "encoder.x_layers.0.visual_attention": "cross",
        "encoder.x_layers.0.lang_self_att": "cross",
        "encoder.x_layers.0.visn_self_att": "cross",
    }
    assert all(s.block.count == 4 for s in sites)
    neurons = [s.block.name for s in adapters.blocks_for(lxmert(), kind="neuron")]
    assert "encoder.x_layers.0.lang_inter.dense" in neurons
    assert "encoder.x_layers.0.visn_inter.dense" in neurons


@pytest.mark.parametrize(
    "model, adapter, kw",
    [
        (UniterModel(h=16, i=32), "uniter", {"num_heads": 4}),
        (LXRTModel(h=16, i=32), "lxmert", {"num_heads": 4}),
        (ViLTransformerSS(layers=2, h=16, i=32), "vilt-original", {"num_heads": 4}),
    ],
)
def test_original_forms_need_the_head_count_and_prune(model, adapter, kw):
    with pytest.raises(vlticket.ArgumentError, match="num_heads"):
        vlticket.prune_structured(model, sparsity=0.5)
    mask = vlticket.prune_structured(model, sparsity=0.5, **kw)
    sites = adapters.blocks_for(model, kind="head", **kw)
    state = unit_state([s.block for s in sites], mask)
    total = sum(s.block.count for s in sites)
    assert sum(int((v == 0).sum()) for v in state.values()) == round(0.5 * total)
    assert all((v != -1).all() for v in state.values())
    assert adapters.adapter_for(model).name == adapter


def test_original_vilt_fused_qkv_rows():
    model = ViLTransformerSS(layers=1, h=16, i=32)
    scores = {"encoder.layer.0.attention": torch.tensor([0.0, 1.0, 2.0, 3.0])}
    mask = vlticket.prune_structured(model, sparsity=0.25, score=scores, num_heads=4)
    qkv = mask["encoder.layer.0.attention.attention.qkv.weight"]
    dropped = (~qkv.all(dim=1)).nonzero().flatten().tolist()
    assert dropped == [0, 1, 2, 3, 16, 17, 18, 19, 32, 33, 34, 35]  # head 0 of q, k and v
    out = mask["encoder.layer.0.attention.output.dense.weight"]
    assert (~out.all(dim=0)).nonzero().flatten().tolist() == [0, 1, 2, 3]


def test_pattern_adapter_declares_structure():
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList(torch.nn.Module() for _ in range(2))
    for layer in model.layers:
        layer.fc1, layer.fc2 = torch.nn.Linear(4, 6), torch.nn.Linear(6, 4)
    plain = adapters.PatternAdapter(include=[r"layers\.\d+\.fc\d\.weight"])
    with pytest.raises(vlticket.ArgumentError, match="structure="):
        vlticket.prune_structured(model, granularity="neuron", sparsity=0.5, adapter=plain)
    rows = adapters.Structure(
        kind="neuron", where=r"layers\.\d+\.", rows=("fc1",), columns=("fc2",)
    )
    declared = adapters.PatternAdapter(include=plain.include, structure=[rows])
    mask = vlticket.prune_structured(model, granularity="neuron", sparsity=0.5, adapter=declared)
    assert (
        mask["layers.0.fc1.weight"].all(dim=1).sum() + mask["layers.1.fc1.weight"].all(dim=1).sum()
        == 6
    )
    before = model.layers[0].fc1.weight.clone()
    vlticket.shrink(model, mask, adapter=declared, align=1)  # exact widths, no zero neurons
    assert model.layers[0].fc1.weight.shape[0] + model.layers[1].fc1.weight.shape[0] == 6
    assert model.layers[0].fc2.weight.shape[1] == model.layers[0].fc1.weight.shape[0]
    keep = mask["layers.0.fc1.weight"].all(dim=1)
    assert torch.equal(model.layers[0].fc1.weight, before[keep])


# -- prune_structured -----------------------------------------------------------------------
def test_prune_structured_counts_and_min_per_layer():
    model = bert(heads=4, layers=3)
    mask = vlticket.prune_structured(model, granularity="head", sparsity=0.7)
    sites = adapters.blocks_for(model, kind="head")
    state = unit_state([s.block for s in sites], mask)
    assert sum(int((v == 0).sum()) for v in state.values()) == round(0.7 * 12)
    assert all(int((v == 1).sum()) >= 1 for v in state.values())
    ffn = mask["encoder.layer.0.intermediate.dense.weight"]
    assert ffn.all()  # heads only
    layer = vlticket.prune_structured(model, granularity="head", sparsity=0.5, scope="layer")
    state = unit_state([s.block for s in sites], layer)
    assert all(int((v == 0).sum()) == 2 for v in state.values())


def test_prune_structured_by_norm_matches_a_hand_ranking():
    model = bert(heads=2, layers=1)
    with torch.no_grad():
        model.encoder.layer[0].attention.self.value.weight[8:] *= 0.01  # head 1 is weak
        model.encoder.layer[0].attention.self.query.weight[8:] *= 0.01
        model.encoder.layer[0].attention.self.key.weight[8:] *= 0.01
        model.encoder.layer[0].attention.output.dense.weight[:, 8:] *= 0.01
    mask = vlticket.prune_structured(model, sparsity=0.5, score="l2")
    assert not mask["encoder.layer.0.attention.self.query.weight"][8:].any()
    assert mask["encoder.layer.0.attention.self.query.weight"][:8].all()


def test_prune_structured_iterates_and_composes_with_masks():
    model = bert(heads=4, layers=2)
    m1 = vlticket.prune_structured(model, granularity="neuron", amount=0.25)
    m2 = vlticket.prune_structured(model, granularity="neuron", amount=0.25, mask=m1)
    for name in m1:
        assert not (m2[name] & ~m1[name]).any()
    rows = m2["encoder.layer.0.intermediate.dense.weight"].all(dim=1)
    rows1 = m2["encoder.layer.1.intermediate.dense.weight"].all(dim=1)
    assert int((~rows).sum() + (~rows1).sum()) == 12 + round(0.25 * 36)
    assert 0 < vlticket.iou(m1, m2) <= 1


def test_lxmert_budgets_per_stream():
    model = lxmert()
    mask = vlticket.prune_structured(
        model, sparsity=0.25, budgets={"language": 0.5, "vision": 0.0, "cross": 0.25}
    )
    sites = adapters.blocks_for(model, kind="head")
    state = unit_state([s.block for s in sites], mask)
    pruned = {}
    for s in sites:
        pruned[s.block.stream] = pruned.get(s.block.stream, 0) + int(
            (state[s.block.name] == 0).sum()
        )
    assert pruned == {"language": 4, "vision": 0, "cross": 3}


def test_bad_requests_are_refused():
    model = bert()
    with pytest.raises(vlticket.ArgumentError, match="granularity"):
        vlticket.prune_structured(model, granularity="layer", sparsity=0.5)
    with pytest.raises(vlticket.ArgumentError, match="exactly one"):
        vlticket.prune_structured(model)
    with pytest.raises(vlticket.ArgumentError, match="scope"):
        vlticket.prune_structured(model, sparsity=0.5, scope="tensor")
    with pytest.raises(vlticket.ArgumentError, match="unknown blocks"):
        vlticket.prune_structured(
            model, sparsity=0.5, score={"encoder.layer.9.attention": torch.ones(4)}
        )
    with pytest.raises(vlticket.ShapeMismatchError, match="needs 4 scores"):
        vlticket.prune_structured(
            model, sparsity=0.5, score={"encoder.layer.0.attention": torch.ones(3)}
        )
    other = vlticket.Mask.ones(vilt(), adapter="vilt")
    with pytest.raises(vlticket.NameMismatchError):
        vlticket.prune_structured(model, sparsity=0.5, mask=other)
    with pytest.raises(vlticket.ShapeMismatchError, match="do not split into 1 x 3 heads"):
        vlticket.prune_structured(UniterModel(h=16), sparsity=0.5, num_heads=3)


def test_structured_mask_records_the_adapter_so_head_models_take_it():
    # A model with a head: canonical names lack the "bert." prefix, so apply must know the adapter.
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=24,
    )
    model = BertForSequenceClassification(config).eval()
    mask = vlticket.prune_structured(model, granularity="head", sparsity=0.5)
    mask = vlticket.prune_structured(model, granularity="neuron", sparsity=0.5, mask=mask)
    assert mask.adapter == vlticket.prune_magnitude(model, sparsity=0.5).adapter
    mask.apply(model)
    query = model.bert.encoder.layer[0].attention.self.query.weight
    assert torch.equal(query != 0, mask["encoder.layer.0.attention.self.query.weight"])


def test_bad_values_are_refused_by_name_before_any_work():
    model = bert()
    floats = {n: t.float() for n, t in vlticket.Mask.ones(model).items()}
    with pytest.raises(vlticket.ArgumentError, match=r"mask\['encoder.*expected dtype torch.bool"):
        vlticket.prune_structured(model, sparsity=0.5, mask=floats)
    with pytest.raises(vlticket.ArgumentError, match=r"`score`\['encoder.layer.0.attention'\]"):
        vlticket.prune_structured(
            model, sparsity=0.5, score={"encoder.layer.0.attention": ["a", "b", "c", "d"]}
        )
    with torch.device("meta"):
        on_meta = bert()
    with pytest.raises(vlticket.ArgumentError, match="'encoder.layer.0.*' is on the meta device"):
        vlticket.prune_structured(on_meta, sparsity=0.5)
    # Given scores need no values: the mask is drawn from the shapes alone.
    scores = {f"encoder.layer.{i}.attention": [4.0, 3.0, 2.0, 1.0] for i in (0, 1)}
    mask = vlticket.prune_structured(on_meta, sparsity=0.5, score=scores)
    assert mask["encoder.layer.0.attention.self.query.weight"].any(dim=1).sum() == 8  # 2 heads x 4
