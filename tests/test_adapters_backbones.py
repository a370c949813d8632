"""A vision backbone the user brings, through a PatternAdapter: transformers' ViT and DETR's
ResNet backbone, as the README shows them. Tiny configs with random weights."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import vlticket  # noqa: E402
from vlticket import adapters  # noqa: E402

# The README's ViT adapter (transformers 5 names: `layers.N.attention.q_proj`, `mlp.fc1`): the
# six matrices of every layer, `vit.` (task models) stripped; heads and neurons declared.
VIT = adapters.PatternAdapter(
    include=[r"(vit\.)?layers\.\d+\.(attention\.[qkvo]_proj|mlp\.fc[12])\.weight"],
    strip=r"vit\.",
    name="vit",
    structure=(
        adapters.Structure(
            kind="head",
            where=r"layers\.\d+\.attention\.",
            rows=("q_proj", "k_proj", "v_proj"),
            columns=("o_proj",),
        ),
        adapters.Structure(
            kind="neuron", where=r"layers\.\d+\.", rows=("mlp.fc1",), columns=("mlp.fc2",)
        ),
    ),
)
# DETR's convolutional backbone (a transformers ResNet): every convolution's kernel.
DETR_BACKBONE = adapters.PatternAdapter(
    include=[r"(model\.)?backbone\.model\..*\.convolution\.weight"],
    strip=r"(model\.)?backbone\.model\.",
    name="detr-backbone",
)


def vit(cls="ViTModel"):
    config = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=3,
    )
    return getattr(transformers, cls)(config)


def detr(cls="DetrForObjectDetection"):
    backbone = transformers.ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        out_features=["stage2"],
    )
    config = transformers.DetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=backbone,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=5,
        num_labels=3,
    )
    return getattr(transformers, cls)(config)


def test_no_family_claims_a_vit_so_patterns_name_it():
    model = vit()
    with pytest.raises(adapters.UnknownModelError, match="PatternAdapter"):
        vlticket.adapter_for(model)
    params = VIT.prunable(model)
    assert len(params) == 2 * 6
    assert list(params)[:2] == [
        "layers.0.attention.q_proj.weight",
        "layers.0.attention.k_proj.weight",
    ]
    assert VIT.groups(params, by="layer") == {
        f"layer.{n}": [c for c in params if c.startswith(f"layers.{n}.")] for n in (0, 1)
    }


def test_a_vit_ticket_moves_to_the_classifier():
    torch.manual_seed(0)
    backbone, classifier = vit(), vit("ViTForImageClassification")
    ticket = vlticket.prune_magnitude(backbone, sparsity=0.6, adapter=VIT)
    theta0 = vlticket.Checkpoint.capture(backbone, adapter=VIT)
    theta0.restore(classifier, ticket, adapter=VIT)
    moved = VIT.prunable(classifier)
    assert set(moved) == set(ticket)
    for name, keep in ticket.items():
        assert torch.equal(moved[name], theta0[name] * keep)
    assert moved["layers.1.mlp.fc2.weight"] is classifier.vit.layers[1].mlp.fc2.weight


def test_vit_heads_and_neurons_prune_and_shrink_exactly():
    torch.manual_seed(0)
    model = vit("ViTForImageClassification").eval()
    mask = vlticket.prune_structured(model, granularity="head", amount=0.5, adapter=VIT)
    mask = vlticket.prune_structured(
        model, granularity="neuron", amount=0.25, mask=mask, adapter=VIT
    )
    mask.apply(model, adapter=VIT)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        dense = model(pixel_values=pixels).logits
        vlticket.shrink(model, mask, adapter=VIT, align=1)  # every pruned neuron goes
        small = model(pixel_values=pixels).logits
    assert torch.allclose(dense, small, atol=1e-5)
    assert model.vit.layers[0].attention.num_attention_heads == 2
    assert model.vit.layers[1].mlp.fc1.out_features == 64 - sum(
        1 for n in range(64) if not mask["layers.1.mlp.fc1.weight"][n].any()
    )


def test_detr_backbone_kernels_prune_and_move_between_detr_models():
    torch.manual_seed(0)
    detector, bare = detr(), detr("DetrModel")
    params = DETR_BACKBONE.prunable(detector)
    assert list(params) == [
        "embedder.embedder.convolution.weight",
        "encoder.stages.0.layers.0.layer.0.convolution.weight",
        "encoder.stages.0.layers.0.layer.1.convolution.weight",
        "encoder.stages.1.layers.0.shortcut.convolution.weight",
        "encoder.stages.1.layers.0.layer.0.convolution.weight",
        "encoder.stages.1.layers.0.layer.1.convolution.weight",
    ]
    ticket = vlticket.prune_magnitude(detector, sparsity=0.5, adapter=DETR_BACKBONE)
    assert abs(ticket.sparsity - 0.5) < 0.01
    ticket.apply(bare, adapter=DETR_BACKBONE)
    kernels = DETR_BACKBONE.prunable(bare)
    assert all(not kernels[n][~keep].any() for n, keep in ticket.items())
    with torch.no_grad():  # still a working detector
        assert detector(pixel_values=torch.randn(1, 3, 32, 32)).logits.shape == (1, 5, 4)
