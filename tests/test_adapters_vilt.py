"""ViLT adapters: transformers' Vilt* heads, the original fused-qkv form, and conversions."""

import pytest
import torch
from original_models import ViLTransformerSS
from transformers import (
    ViltConfig,
    ViltForImageAndTextRetrieval,
    ViltForImagesAndTextClassification,
    ViltForMaskedLM,
    ViltForQuestionAnswering,
    ViltModel,
)

import vlticket
from vlticket import adapters
from vlticket.adapters import vilt

torch.set_num_threads(1)
H, FF, L = 16, 32, 2
HF, ORIGINAL = adapters.get("vilt"), adapters.get("vilt-original")


def build(cls, seed=0, **kw):
    torch.manual_seed(seed)
    base = dict(
        vocab_size=50,
        hidden_size=H,
        num_hidden_layers=L,
        num_attention_heads=2,
        intermediate_size=FF,
        image_size=32,
        patch_size=16,
        max_image_length=4,
        num_labels=3,
        num_images=2,
        max_position_embeddings=40,
    )
    return cls(ViltConfig(**{**base, **kw}))


def original(seed=0, **kw):
    torch.manual_seed(seed)
    return ViLTransformerSS(layers=L, h=H, i=FF, **kw)


HEADS = [
    ViltModel,
    ViltForQuestionAnswering,
    ViltForImageAndTextRetrieval,
    ViltForImagesAndTextClassification,
    ViltForMaskedLM,
]


@pytest.mark.parametrize("cls", HEADS)
def test_transformers_prunable_set(cls):
    model = build(cls)
    assert adapters.adapter_for(model) is HF
    params = HF.prunable(model)
    assert HF.groups(list(params), by="stream") == {"cross": list(params)}
    layers = HF.groups(list(params), by="layer")
    assert list(layers) == [f"cross.layer.{n}" for n in range(L)]
    for names in layers.values():
        assert len(names) == 6
        assert sum(params[n].numel() for n in names) == 4 * H * H + 2 * H * FF


@pytest.mark.parametrize("heads", [("vqa",), ("nlvr2", "itm")])
def test_original_prunable_set_has_fused_qkv(heads):
    model = original(heads=heads)
    assert adapters.adapter_for(model) is ORIGINAL
    params = ORIGINAL.prunable(model)
    assert len(params) == 4 * L
    assert sum(p.numel() for p in params.values()) == L * (4 * H * H + 2 * H * FF)
    assert params["encoder.layer.1.attention.attention.qkv.weight"] is (
        model.transformer.blocks[1].attn.qkv.weight
    )
    fc1 = model.transformer.blocks[0].mlp.fc1.weight
    assert params["encoder.layer.0.intermediate.dense.weight"] is fc1


def test_options_match_across_forms():
    opts = dict(embeddings=True, pooler=True, visual_projection=True)
    hf = HF.with_options(**opts).prunable(build(ViltForQuestionAnswering))
    orig = ORIGINAL.with_options(**opts).prunable(original())
    extra = {
        "embeddings.text_embeddings.word_embeddings.weight",
        "embeddings.text_embeddings.position_embeddings.weight",
        "embeddings.text_embeddings.token_type_embeddings.weight",
        "embeddings.token_type_embeddings.weight",
        "embeddings.cls_token",
        "embeddings.position_embeddings",
        "embeddings.patch_embeddings.projection.weight",
        "pooler.dense.weight",
    }
    assert set(hf) - set(HF.prunable(build(ViltModel))) == extra
    assert set(orig) - set(ORIGINAL.prunable(original())) == extra
    assert all(hf[n].shape == orig[n].shape for n in extra)


def test_qkv_split_and_fuse_are_inverse_and_select_the_same_weights():
    hf, orig = build(ViltForQuestionAnswering), original()
    theta = vlticket.Checkpoint.capture(hf, adapter=HF)
    vilt.to_original(theta).restore(orig, adapter=ORIGINAL)
    qkv = orig.transformer.blocks[0].attn.qkv.weight
    attn = hf.vilt.encoder.layer[0].attention.attention
    assert torch.equal(qkv[H : 2 * H], attn.key.weight)
    mask_orig = vlticket.prune_magnitude(orig, sparsity=0.6, adapter=ORIGINAL)
    mask_hf = vlticket.prune_magnitude(hf, sparsity=0.6, adapter=HF)
    assert vilt.to_transformers(mask_orig) == mask_hf
    assert vilt.to_original(mask_hf) == mask_orig
    assert vilt.to_original(vilt.to_transformers(mask_orig)) == mask_orig
    vilt.to_transformers(mask_orig).apply(hf, adapter=HF)
    mask_orig.apply(orig, adapter=ORIGINAL)
    fused = torch.cat([attn.query.weight, attn.key.weight, attn.value.weight])
    assert torch.equal(fused, qkv)
    assert vilt.to_transformers(vlticket.Checkpoint.capture(orig, adapter=ORIGINAL)).keys() == (
        theta.keys()
    )


