"""LXMERT adapter: transformers' Lxmert* heads and the original LXRT code share canonical names."""

import pytest
import torch
from original_models import LXRTPretraining, VQAModel
from transformers import LxmertConfig, LxmertForPreTraining, LxmertForQuestionAnswering, LxmertModel

import vlticket
from vlticket import adapters
from vlticket.adapters import lxmert

torch.set_num_threads(1)
H, FF, L, X, R = 16, 32, 2, 1, 1
SIZES = dict(l_layers=L, x_layers=X, r_layers=R, h=H, i=FF, feat=8, pos=4, vocab=50)


def config(**kw):
    base = dict(
        vocab_size=50,
        hidden_size=H,
        num_attention_heads=2,
        intermediate_size=FF,
        l_layers=L,
        x_layers=X,
        r_layers=R,
        visual_feat_dim=8,
        visual_pos_dim=4,
        num_qa_labels=5,
        num_object_labels=6,
        num_attr_labels=7,
    )
    return LxmertConfig(**{**base, **kw})


def build(cls, seed=0, **kw):
    torch.manual_seed(seed)
    return cls(config(**kw))


ADAPTER = adapters.get("lxmert")
HEADS = [LxmertModel, LxmertForQuestionAnswering, LxmertForPreTraining]


@pytest.mark.parametrize("cls", HEADS)
def test_prunable_set_is_the_studys(cls):
    model = build(cls)
    assert adapters.adapter_for(model).name == "lxmert"
    params = ADAPTER.prunable(model)
    stream = ADAPTER.groups(list(params), by="stream")
    bert_layer = 4 * H * H + 2 * H * FF  # q, k, v, attention output; FFN in and out
    expected = {
        "language": (6 * L, L * bert_layer),
        "vision": (6 * R, R * bert_layer),
        "cross": (16 * X, X * (12 * H * H + 4 * H * FF)),  # cross-att + 2 self-att + 2 FFN
    }
    found = {g: (len(n), sum(params[x].numel() for x in n)) for g, n in stream.items()}
    assert found == expected
    for name, p in params.items():
        assert p.dim() == 2 and name.endswith(".weight")
        assert not any(s in name for s in ("embeddings", "pooler", "visn_fc", "LayerNorm"))
    # the model's own leaf parameters, not copies
    own = {id(p) for p in model.parameters()}
    assert all(id(p) in own and p.is_leaf for p in params.values())


def test_options_add_embeddings_pooler_and_visual_projection():
    model = build(LxmertModel)
    base = ADAPTER.prunable(model)
    full = adapters.get("lxmert", embeddings=True, pooler=True, visual_projection=True)
    extra = set(full.prunable(model)) - set(base)
    assert extra == {
        "embeddings.word_embeddings.weight",
        "embeddings.position_embeddings.weight",
        "embeddings.token_type_embeddings.weight",
        "pooler.dense.weight",
        "encoder.visn_fc.visn_fc.weight",
        "encoder.visn_fc.box_fc.weight",
    }
    assert full.groups(sorted(extra), by="component") == {
        "embeddings": sorted(extra)[:3],
        "projection": ["encoder.visn_fc.box_fc.weight", "encoder.visn_fc.visn_fc.weight"],
        "pooler": ["pooler.dense.weight"],
    }


def _copy(src, dst, adapter):
    vlticket.Checkpoint.capture(src, adapter=adapter).restore(dst, adapter=adapter)


@pytest.mark.parametrize("dst_cls", [LxmertModel, LxmertForPreTraining])
def test_vqa_ticket_applies_to_other_heads_and_selects_the_same_weights(dst_cls):
    vqa, other = build(LxmertForQuestionAnswering, 0), build(dst_cls, 1)
    _copy(vqa, other, ADAPTER)
    mask = vlticket.prune_magnitude(vqa, sparsity=0.7, adapter=ADAPTER)
    assert vlticket.prune_magnitude(other, sparsity=0.7, adapter=ADAPTER) == mask
    mask.apply(other, adapter=ADAPTER)
    for name, p in ADAPTER.prunable(other).items():
        assert torch.equal(p != 0, mask[name])


def test_original_and_transformers_forms_convert_and_share_masks():
    hf = build(LxmertForQuestionAnswering)
    original = VQAModel(answers=5, **SIZES)
    original.load_state_dict(lxmert.state_dict_to_original(hf.state_dict()), strict=True)
    assert adapters.adapter_for(original).name == "lxmert"
    names = ADAPTER.names(original)
    assert names["encoder.x_layers.0.visual_attention.att.query.weight"] == (
        "lxrt_encoder.model.bert.encoder.x_layers.0.visual_attention.att.query.weight"
    )
    mask = vlticket.prune_magnitude(original, sparsity=0.5, adapter=ADAPTER)
    assert vlticket.prune_magnitude(hf, sparsity=0.5, adapter=ADAPTER) == mask
    # and back: the transformers names load the original weights, heads included
    back = build(LxmertForQuestionAnswering, 3)
    back.load_state_dict(lxmert.state_dict_to_transformers(original.state_dict()), strict=True)
    assert torch.equal(back.answer_head.logit_fc[3].weight, original.logit_fc[3].weight)


