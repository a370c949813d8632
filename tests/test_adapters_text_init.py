"""init_language_stream: a V+L language stream initialised from BERT, RoBERTa or DistilBERT.

Tiny configs with random weights; every expected name below is written out or derived from
BERT's layout independently of the library's tables.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from original_models import UniterForVisualQuestionAnswering, ViLTransformerSS, VQAModel

transformers = pytest.importorskip("transformers")

import vlticket  # noqa: E402
from vlticket import adapters  # noqa: E402

H = 16
# BERT's 16 tensors inside one layer.
BERT_LAYER = [
    f"{module}.{kind}"
    for module in (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "attention.output.LayerNorm",
        "intermediate.dense",
        "output.dense",
        "output.LayerNorm",
    )
    for kind in ("weight", "bias")
]
EMBEDDINGS = [
    "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight",
    "embeddings.LayerNorm.weight",
    "embeddings.LayerNorm.bias",
]
POOLER = ["pooler.dense.weight", "pooler.dense.bias"]


def bert(layers=2, hidden=H, cls=transformers.BertModel, seed=1, positions=512):
    torch.manual_seed(seed)
    return cls(
        transformers.BertConfig(
            vocab_size=50,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=2,
            intermediate_size=2 * hidden,
            max_position_embeddings=positions,
        )
    )


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def unchanged(model, before):
    return all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_bert_into_original_uniter_loads_every_counterpart_and_reports_the_rest():
    text = bert(layers=2)
    model = UniterForVisualQuestionAnswering(layers=3, h=H, i=2 * H)
    before = snapshot(model)
    report = adapters.init_language_stream(model, text)
    source = dict(text.named_parameters())
    layers = [f"encoder.layer.{i}.{t}" for i in (0, 1) for t in BERT_LAYER]
    expected = {f"uniter.{n}": (n,) for n in [*EMBEDDINGS, *layers, *POOLER]}
    assert report.loaded == expected
    params = dict(model.named_parameters())
    for name, (src,) in report.loaded.items():
        assert torch.equal(params[name], source[src]), name
    assert report.unused == {}
    layer2 = {f"uniter.encoder.layer.2.{t}" for t in BERT_LAYER}
    reasons = {n: r for n, r in report.left.items() if n in layer2}
    assert set(reasons.values()) == {
        "language layer 2 got no text layer (the text model has 2 layers)"
    }
    assert set(report.left) == set(params) - set(expected)
    others = set(report.left) - layer2
    assert {report.left[n] for n in others} == {"outside the language stream"}
    assert all(torch.equal(params[n], before[n]) for n in report.left)
    assert report.layers == {0: 0, 1: 1}
    assert str(report).splitlines()[0] == (
        "loaded 39 tensors into 'uniter': text layers 0-1 onto the same language layers, "
        "embeddings, pooler; 33 left as they were, 0 unused"  # 16 + img 11 + head 6
    )


def test_bert_into_transformers_lxmert_skips_the_layers_it_has_no_place_for():
    text = bert(layers=3)
    config = transformers.LxmertConfig(
        vocab_size=50,
        hidden_size=H,
        num_attention_heads=2,
        intermediate_size=2 * H,
        l_layers=2,
        x_layers=1,
        r_layers=1,
    )
    model = transformers.LxmertForQuestionAnswering(config)
    report = adapters.init_language_stream(model, text.state_dict())
    assert set(report.unused) == {f"encoder.layer.2.{t}" for t in BERT_LAYER}
    assert set(report.unused.values()) == {
        "text layer 2 has no place in the V+L model (it has 2 language layers)"
    }
    assert len(report.loaded) == 5 + 2 * 16 + 2
    lx = model.lxmert
    assert torch.equal(
        lx.encoder.layer[1].output.LayerNorm.bias, text.encoder.layer[1].output.LayerNorm.bias
    )
    assert torch.equal(
        lx.embeddings.token_type_embeddings.weight, text.embeddings.token_type_embeddings.weight
    )
    assert torch.equal(lx.pooler.dense.weight, text.pooler.dense.weight)
    assert all(n.startswith("lxmert.") for n in report.loaded)
    # the cross-modality and vision layers keep their own values
    assert report.left["lxmert.encoder.x_layers.0.visual_attention.att.query.weight"] == (
        "outside the language stream"
    )


def test_the_original_lxmert_names_load_the_same_way():
    report = adapters.init_language_stream(VQAModel(), bert(layers=2))
    assert "lxrt_encoder.model.bert.encoder.layer.1.output.LayerNorm.weight" in report.loaded


def roberta(positions=40, token_types=1):
    torch.manual_seed(2)
    config = transformers.RobertaConfig(
        vocab_size=50,
        hidden_size=H,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * H,
        max_position_embeddings=positions + 2,  # RoBERTa: padding_idx + 1 extra rows
        type_vocab_size=token_types,
        pad_token_id=1,
    )
    return transformers.RobertaModel(config)


def visualbert(positions=40):
    torch.manual_seed(3)
    config = transformers.VisualBertConfig(
        vocab_size=50,
        hidden_size=H,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * H,
        visual_embedding_dim=8,
        max_position_embeddings=positions,
    )
    return transformers.VisualBertForQuestionAnswering(config)


def test_roberta_positions_are_shifted_and_one_token_type_is_refused_unless_excluded():
    text, model = roberta(), visualbert()
    before = snapshot(model)
    with pytest.raises(vlticket.ShapeMismatchError, match="token_type_embeddings") as err:
        adapters.init_language_stream(model, text)
    assert "nothing was loaded" in str(err.value) and "exclude=" in str(err.value)
    assert unchanged(model, before)
    report = adapters.init_language_stream(model, text, exclude=[r".*\.token_type_embeddings\..*"])
    positions = model.visual_bert.embeddings.position_embeddings.weight
    assert torch.equal(positions, text.embeddings.position_embeddings.weight[2:])
    assert report.notes == [
        "embeddings.position_embeddings.weight: rows 2: loaded (RoBERTa counts positions from "
        "padding_idx + 1)"
    ]
    assert (
        report.left["visual_bert.embeddings.token_type_embeddings.weight"] == "excluded (`exclude`)"
    )
    assert report.unused == {
        "embeddings.token_type_embeddings.weight": "its place "
        "'visual_bert.embeddings.token_type_embeddings.weight' is excluded (`exclude`)"
    }
    assert report.left["visual_bert.embeddings.visual_projection.weight"] == (
        "not a text embedding (no counterpart in BERT)"
    )
    assert torch.equal(
        model.visual_bert.encoder.layer[1].attention.self.key.bias,
        text.encoder.layer[1].attention.self.key.bias,
    )
    # a state dict under `roberta.` (a RobertaFor* head) is recognised by its prefix
    sd = {f"roberta.{n}": t for n, t in text.state_dict().items()}
    again = adapters.init_language_stream(visualbert(), sd, exclude=[r".*\.token_type_.*"])
    assert len(again.notes) == 1 and len(again.loaded) == len(report.loaded)


def distilbert(layers=2):
    torch.manual_seed(4)
    config = transformers.DistilBertConfig(
        vocab_size=50, dim=H, n_layers=layers, n_heads=2, hidden_dim=2 * H
    )
    return transformers.DistilBertModel(config)


def vilt(layers=3):
    torch.manual_seed(5)
    config = transformers.ViltConfig(
        vocab_size=50,
        hidden_size=H,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * H,
        image_size=32,
        patch_size=16,
        max_position_embeddings=512,
    )
    return transformers.ViltForQuestionAnswering(config)


def test_distilbert_into_vilt_maps_its_names_and_explains_the_pre_ln_norms():
    text, model = distilbert(), vilt()
    report = adapters.init_language_stream(model, text)
    layer = model.vilt.encoder.layer[1]
    d = text.transformer.layer[1]
    pairs = [
        (layer.attention.attention.query, d.attention.q_lin),
        (layer.attention.attention.value, d.attention.v_lin),
        (layer.attention.output.dense, d.attention.out_lin),
        (layer.intermediate.dense, d.ffn.lin1),
        (layer.output.dense, d.ffn.lin2),
    ]
    for mine, theirs in pairs:
        assert torch.equal(mine.weight, theirs.weight) and torch.equal(mine.bias, theirs.bias)
    pre_ln = "ViLT normalises before attention and FFN (pre-LN); BERT's layer norms sit after them"
    assert report.left["vilt.encoder.layer.0.layernorm_before.weight"] == pre_ln
    assert report.unused["transformer.layer.0.sa_layer_norm.weight"] == (
        f"no counterpart in the V+L model's language layers ({pre_ln})"
    )
    assert report.left["vilt.embeddings.text_embeddings.token_type_embeddings.weight"] == (
        "the text model has no such embedding"
    )
    assert report.left["vilt.embeddings.patch_embeddings.projection.weight"] == (
        "outside the language stream"
    )
    assert len(report.loaded) == 4 + 2 * 12  # words, positions, LayerNorm (2); 12 per layer
    assert set(report.unused) == {
        f"transformer.layer.{i}.{n}_layer_norm.{k}"
        for i in (0, 1)
        for n in ("sa", "output")
        for k in ("weight", "bias")
    }


def test_bert_into_the_original_vilt_stacks_query_key_value_biases_too():
    text = bert(layers=2, positions=40)
    model = ViLTransformerSS(layers=2, h=H, i=2 * H)
    report = adapters.init_language_stream(model, text)
    qkv = model.transformer.blocks[1].attn.qkv
    own = text.encoder.layer[1].attention.self
    for kind in ("weight", "bias"):
        stacked = torch.cat([getattr(getattr(own, p), kind) for p in ("query", "key", "value")])
        assert torch.equal(getattr(qkv, kind), stacked)
    assert report.loaded["transformer.blocks.1.attn.qkv.bias"] == tuple(
        f"encoder.layer.1.attention.self.{p}.bias" for p in ("query", "key", "value")
    )
    assert torch.equal(model.text_embeddings.LayerNorm.weight, text.embeddings.LayerNorm.weight)


def test_layers_choose_the_first_k_or_an_explicit_map():
    text = bert(layers=4)
    model = UniterForVisualQuestionAnswering(layers=2, h=H, i=2 * H)
    report = adapters.init_language_stream(model, text, layers={1: 0, 3: 1}, pooler=False)
    assert report.layers == {1: 0, 3: 1}
    assert torch.equal(
        model.uniter.encoder.layer[1].output.dense.weight, text.encoder.layer[3].output.dense.weight
    )
    assert report.unused["encoder.layer.0.output.dense.weight"] == (
        "text layer 0 has no place in the V+L model (not in `layers`)"
    )
    assert report.unused["pooler.dense.weight"] == "pooler=False"
    assert report.left["uniter.pooler.dense.weight"] == "pooler=False"
    assert "text layers onto language layers 1->0, 3->1" in report.summary()
    first = adapters.init_language_stream(
        UniterForVisualQuestionAnswering(layers=3, h=H, i=2 * H), text, layers=1
    )
    assert first.layers == {0: 0}
    assert first.left["uniter.encoder.layer.1.output.dense.weight"] == (
        "language layer 1 got no text layer (not in `layers`)"
    )


@settings(max_examples=15, deadline=None)
@given(st.permutations(range(3)), st.integers(1, 3))
def test_any_layer_map_puts_each_text_layer_where_asked(order, count):
    text = bert(layers=3, seed=11)
    model = UniterForVisualQuestionAnswering(layers=3, h=H, i=2 * H)
    layer_map = {t: v for t, v in zip(range(count), order, strict=False)}
    report = adapters.init_language_stream(model, text, layers=layer_map)
    for t, v in layer_map.items():
        for name in BERT_LAYER:
            mine = model.uniter.encoder.layer[v].get_parameter(name)
            assert torch.equal(mine, text.encoder.layer[t].get_parameter(name))
    assert len(report.loaded) == 5 + 16 * count + 2
    # exact: every model tensor is loaded or left, every text tensor used or unused
    assert set(report.loaded) | set(report.left) == {n for n, _ in model.named_parameters()}
    assert not set(report.loaded) & set(report.left)
    used = {src for sources in report.loaded.values() for src in sources}
    assert used | set(report.unused) == {n for n, _ in text.named_parameters()}
    assert not used & set(report.unused)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(layers=3), vlticket.ArgumentError, "`layers`: expected 0 to 2"),
        (dict(layers={0: 5}), vlticket.ArgumentError, "5 is not one of the V"),
        (dict(layers={0: 1, 1: 1}), vlticket.ArgumentError, r"\[1\] get more than one"),
        (dict(layers={True: 0}), vlticket.ArgumentError, "text model's layers"),
        (dict(layers="all"), vlticket.ArgumentError, "`layers`"),
        (dict(exclude=[r"nothing\.here"]), vlticket.ArgumentError, "matches no parameter"),
        (dict(exclude=r".*"), vlticket.ArgumentError, "found a str"),
        (dict(exclude=["("]), vlticket.ArgumentError, "not a valid regex"),
        (dict(adapter="clip"), vlticket.ArgumentError, "`adapter`: adapter 'clip' does not say"),
    ],
)
def test_bad_arguments_raise_and_change_nothing(kwargs, error, match):
    model = UniterForVisualQuestionAnswering(layers=2, h=H, i=2 * H)
    before = snapshot(model)
    with pytest.raises(error, match=match):
        adapters.init_language_stream(model, bert(layers=2), **kwargs)
    assert unchanged(model, before)


def test_bad_text_models_raise_and_change_nothing():
    model = UniterForVisualQuestionAnswering(layers=2, h=H, i=2 * H)
    before = snapshot(model)
    with pytest.raises(vlticket.ShapeMismatchError, match="another width") as err:
        adapters.init_language_stream(model, bert(hidden=32))
    assert "39 tensors do not fit" in str(err.value)
    with pytest.raises(vlticket.NameMismatchError, match="no tensor has a place"):
        adapters.init_language_stream(model, {"fc.weight": torch.ones(2, 2)})
    with pytest.raises(vlticket.ArgumentError, match="`text_model`"):
        adapters.init_language_stream(model, "bert-base-uncased")
    with pytest.raises(vlticket.ArgumentError, match="expected str names and tensors"):
        adapters.init_language_stream(model, {"embeddings.word_embeddings.weight": [1.0]})
    half = bert(layers=2, positions=40).state_dict()
    del half["encoder.layer.1.attention.self.key.bias"]  # a fused qkv needs it; UNITER not
    sd = bert(layers=2).state_dict()
    twice = {**sd, **{f"bert.{n}": t for n, t in sd.items()}}
    with pytest.raises(vlticket.NameMismatchError, match="give one text model"):
        adapters.init_language_stream(model, twice)
    vilt_original = ViLTransformerSS(layers=2, h=H, i=2 * H)
    fused_before = snapshot(vilt_original)
    with pytest.raises(vlticket.NameMismatchError, match="lacks"):
        adapters.init_language_stream(vilt_original, half)
    assert unchanged(model, before) and unchanged(vilt_original, fused_before)
    with pytest.raises(adapters.UnknownModelError):
        adapters.init_language_stream(torch.nn.Linear(2, 2), bert())
    half = bert(layers=2).state_dict()
    del half["encoder.layer.1.attention.self.key.bias"]
    report = adapters.init_language_stream(model, half)
    assert report.left["uniter.encoder.layer.1.attention.self.key.bias"] == (
        "the text model has no counterpart tensor"
    )


def test_the_report_prints_grouped_by_reason():
    report = adapters.init_language_stream(
        UniterForVisualQuestionAnswering(layers=3, h=H, i=2 * H),
        bert(layers=2, cls=transformers.BertForMaskedLM),
    )
    lines = str(report).splitlines()
    assert lines[0] == (
        "loaded 37 tensors into 'uniter': text layers 0-1 onto the same language layers, "
        "embeddings; 35 left as they were, 5 unused"
    )
    assert lines[1] == "left in the V+L model:"
    assert "  16  language layer 2 got no text layer (the text model has 2 layers): " in str(report)
    assert (
        "   2  the text model has no pooler: uniter.pooler.dense.weight, uniter.pooler.dense.bias"
        in lines
    )
    assert lines[-2] == "unused in the text model:"
    assert lines[-1].startswith(
        "  5  not part of a BERT-family encoder (a task head or another model's tensor): "
        "cls.predictions.bias, cls.predictions.transform.dense.weight, ..."
    )


def test_half_precision_text_weights_are_cast_and_buffers_are_not_weights():
    text = bert(layers=1).to(torch.bfloat16)
    sd = {**text.state_dict(), "embeddings.position_ids": torch.arange(512)[None]}
    model = UniterForVisualQuestionAnswering(layers=1, h=H, i=2 * H)
    report = adapters.init_language_stream(model, sd)
    assert report.notes == ["cast from torch.bfloat16 to torch.float32"]
    assert model.uniter.encoder.layer[0].output.dense.weight.dtype == torch.float32
    assert torch.equal(
        model.uniter.encoder.layer[0].output.dense.weight,
        sd["encoder.layer.0.output.dense.weight"].float(),
    )
    assert report.unused == {
        "embeddings.position_ids": "not a floating-point weight (a buffer such as position_ids)"
    }


def test_a_model_without_a_text_map_is_refused_by_name():
    clip = transformers.CLIPModel(
        transformers.CLIPConfig(
            text_config=dict(
                hidden_size=H, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
            ),
            vision_config=dict(
                hidden_size=H,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=32,
                image_size=32,
                patch_size=16,
            ),
        )
    )
    with pytest.raises(vlticket.ArgumentError, match=r"`vl_model`: adapter 'clip'.*'uniter'"):
        adapters.init_language_stream(clip, bert())