@pytest.mark.parametrize("dst_cls", [ViltModel, ViltForImageAndTextRetrieval, ViltForMaskedLM])
def test_vqa_ticket_applies_to_other_heads(dst_cls):
    vqa, other = build(ViltForQuestionAnswering, 0), build(dst_cls, 1)
    vlticket.Checkpoint.capture(vqa, adapter=HF).restore(other, adapter=HF)
    mask = vlticket.prune_magnitude(vqa, sparsity=0.8, adapter=HF)
    assert vlticket.prune_magnitude(other, sparsity=0.8, adapter=HF) == mask
    mask.apply(other, adapter=HF)
    assert all(torch.equal(p != 0, mask[n]) for n, p in HF.prunable(other).items())


def test_original_vqa_ticket_applies_to_original_nlvr2_model():
    mask = vlticket.prune_magnitude(original(heads=("vqa",)), sparsity=0.5, adapter=ORIGINAL)
    nlvr2 = original(1, heads=("nlvr2",))
    mask.apply(nlvr2, adapter=ORIGINAL)
    assert torch.equal(
        nlvr2.transformer.blocks[1].mlp.fc2.weight != 0, mask["encoder.layer.1.output.dense.weight"]
    )


def test_groups_of_fused_masks_use_the_same_table():
    mask = vlticket.Mask.ones(original(), adapter=ORIGINAL)
    assert HF.groups(list(mask), by="component") == ORIGINAL.groups(list(mask), by="component")
    assert "other" not in HF.groups(list(mask))


def test_wrong_form_and_partial_qkv_are_refused():
    hf_mask = vlticket.Mask.ones(build(ViltModel), adapter=HF)
    orig = original()
    before = {n: t.clone() for n, t in orig.state_dict().items()}
    with pytest.raises(vlticket.NameMismatchError, match="missing from the model: .*key"):
        hf_mask.apply(orig, adapter=ORIGINAL)
    with pytest.raises(adapters.UnknownModelError, match="does not look like 'vilt'"):
        hf_mask.apply(orig, adapter=HF)
    assert all(torch.equal(before[n], t) for n, t in orig.state_dict().items())
    del hf_mask["encoder.layer.0.attention.attention.value.weight"]
    with pytest.raises(vlticket.NameMismatchError, match=r"found only \['key', 'query'\]"):
        vilt.to_original(hf_mask)
    with pytest.raises(vlticket.ShapeMismatchError, match="fused"):
        vilt.to_transformers({"encoder.layer.0.attention.attention.qkv.weight": torch.ones(4, 2)})


def test_whole_state_dicts_convert_both_ways_with_heads_biases_and_norms():
    hf = build(ViltForQuestionAnswering)
    orig = original(heads=("vqa",))
    orig.load_state_dict(vilt.state_dict_to_original(hf.state_dict()), strict=True)
    qkv = orig.transformer.blocks[1].attn.qkv
    attn = hf.vilt.encoder.layer[1].attention.attention
    assert torch.equal(qkv.bias[2 * H :], attn.value.bias)
    assert torch.equal(orig.transformer.norm.weight, hf.vilt.layernorm.weight)
    assert torch.equal(orig.vqa_classifier[3].weight, hf.classifier[3].weight)
    back = build(ViltForQuestionAnswering, 5)
    back.load_state_dict(vilt.state_dict_to_transformers(orig.state_dict()), strict=True)
    assert all(torch.equal(t, hf.state_dict()[n]) for n, t in back.state_dict().items())


def test_original_heads_leave_the_prunable_set_alone_and_a_ticket_moves_between_them():
    everything = original(1, heads=("vqa", "nlvr2", "itm", "mlm", "mpp"))
    names = {n for n, _ in everything.named_parameters()}
    assert {"mlm_score.bias", "mlm_score.decoder.weight", "mpp_score.decoder.weight"} <= names
    assert everything.token_type_embeddings.weight.shape == (3, H)  # NLVR2's second image
    assert set(ORIGINAL.prunable(everything)) == set(ORIGINAL.prunable(original()))
    mask = vlticket.prune_magnitude(original(heads=("vqa",)), sparsity=0.5, adapter=ORIGINAL)
    mask.apply(everything, adapter=ORIGINAL)
    qkv = everything.transformer.blocks[0].attn.qkv.weight
    assert torch.equal(qkv != 0, mask["encoder.layer.0.attention.attention.qkv.weight"])


def test_groups_take_a_model_a_mask_or_names():
    model = original()
    mask = vlticket.Mask.ones(model, adapter=ORIGINAL)
    by_model = ORIGINAL.groups(model, by="layer")
    assert by_model == ORIGINAL.groups(mask, by="layer") == ORIGINAL.groups(list(mask), by="layer")
    assert sorted(by_model) == ["cross.layer.0", "cross.layer.1"]
    with pytest.raises(vlticket.ArgumentError, match="`names`"):
        ORIGINAL.groups(3)
    patterns = adapters.PatternAdapter(include=[r"transformer\.blocks\.\d+\..*\.weight"])
    assert patterns.groups(model, by="layer") == patterns.groups(
        patterns.prunable(model), by="layer"
    )