def test_pretraining_checkpoints_under_bert_prefix():
    hf = build(LxmertForPreTraining)
    sd = lxmert.state_dict_to_original(hf.state_dict(), head="pretraining")
    assert all(not k.startswith("lxmert.") for k in sd)
    original = LXRTPretraining(**SIZES)
    assert set(ADAPTER.names(sd)) == set(ADAPTER.names(original)) == set(ADAPTER.names(hf))
    assert ADAPTER.names(original)["encoder.layer.0.output.dense.weight"] == (
        "bert.encoder.layer.0.output.dense.weight"
    )


def test_mask_for_a_deeper_model_is_refused_and_leaves_the_model_untouched():
    mask = vlticket.Mask.ones(build(LxmertModel, l_layers=3), adapter=ADAPTER)
    mask["encoder.layer.0.output.dense.weight"][:] = False
    model = build(LxmertForQuestionAnswering)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    with pytest.raises(vlticket.NameMismatchError, match="encoder.layer.2"):
        mask.apply(model, adapter=ADAPTER)
    wider = vlticket.Mask.ones(build(LxmertModel, intermediate_size=2 * FF), adapter=ADAPTER)
    with pytest.raises(vlticket.ShapeMismatchError, match="intermediate"):
        wider.apply(model, adapter=ADAPTER)
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())


def test_two_backbones_in_one_model_are_refused():
    both = torch.nn.Module()
    both.add_module("lxmert", build(LxmertModel))
    both.add_module("bert", build(LxmertModel))
    with pytest.raises(vlticket.NameMismatchError, match="both map to canonical name"):
        ADAPTER.prunable(both)


def test_attach_with_adapter_keeps_pruned_weights_at_zero():
    model = build(LxmertForQuestionAnswering)
    mask = vlticket.prune_random(model, sparsity=0.5, seed=0, adapter=ADAPTER)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    with mask.attach(model, opt, adapter=ADAPTER):
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        opt.step()
    for name, p in ADAPTER.prunable(model).items():
        assert not p[~mask[name]].any()


def test_multi_gpu_data_parallel_names_are_recognised_and_converted():
    # The original --multiGPU flag wraps lxrt_encoder.model in nn.DataParallel.
    model = VQAModel(answers=5, multi_gpu=True, **SIZES)
    sd = model.state_dict()
    assert "lxrt_encoder.model.module.bert.encoder.layer.0.output.dense.weight" in sd
    assert adapters.adapter_for(model) is ADAPTER and adapters.adapter_for(sd) is ADAPTER
    names = ADAPTER.names(sd)
    assert names["encoder.layer.0.output.dense.weight"] == (
        "lxrt_encoder.model.module.bert.encoder.layer.0.output.dense.weight"
    )
    assert set(names) == set(ADAPTER.names(VQAModel(answers=5, **SIZES)))
    hf = build(LxmertForQuestionAnswering, 3)
    hf.load_state_dict(lxmert.state_dict_to_transformers(sd), strict=True)
    assert torch.equal(
        hf.lxmert.encoder.layer[0].output.dense.weight,
        model.lxrt_encoder.model.module.bert.encoder.layer[0].output.dense.weight,
    )
    mask = vlticket.prune_magnitude(model, sparsity=0.5, adapter=ADAPTER)
    assert vlticket.prune_magnitude(hf, sparsity=0.5, adapter=ADAPTER) == mask


def test_pretraining_heads_leave_the_prunable_set_alone_and_a_ticket_moves_to_vqa():
    pretraining = LXRTPretraining(**SIZES)
    sd = pretraining.state_dict()
    for head in (
        "cls.predictions.transform.dense.weight",
        "obj_predict_head.decoder_dict.attr.weight",
    ):
        assert head in sd
    assert "answer_head.logit_fc.3.weight" in sd
    params = ADAPTER.prunable(pretraining)
    assert set(params) == set(ADAPTER.prunable(VQAModel(**SIZES)))
    assert set(params) == set(ADAPTER.prunable(build(LxmertForPreTraining)))
    mask = vlticket.prune_magnitude(pretraining, sparsity=0.6, adapter=ADAPTER)
    vqa = VQAModel(multi_gpu=True, **SIZES)
    vlticket.Checkpoint.capture(pretraining, adapter=ADAPTER).restore(vqa, mask, adapter=ADAPTER)
    q = vqa.lxrt_encoder.model.module.bert.encoder.x_layers[0].visual_attention.att.query.weight
    assert torch.equal(q != 0, mask["encoder.x_layers.0.visual_attention.att.query.weight"])
