"""θ0' from BERT: the original ViLT's fused q/k/v, and smaller or distilled BERTs (partial)."""

import logging

import pytest
import torch
from original_models import UniterForVisualQuestionAnswering, ViLTransformerSS
from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel

import vlticket
from vlticket import adapters
from vlticket.adapters import vilt

torch.set_num_threads(1)
H = 16
UNITER = adapters.get("uniter")


def bert(layers=2, positions=40):
    torch.manual_seed(7)
    config = BertConfig(
        vocab_size=50,
        hidden_size=H,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * H,
        max_position_embeddings=positions,
    )
    return BertModel(config).state_dict()


def test_bert_onto_original_vilt_fuses_query_key_value():
    model = ViLTransformerSS(layers=2, h=H, i=2 * H)
    sd = bert(layers=2)
    theta = adapters.bert_to_vl(sd, model)
    qkv = "encoder.layer.1.attention.attention.qkv.weight"
    expected = torch.cat(
        [sd[f"encoder.layer.1.attention.self.{p}.weight"] for p in ("query", "key", "value")]
    )
    assert torch.equal(theta[qkv], expected)
    assert set(theta) == set(adapters.get("vilt-original").prunable(model))
    # the same weights as the transformers form, fused by the library's own converter
    assert vilt.to_original(dict(adapters.bert_to_vl(sd, "vilt"))).keys() == theta.keys()
    assert all(
        torch.equal(t, theta[n])
        for n, t in vilt.to_original(dict(adapters.bert_to_vl(sd, "vilt"))).items()
    )
    vlticket.Checkpoint(theta).restore(model, adapter=adapters.get("vilt-original"))
    assert torch.equal(model.transformer.blocks[1].attn.qkv.weight, expected)
    fc2 = model.transformer.blocks[0].mlp.fc2.weight
    assert torch.equal(fc2, sd["encoder.layer.0.output.dense.weight"])


def test_a_fused_target_needs_all_three_of_query_key_value():
    sd = bert(layers=1)
    del sd["encoder.layer.0.attention.self.key.weight"]
    with pytest.raises(vlticket.NameMismatchError, match=r"lacks \['attention.self.key.weight'\]"):
        adapters.bert_to_vl(sd, "vilt-original")


def test_a_smaller_bert_maps_what_exists_and_says_what_it_left_out(caplog):
    model = UniterForVisualQuestionAnswering(layers=4, h=H, i=2 * H)
    sd = bert(layers=2)
    with caplog.at_level(logging.WARNING, logger="vlticket"):
        theta = adapters.bert_to_vl(sd, model)
    assert (theta.layers, theta.unused, theta.left_out) == ([0, 1], [], [2, 3])
    assert theta.summary() == (
        "mapped 2 BERT layers (0-1); left out layers 2-3 of the model (own weights kept)"
    )
    assert "left out layers 2-3 of the model" in caplog.text
    own = {n: p.detach().clone() for n, p in UNITER.prunable(model).items()}
    mask = vlticket.prune_random(model, sparsity=0.5, seed=0, adapter=UNITER)
    not_restored = vlticket.Checkpoint(theta).restore(model, mask, adapter=UNITER, partial=True)
    assert not_restored == [
        n for n in own if n.startswith(("encoder.layer.2.", "encoder.layer.3."))
    ]
    after = UNITER.prunable(model)
    for name in own:
        source = theta[name] if name in theta else own[name]
        assert torch.equal(after[name], source * mask[name]), name


