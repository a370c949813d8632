"""UNITER adapter (original code base): one ticket for the VQA, retrieval, NLVR2 and PT models."""

import pytest
import torch
from original_models import (
    UniterForImageTextRetrieval,
    UniterForNlvr2Paired,
    UniterForPretraining,
    UniterForVisualQuestionAnswering,
    UniterModel,
)

import vlticket
from vlticket import adapters

torch.set_num_threads(1)
H, FF, L = 16, 32, 3
ADAPTER = adapters.get("uniter")
HEADS = [
    UniterForVisualQuestionAnswering,
    UniterForImageTextRetrieval,
    UniterForNlvr2Paired,
    UniterForPretraining,
]


def build(cls, seed=0):
    torch.manual_seed(seed)
    return cls(layers=L, h=H, i=FF)


@pytest.mark.parametrize("cls", HEADS)
def test_prunable_set_is_every_layer_weight_matrix(cls):
    model = build(cls)
    assert adapters.adapter_for(model) is ADAPTER
    params = ADAPTER.prunable(model)
    assert len(params) == 6 * L
    assert sum(p.numel() for p in params.values()) == L * (4 * H * H + 2 * H * FF)
    assert params["encoder.layer.2.attention.self.query.weight"] is (
        model.uniter.encoder.layer[2].attention.self.query.weight
    )
    assert list(ADAPTER.groups(params, by="stream")) == ["cross"]
    components = ADAPTER.groups(params, by="component")
    assert {g: len(n) for g, n in components.items()} == {"attention": 4 * L, "ffn": 2 * L}


def test_options():
    model = build(UniterForVisualQuestionAnswering)
    full = adapters.get("uniter", embeddings=True, pooler=True, visual_projection=True)
    extra = set(full.prunable(model)) - set(ADAPTER.prunable(model))
    assert extra == {
        "embeddings.word_embeddings.weight",
        "embeddings.position_embeddings.weight",
        "embeddings.token_type_embeddings.weight",
        "img_embeddings.mask_embedding.weight",
        "img_embeddings.img_linear.weight",
        "img_embeddings.pos_linear.weight",
        "pooler.dense.weight",
    }
    streams = full.groups(sorted(extra), by="stream")
    assert streams["vision"] == sorted(n for n in extra if n.startswith("img_"))


@pytest.mark.parametrize("dst_cls", [UniterModel, *HEADS[1:]])
def test_vqa_ticket_applies_to_retrieval_nlvr2_and_pretraining(dst_cls):
    vqa = build(UniterForVisualQuestionAnswering, 0)
    other = dst_cls(layers=L, h=H, i=FF)
    vlticket.Checkpoint.capture(vqa, adapter=ADAPTER).restore(other, adapter=ADAPTER)
    mask = vlticket.prune_magnitude(vqa, sparsity=0.6, adapter=ADAPTER)
    assert vlticket.prune_magnitude(other, sparsity=0.6, adapter=ADAPTER) == mask
    mask.apply(other, adapter=ADAPTER)
    assert all(torch.equal(p != 0, mask[n]) for n, p in ADAPTER.prunable(other).items())


def test_heads_are_never_masked_and_state_dict_keys_do_not_change():
    model = build(UniterForNlvr2Paired)
    keys = list(model.state_dict())
    head = model.nlvr2_output.weight.clone()
    mask = vlticket.prune_magnitude(model, sparsity=0.9, adapter=ADAPTER)
    mask.apply(model, adapter=ADAPTER)
    assert torch.equal(model.nlvr2_output.weight, head)
    assert list(model.state_dict()) == keys
    assert model.uniter.encoder.layer[0].output.LayerNorm.weight.all()


def test_ticket_from_a_deeper_uniter_is_refused():
    mask = vlticket.Mask.ones(UniterModel(layers=L + 1, h=H, i=FF), adapter=ADAPTER)
    with pytest.raises(vlticket.NameMismatchError, match=f"encoder.layer.{L}"):
        mask.apply(build(UniterForVisualQuestionAnswering), adapter=ADAPTER)


def test_heads_leave_the_prunable_set_alone():
    sets = [set(ADAPTER.prunable(build(cls))) for cls in HEADS]
    assert all(s == sets[0] for s in sets)
    pretraining = build(UniterForPretraining)
    names = {n for n, _ in pretraining.named_parameters()}
    assert {"itm_output.weight", "cls.predictions.bias", "region_classifier.net.3.weight"} <= names
    assert build(UniterForNlvr2Paired).nlvr2_output.weight.shape == (2, 2 * H)


def test_nlvr2_third_token_type_blocks_only_an_embeddings_ticket():
    vqa, nlvr2 = build(UniterForVisualQuestionAnswering, 0), build(UniterForNlvr2Paired, 1)
    assert nlvr2.uniter.embeddings.token_type_embeddings.weight.shape == (3, H)
    mask = vlticket.prune_magnitude(vqa, sparsity=0.5, adapter=ADAPTER)
    mask.apply(nlvr2, adapter=ADAPTER)  # the layers move between the heads
    full = adapters.get("uniter", embeddings=True)
    with pytest.raises(vlticket.ShapeMismatchError, match="token_type_embeddings"):
        vlticket.prune_magnitude(vqa, sparsity=0.5, adapter=full).apply(nlvr2, adapter=full)
