"""VisualBERT, CLIP, SigLIP and BLIP adapters: detection, the prunable set, head variants.

Tiny configs with random weights; nothing is downloaded.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import vlticket  # noqa: E402
from vlticket import adapters  # noqa: E402

TEXT = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100
)
VISION = dict(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
)


def visualbert(cls="VisualBertForQuestionAnswering"):
    config = transformers.VisualBertConfig(**TEXT, visual_embedding_dim=16, num_labels=5)
    return getattr(transformers, cls)(config)


def clip(cls="CLIPModel"):
    if cls.startswith("CLIPVision"):
        return getattr(transformers, cls)(transformers.CLIPVisionConfig(**VISION))
    if cls.startswith("CLIPText"):
        return getattr(transformers, cls)(transformers.CLIPTextConfig(**TEXT))
    return getattr(transformers, cls)(
        transformers.CLIPConfig(text_config=TEXT, vision_config=VISION)
    )


def siglip(cls="SiglipModel"):
    if cls == "SiglipVisionModel":
        return transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**VISION))
    if cls == "SiglipTextModel":
        return transformers.SiglipTextModel(transformers.SiglipTextConfig(**TEXT))
    return getattr(transformers, cls)(
        transformers.SiglipConfig(text_config=TEXT, vision_config=VISION)
    )


def blip(cls="BlipModel"):
    if cls == "BlipVisionModel":
        return transformers.BlipVisionModel(transformers.BlipVisionConfig(**VISION))
    config = transformers.BlipConfig(text_config=TEXT, vision_config=VISION, projection_dim=16)
    return getattr(transformers, cls)(config)


# (model, family, prunable tensors = 6 or 4 per layer, per stream)
CASES = [
    (lambda: visualbert(), "visualbert", {"cross": 2 * 6}),
    (lambda: visualbert("VisualBertForVisualReasoning"), "visualbert", {"cross": 2 * 6}),
    (lambda: visualbert("VisualBertModel"), "visualbert", {"cross": 2 * 6}),
    (lambda: clip(), "clip", {"language": 2 * 6, "vision": 3 * 6}),
    (lambda: clip("CLIPTextModelWithProjection"), "clip", {"language": 2 * 6}),
    (lambda: clip("CLIPVisionModelWithProjection"), "clip", {"vision": 3 * 6}),
    (lambda: clip("CLIPForImageClassification"), "clip", {"vision": 3 * 6}),
    (lambda: siglip(), "siglip", {"language": 2 * 6, "vision": 3 * 6}),
    (lambda: siglip("SiglipVisionModel"), "siglip-vision", {"vision": 3 * 6}),
    (lambda: clip("CLIPVisionModel"), "clip-vision", {"vision": 3 * 6}),
    (lambda: clip("CLIPTextModel"), "clip-text", {"language": 2 * 6}),
    (lambda: siglip("SiglipTextModel"), "siglip-text", {"language": 2 * 6}),
    (lambda: siglip("SiglipForImageClassification"), "siglip", {"vision": 3 * 6}),
    # BLIP: image layers hold 4 matrices (fused qkv, projection, fc1, fc2); text layers 6 in
    # the language stream and 4 of cross-attention (cross); the VQA model has a decoder too.
    (lambda: blip(), "blip", {"language": 2 * 6, "cross": 2 * 4, "vision": 3 * 4}),
    (
        lambda: blip("BlipForImageTextRetrieval"),
        "blip",
        {"vision": 3 * 4, "language": 2 * 6, "cross": 2 * 4},
    ),
    (
        lambda: blip("BlipForQuestionAnswering"),
        "blip",
        {"vision": 3 * 4, "language": 2 * 2 * 6, "cross": 2 * 2 * 4},
    ),
    (
        lambda: blip("BlipForConditionalGeneration"),
        "blip",
        {"vision": 3 * 4, "language": 2 * 6, "cross": 2 * 4},
    ),
    (lambda: blip("BlipVisionModel"), "blip-vision", {"vision": 3 * 4}),
]


@pytest.mark.parametrize("build, family, streams", CASES)
def test_detected_with_the_documented_prunable_set(build, family, streams):
    model = build()
    adapter = vlticket.adapter_for(model)
    assert adapter.name == family
    params = adapter.prunable(model)
    groups = adapter.groups(list(params), by="stream")
    assert {g: len(n) for g, n in groups.items()} == streams
    assert all(p.dim() == 2 for p in params.values())  # weight matrices only, no head
    assert not any("LayerNorm" in n or "layer_norm" in n or n.endswith("bias") for n in params)


@pytest.mark.parametrize(
    "source, target",
    [
        (lambda: visualbert(), lambda: visualbert("VisualBertForVisualReasoning")),
        (lambda: clip("CLIPVisionModelWithProjection"), lambda: clip("CLIPForImageClassification")),
        (lambda: siglip("SiglipVisionModel"), lambda: siglip("SiglipForImageClassification")),
        (lambda: clip("CLIPVisionModel"), lambda: clip("CLIPForImageClassification")),
        (lambda: blip(), lambda: blip("BlipForImageTextRetrieval")),
        (lambda: blip("BlipForImageTextRetrieval"), lambda: blip()),
        (lambda: blip(), lambda: blip("BlipForQuestionAnswering")),
        (lambda: blip("BlipForConditionalGeneration"), lambda: blip("BlipForQuestionAnswering")),
        (lambda: blip("BlipVisionModel"), lambda: blip("BlipForConditionalGeneration")),
    ],
)
def test_a_ticket_moves_between_head_variants(source, target):
    torch.manual_seed(0)
    a, b = source(), target()
    adapter = vlticket.adapter_for(a)
    ticket = vlticket.prune_magnitude(a, sparsity=0.6, adapter=adapter)
    theta0 = vlticket.Checkpoint.capture(a, adapter=adapter)
    theta0.restore(b, ticket, adapter=vlticket.adapter_for(b))
    moved = vlticket.adapter_for(b).prunable(b)
    for name, keep in ticket.items():
        assert torch.equal(moved[name], theta0[name] * keep)


def test_the_vision_stream_of_a_clip_ticket_applies_to_a_vision_model():
    adapter = adapters.get("clip")
    ticket = vlticket.prune_magnitude(clip(), sparsity=0.5, adapter=adapter)
    vision = adapter.groups(list(ticket), by="stream")["vision"]
    sub = vlticket.Mask({n: ticket[n] for n in vision})
    model = clip("CLIPForImageClassification")
    sub.apply(model, adapter=adapter)
    params = adapter.prunable(model)
    assert all(not params[n][~k].any() for n, k in sub.items())


def test_options_add_embeddings_projections_and_heads():
    model = siglip()
    base = adapters.get("siglip").prunable(model)
    full = adapters.get("siglip", embeddings=True, visual_projection=True, pooler=True)
    extra = sorted(set(full.prunable(model)) - set(base))
    assert "vision_model.embeddings.patch_embedding.weight" in extra
    assert "text_model.embeddings.token_embedding.weight" in extra
    assert "vision_model.head.attention.in_proj_weight" in extra
    assert "text_model.head.weight" in extra
    clip_extra = set(adapters.get("clip", pooler=True).prunable(clip())) - set(
        adapters.get("clip").prunable(clip())
    )
    assert clip_extra == {"text_projection.weight", "visual_projection.weight"}


def test_bert_weights_onto_visualbert_language_layers():
    bert = transformers.BertModel(transformers.BertConfig(**TEXT))
    model = visualbert()
    mapped = adapters.bert_to_vl(bert.state_dict(), model)
    assert len(mapped) == 2 * 6
    assert torch.equal(
        mapped["encoder.layer.1.output.dense.weight"], bert.encoder.layer[1].output.dense.weight
    )


def test_the_older_families_are_still_told_apart():
    names = {
        "vilt": transformers.ViltModel(
            transformers.ViltConfig(
                hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
            )
        ),
        "lxmert": transformers.LxmertModel(
            transformers.LxmertConfig(
                hidden_size=32,
                num_attention_heads=2,
                intermediate_size=64,
                l_layers=1,
                x_layers=1,
                r_layers=1,
            )
        ),
    }
    for family, model in names.items():
        assert vlticket.adapter_for(model).name == family


def test_visualbert_heads_and_neurons_prune_and_shrink_exactly():
    torch.manual_seed(0)
    model = visualbert("VisualBertModel").eval()
    mask = vlticket.prune_structured(model, granularity="head", amount=0.5)
    mask = vlticket.prune_structured(model, granularity="neuron", amount=0.25, mask=mask)
    mask.apply(model)
    ids = torch.randint(1, 100, (2, 5))
    visual = torch.randn(2, 3, 16)
    with torch.no_grad():
        dense = model(input_ids=ids, visual_embeds=visual).last_hidden_state
        vlticket.shrink(model, mask)
        small = model(input_ids=ids, visual_embeds=visual).last_hidden_state
    assert torch.allclose(dense, small, atol=1e-5)
    assert model.encoder.layer[0].attention.self.num_attention_heads == 1


def test_blip_names_layers_and_components():
    model = blip("BlipForQuestionAnswering")
    adapter = vlticket.adapter_for(model)
    layers = adapter.groups(model, by="layer")
    assert list(layers) == [
        *(f"vision.layer.{n}" for n in range(3)),
        "language.layer.0",
        "cross.layer.0",
        "language.layer.1",
        "cross.layer.1",
        "language.decoder.layer.0",
        "cross.decoder.layer.0",
        "language.decoder.layer.1",
        "cross.decoder.layer.1",
    ]
    assert layers["cross.decoder.layer.1"] == [
        f"text_decoder.encoder.layer.1.crossattention.{m}.weight"
        for m in ("self.query", "self.key", "self.value", "output.dense")
    ]
    components = adapter.groups(model, by="component")
    assert {c: len(n) for c, n in components.items()} == {
        "attention": 3 * 2 + 2 * 2 * 4,
        "ffn": 3 * 2 + 2 * 2 * 2,
        "cross_attention": 2 * 2 * 4,
    }
    # BlipModel's `text_model.` is the task models' `text_encoder.`
    names = adapter.names(blip())
    assert names["text_encoder.encoder.layer.0.crossattention.self.key.weight"] == (
        "text_model.encoder.layer.0.crossattention.self.key.weight"
    )
    full = adapters.get("blip", embeddings=True, pooler=True, visual_projection=True)
    extra = set(full.prunable(blip())) - set(adapter.prunable(blip()))
    assert extra == {
        "text_encoder.embeddings.word_embeddings.weight",
        "text_encoder.embeddings.position_embeddings.weight",
        "vision_model.embeddings.class_embedding",
        "vision_model.embeddings.position_embedding",
        "vision_model.embeddings.patch_embedding.weight",
        "text_encoder.pooler.dense.weight",
        "visual_projection.weight",
        "text_projection.weight",
    }
    # BLIP-2 shares the image encoder but not the rest: not taken for BLIP
    assert not adapter.matches([*names.values(), "qformer.encoder.layer.0.attention.weight"])


def test_blip_heads_and_neurons_prune_and_shrink_exactly():
    torch.manual_seed(0)
    model = blip("BlipForImageTextRetrieval").eval()
    heads = adapters.blocks_for(model, kind="head")
    assert [(s.block.name, s.block.count, s.block.size) for s in heads][2:5] == [
        ("vision_model.encoder.layers.2.self_attn", 2, 16),
        ("text_encoder.encoder.layer.0.attention", 2, 16),
        ("text_encoder.encoder.layer.0.crossattention", 2, 16),
    ]
    assert [s.block.stream for s in heads] == ["vision"] * 3 + ["language", "cross"] * 2
    assert len(adapters.blocks_for(model, kind="neuron")) == 3 + 2
    # the image encoder's attention reshapes by its hidden size: its heads are masked only
    budgets = {"vision": 0.0, "language": 0.5, "cross": 0.5}
    mask = vlticket.prune_structured(model, granularity="head", sparsity=0.5, budgets=budgets)
    mask = vlticket.prune_structured(model, granularity="neuron", amount=0.25, mask=mask)
    mask.apply(model)
    ids, pixels = torch.randint(1, 100, (2, 5)), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        dense = model(input_ids=ids, pixel_values=pixels).itm_score
        vlticket.shrink(model, mask)
        small = model(input_ids=ids, pixel_values=pixels).itm_score
    assert torch.allclose(dense, small, atol=1e-5)
    layer = model.text_encoder.encoder.layer[0]
    assert layer.attention.self.num_attention_heads == 1
    assert layer.crossattention.self.num_attention_heads == 1
    vision_heads = vlticket.prune_structured(blip(), granularity="head", sparsity=0.5)
    with pytest.raises(vlticket.ArgumentError, match="cannot run with fewer heads"):
        vlticket.shrink(blip(), vision_heads)


def test_bert_initialises_the_blip_text_encoder_but_not_its_cross_attention():
    bert = transformers.BertModel(transformers.BertConfig(**TEXT))
    model = blip("BlipForImageTextRetrieval")
    report = adapters.init_language_stream(model, bert)
    layer = model.text_encoder.encoder.layer[1]
    assert torch.equal(
        layer.attention.self.query.bias, bert.encoder.layer[1].attention.self.query.bias
    )
    assert torch.equal(layer.output.LayerNorm.weight, bert.encoder.layer[1].output.LayerNorm.weight)
    cross = "text_encoder.encoder.layer.0.crossattention.self.key.weight"
    assert report.left[cross] == "cross-attention to the image: BERT has none"
    assert report.unused == {
        "embeddings.token_type_embeddings.weight": (
            "the V+L model has no 'text_encoder.embeddings.token_type_embeddings.weight'"
        ),
        "pooler.dense.weight": "the V+L model has no 'text_encoder.pooler.dense.weight'",
        "pooler.dense.bias": "the V+L model has no 'text_encoder.pooler.dense.bias'",
    }
    theta = adapters.bert_to_vl(bert.state_dict(), model)  # θ0' onto the same layers
    assert len(theta) == 2 * 6 and theta.adapter.name == "blip"