def test_partial_restore_skips_layers_the_model_lacks_and_checks_shapes_first():
    model = UniterForVisualQuestionAnswering(layers=2, h=H, i=2 * H)
    theta = vlticket.Checkpoint(adapters.bert_to_vl(bert(layers=4), "uniter"))  # no model: all 4
    with pytest.raises(vlticket.NameMismatchError, match="encoder.layer.2"):
        theta.restore(model, adapter=UNITER)
    assert theta.restore(model, adapter=UNITER, partial=True) == []
    assert torch.equal(
        model.uniter.encoder.layer[1].output.dense.weight,
        theta["encoder.layer.1.output.dense.weight"],
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    wrong = dict(theta)
    wrong["encoder.layer.1.intermediate.dense.weight"] = torch.zeros(3, 3)
    with pytest.raises(vlticket.ShapeMismatchError, match="encoder.layer.1.intermediate"):
        vlticket.Checkpoint(wrong).restore(model, adapter=UNITER, partial=True)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    with pytest.raises(vlticket.ArgumentError, match="strict"):
        theta.restore(model, adapter=UNITER, partial=True, strict=True)


def test_a_bert_with_more_layers_than_lxmert_reports_the_unused_ones():
    from original_models import VQAModel

    theta = adapters.bert_to_vl(bert(layers=3), VQAModel())  # 2 language layers
    assert (theta.layers, theta.unused, theta.left_out) == ([0, 1], [2], [])
    assert "BERT layers 2 have no place" in theta.summary()


def test_a_distilled_bert_maps_onto_the_same_places():
    torch.manual_seed(3)
    distil = DistilBertModel(
        DistilBertConfig(
            vocab_size=50,
            dim=H,
            n_layers=2,
            n_heads=2,
            hidden_dim=2 * H,
            max_position_embeddings=512,
        )
    )
    sd = {f"distilbert.{n}": t for n, t in distil.state_dict().items()}
    model = UniterForVisualQuestionAnswering(layers=3, h=H, i=2 * H)
    theta = adapters.bert_to_vl(sd, model, embeddings=True)
    assert theta.left_out == [2]
    q = distil.transformer.layer[1].attention.q_lin.weight
    assert torch.equal(theta["encoder.layer.1.attention.self.query.weight"], q)
    ffn_out = distil.transformer.layer[0].ffn.lin2.weight
    assert torch.equal(theta["encoder.layer.0.output.dense.weight"], ffn_out)
    assert "embeddings.word_embeddings.weight" in theta
    assert len(theta) == 6 * 2 + 2  # DistilBERT has no token-type embeddings


@pytest.mark.parametrize("family", ["uniter", "lxmert", "vilt", "vilt-original", "visualbert"])
def test_with_embeddings_the_result_names_the_adapter_that_restores_it(family):
    theta = adapters.bert_to_vl(bert(layers=1), family, embeddings=True)
    assert theta.adapter.name == family and theta.adapter.options == {"embeddings"}
    assert adapters.bert_to_vl(bert(layers=1), family).adapter is adapters.get(family)


def test_bert_embeddings_restore_and_serve_the_foreign_weights_baseline():
    model = UniterForVisualQuestionAnswering(layers=2, h=H, i=2 * H)
    sd = bert(layers=2, positions=512)
    theta = adapters.bert_to_vl(sd, model, embeddings=True)
    assert theta.adapter == adapters.get("uniter", embeddings=True)
    ticket = vlticket.prune_magnitude(model, sparsity=0.5, adapter=UNITER)  # the default adapter
    with pytest.raises(vlticket.NameMismatchError, match="embeddings"):  # without embeddings
        vlticket.Checkpoint(theta).restore(model, ticket, adapter=UNITER)
    vlticket.Checkpoint(theta).restore(model, ticket, adapter=theta.adapter)
    words = model.uniter.embeddings.word_embeddings.weight
    assert torch.equal(words, sd["embeddings.word_embeddings.weight"])
    fresh = UniterForVisualQuestionAnswering(layers=2, h=H, i=2 * H)
    theta0 = vlticket.Checkpoint.capture(fresh)  # the whole model, by its own names
    handle = vlticket.baselines.foreign_weights(
        fresh, ticket, theta0, vlticket.Checkpoint(theta), adapter=theta.adapter
    )
    handle.remove()
    q = "encoder.layer.1.attention.self.query.weight"
    assert torch.equal(fresh.uniter.encoder.layer[1].attention.self.query.weight, sd[q] * ticket[q])
    assert torch.equal(
        fresh.uniter.embeddings.position_embeddings.weight,
        sd["embeddings.position_embeddings.weight"],
    )
