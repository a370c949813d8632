"""Registry, detection, the generic pattern adapter, per-group metrics and BERT's θ0'."""

import dataclasses
import doctest
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from original_models import LXRTModel, UniterForVisualQuestionAnswering, UniterModel, VQAModel
from transformers import BertConfig, BertModel, ViltConfig, ViltModel, ViTConfig, ViTModel

import vlticket
from vlticket import adapters
from vlticket.adapters import base, groups, patterns

torch.set_num_threads(1)


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so tests can register adapters."""
    monkeypatch.setattr(vlticket.registry, "_REGISTRY", dict(vlticket.registry._REGISTRY))


def test_builtin_adapters_are_registered():
    assert adapters.available() == [
        "bert",
        "blip",
        "blip-vision",
        "clip",
        "clip-text",
        "clip-vision",
        "lxmert",
        "siglip",
        "siglip-text",
        "siglip-vision",
        "uniter",
        "vilt",
        "vilt-original",
        "visualbert",
    ]
    assert adapters.get("lxmert", pooler=True).options == frozenset({"pooler"})
    with pytest.raises(vlticket.ArgumentError, match=r"no adapter named 'flava'.*'lxmert'"):
        adapters.get("flava")
    with pytest.raises(vlticket.ArgumentError, match="unknown option"):
        adapters.get("lxmert", heads=True)


def test_adapter_for_reads_state_dicts_and_name_lists():
    sd = VQAModel().state_dict()
    assert adapters.adapter_for(sd).name == "lxmert"
    assert adapters.adapter_for(list(sd)).name == "lxmert"
    assert adapters.adapter_for(sd, embeddings=True).options == frozenset({"embeddings"})
    vit = ["embeddings.cls_token", "encoder.layer.0.attention.attention.query.weight"]
    with pytest.raises(adapters.UnknownModelError, match="no registered adapter fits"):
        adapters.adapter_for(vit)  # transformers' ViT has ViLT's layers but no text


def test_unknown_model_error_lists_adapters_and_shows_patterns():
    # ViT has ViLT's layers but no text embeddings: no family fits it.
    model = ViTModel(
        ViTConfig(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            image_size=8,
            patch_size=4,
        )
    )
    before = {n: t.clone() for n, t in model.state_dict().items()}
    with pytest.raises(adapters.UnknownModelError) as err:
        adapters.adapter_for(model)
    msg = str(err.value)
    for needed in ("'lxmert'", "'uniter'", "'vilt'", "'vilt-original'", "PatternAdapter(include="):
        assert needed in msg
    assert isinstance(err.value, vlticket.VlticketError)
    with pytest.raises(adapters.UnknownModelError, match="does not look like 'uniter'"):
        vlticket.Mask.ones(model, adapter=adapters.get("uniter"))
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())


def test_register_refuses_duplicates_and_finds_new_families(registry):
    mine = adapters.PatternAdapter(include=[r"blocks\.\d+\.fc\.weight"], name="mine")
    adapters.register_adapter(mine)
    with pytest.raises(vlticket.ArgumentError, match="already registered"):
        adapters.register_adapter(adapters.PatternAdapter(include=[".*"], name="mine"))
    adapters.register_adapter(mine, replace=True)
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList(torch.nn.Module() for _ in range(2))
    for b in model.blocks:
        b.fc = torch.nn.Linear(3, 3)
    assert adapters.adapter_for(model) is mine
    with pytest.raises(vlticket.ArgumentError, match=r"lacks \['name'"):
        adapters.register_adapter(object())


def test_two_families_fitting_one_model_is_an_error(registry):
    copy = dataclasses.replace(adapters.get("lxmert"), name="lxmert-copy")
    adapters.register_adapter(copy)
    with pytest.raises(adapters.UnknownModelError, match=r"several adapters \['lxmert', 'lxmert-"):
        adapters.adapter_for(VQAModel())


def test_a_broad_pattern_adapter_does_not_hide_a_family(registry):
    adapters.register_adapter(adapters.PatternAdapter(include=[r".*\.weight"], name="all"))
    assert adapters.adapter_for(VQAModel()).name == "lxmert"


def test_pattern_adapter_on_any_module():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    a = adapters.PatternAdapter(include=[r"\d+\.weight"], exclude=[r"2\..*"])
    params = a.prunable(model)
    assert list(params) == ["0.weight"] and params["0.weight"] is model[0].weight
    grouped = a.groups(["0.weight", "bias"], by="layer")
    assert grouped == {"layer.0": ["0.weight"], "other": ["bias"]}
    mask = vlticket.prune_magnitude(model, sparsity=0.5, adapter=a)
    mask.apply(model, adapter=a)
    assert int((model[0].weight == 0).sum()) == 16 and model[2].weight.all()
    with pytest.raises(adapters.UnknownModelError, match=r"'encoder\\\\..*'\] match no"):
        adapters.PatternAdapter(include=[r"encoder\..*"]).prunable(model)
    with pytest.raises(adapters.UnknownModelError, match="leaves no parameter"):
        adapters.PatternAdapter(include=[r".*"], exclude=[r".*"]).prunable(model)
    with pytest.raises(vlticket.ArgumentError, match="not a valid regex"):
        adapters.PatternAdapter(include=["("])
    with pytest.raises(vlticket.ArgumentError, match="found a str"):
        adapters.PatternAdapter(include=r".*")


def test_pattern_adapter_strips_a_wrapper_prefix():
    inner = torch.nn.Linear(2, 2)
    wrapped = torch.nn.Module()
    wrapped.model = inner
    a = adapters.PatternAdapter(include=[r".*weight"], strip=r"model\.")
    assert vlticket.Mask.ones(wrapped, adapter=a) == vlticket.Mask.ones(inner, adapter=a)


# -- groups ---------------------------------------------------------------------------------
LXMERT = adapters.get("lxmert", embeddings=True, pooler=True, visual_projection=True)
SHAPES = {n: p.shape for n, p in LXMERT.prunable(LXRTModel()).items()}


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), sparsity=st.floats(0, 0.99))
def test_group_sparsities_add_up_to_the_overall(seed, sparsity):
    mask = vlticket.prune_random(
        {n: torch.zeros(s) for n, s in SHAPES.items()}, sparsity=sparsity, seed=seed
    )
    for by in ("stream", "layer", "component"):
        parts = LXMERT.groups(list(mask), by=by)
        assert sorted(n for names in parts.values() for n in names) == sorted(mask)
        sizes = {g: sum(mask[n].numel() for n in names) for g, names in parts.items()}
        pruned = sum(s * sizes[g] for g, s in vlticket.group_sparsity(mask, parts).items())
        assert round(pruned) == mask.num_pruned


def test_groups_by_none_merges_the_three_partitions():
    names = list(SHAPES)
    merged = LXMERT.groups(names)
    for by in ("stream", "layer", "component"):
        for g, members in LXMERT.groups(names, by=by).items():
            assert merged[g] == members
    assert set(merged) >= {"language", "vision", "cross", "language.layer.1", "cross_attention"}
    assert LXMERT.groups(["head.weight"], by="stream") == {"other": ["head.weight"]}
    with pytest.raises(vlticket.ArgumentError, match="`by`"):
        LXMERT.groups(names, by="modality")


def test_group_iou_hand_computed_and_consistent_with_iou():
    a = vlticket.Mask({"x": torch.tensor([1, 1, 0, 0]).bool(), "y": torch.tensor([1, 0]).bool()})
    b = vlticket.Mask({"x": torch.tensor([1, 0, 1, 0]).bool(), "y": torch.tensor([0, 0]).bool()})
    assert vlticket.group_iou(a, b, {"x": ["x"], "y": ["y"], "all": ["x", "y"]}) == {
        "x": 1 / 3,
        "y": 0.0,
        "all": vlticket.iou(a, b),
    }
    assert vlticket.group_iou(~a | a, ~a | a, {"x": ["x"]}) == {"x": 1.0}
    with pytest.raises(vlticket.NameMismatchError, match="'z'"):
        vlticket.group_sparsity(a, {"g": ["x", "z"]})


def test_tickets_from_two_heads_compare_per_stream():
    a = vlticket.prune_magnitude(VQAModel(), sparsity=0.5, adapter=LXMERT)
    b = vlticket.prune_magnitude(LXRTModel(), sparsity=0.5, adapter=LXMERT)
    per_stream = vlticket.group_iou(a, b, LXMERT.groups(list(a), by="stream"))
    assert set(per_stream) == {"language", "vision", "cross", "pooler"}
    assert all(0.0 <= v <= 1.0 for v in per_stream.values())


# -- θ0' from BERT --------------------------------------------------------------------------
def bert(layers=3, hidden=16):
    torch.manual_seed(7)
    return BertModel(
        BertConfig(
            vocab_size=50,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=2,
            intermediate_size=2 * hidden,
        )
    )


def test_bert_weights_onto_lxmert_language_layers():
    model = VQAModel()  # 2 language layers; BERT has 3
    sd = bert().state_dict()
    adapter = adapters.adapter_for(model)
    theta = vlticket.Checkpoint(adapters.bert_to_vl(sd, model))
    assert len(theta) == 12 and all(n.startswith("encoder.layer.") for n in theta)
    mask = vlticket.prune_random(model, sparsity=0.5, seed=0, adapter=adapter)
    theta.restore(model, mask, adapter=adapter)
    q = model.lxrt_encoder.model.bert.encoder.layer[1].attention.self.query.weight
    expected = sd["encoder.layer.1.attention.self.query.weight"]
    keep = mask["encoder.layer.1.attention.self.query.weight"]
    assert torch.equal(q, expected * keep)
    all_layers = vlticket.Checkpoint(adapters.bert_to_vl(sd, "lxmert"))
    with pytest.raises(vlticket.NameMismatchError, match="encoder.layer.2"):
        all_layers.restore(model, adapter=adapter)


def test_bert_weights_onto_uniter_with_embeddings_and_a_prefix():
    sd = {f"bert.{n}": t for n, t in bert().state_dict().items()}  # a Bert* head's state dict
    model = UniterForVisualQuestionAnswering(layers=3)
    theta = vlticket.Checkpoint.from_state_dict(adapters.bert_to_vl(sd, model, embeddings=True))
    assert len(theta) == 18 + 3
    theta.restore(model, adapter=adapters.get("uniter", embeddings=True))
    emb = model.uniter.embeddings.word_embeddings.weight
    assert torch.equal(emb, sd["bert.embeddings.word_embeddings.weight"])


def test_bert_weights_onto_vilt_and_shape_errors():
    model = ViltModel(
        ViltConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=32,
            image_size=32,
            patch_size=16,
            max_position_embeddings=40,
        )
    )
    theta = adapters.bert_to_vl(bert().state_dict(), model)
    assert "encoder.layer.2.attention.attention.value.weight" in theta
    vlticket.Checkpoint(theta).restore(model, adapter=adapters.get("vilt"))
    with pytest.raises(vlticket.ShapeMismatchError, match="BERT has shape"):
        adapters.bert_to_vl(bert(hidden=32).state_dict(), UniterModel(layers=3))
    with pytest.raises(vlticket.NameMismatchError, match="no BERT layer weights"):
        adapters.bert_to_vl({"fc.weight": torch.ones(2, 2)}, "uniter")
    with pytest.raises(vlticket.ArgumentError, match="`target`"):
        adapters.bert_to_vl(bert().state_dict(), "clip")


def test_docstring_examples(registry):
    for module in (base, patterns, groups, vlticket.registry, vlticket.core.metrics):
        result = doctest.testmod(module, extraglobs={"vlticket": vlticket})
        assert result.failed == 0 and result.attempted > 0


def test_adapters_do_not_import_transformers():
    code = "import sys, vlticket.adapters; assert 'transformers' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
