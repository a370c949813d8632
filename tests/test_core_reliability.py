"""Reliability of the core: empty prunable sets, validate-before-mutate, masks that remember
their adapter, family adapters by default, and per-stream / per-layer scopes."""

import logging

import pytest
import torch
from conftest import TinyNet
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from transformers import LxmertConfig, LxmertForQuestionAnswering

import vlticket
from vlticket import ArgumentError, Checkpoint, Mask, NameMismatchError, baselines, registry
from vlticket.core.mask import AdapterRecord

LXMERT = vlticket.adapters.get("lxmert")


def lxmert(seed=0):
    torch.manual_seed(seed)
    cfg = LxmertConfig(
        vocab_size=50,
        hidden_size=16,
        num_attention_heads=2,
        intermediate_size=32,
        l_layers=2,
        x_layers=1,
        r_layers=1,
        visual_feat_dim=8,
        visual_pos_dim=4,
        num_qa_labels=5,
        num_object_labels=6,
        num_attr_labels=7,
    )
    return LxmertForQuestionAnswering(cfg)


def bits(model):
    """The model's state as raw bytes: equal means bit-identical (NaN and -0.0 included)."""
    return {
        k: v.detach().clone().contiguous().view(torch.uint8) for k, v in model.state_dict().items()
    }


def same_bits(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- 2. an empty prunable set is an error ------------------------------------------------------
class NoMatrices(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(4)
        self.scale = nn.Parameter(torch.ones(3))


EMPTY_CALLS = {
    "prune_magnitude": lambda w: vlticket.prune_magnitude(w, sparsity=0.5),
    "prune_random": lambda w: vlticket.prune_random(w, sparsity=0.5, seed=0),
    "Mask.ones": lambda w: Mask.ones(w),
}


@pytest.mark.parametrize("call", EMPTY_CALLS.values(), ids=EMPTY_CALLS.keys())
@pytest.mark.parametrize("source", ["module", "mapping"])
def test_nothing_to_prune_is_an_error(call, source):
    weights = NoMatrices() if source == "module" else {}
    with pytest.raises(ArgumentError, match="nothing to prune"):
        call(weights)


def test_prune_by_score_of_nothing_is_an_error_but_an_explicit_empty_mask_is_fine():
    with pytest.raises(ArgumentError, match="`scores`.*nothing to prune"):
        vlticket.prune_by_score({}, sparsity=0.5)
    empty = Mask({})
    assert len(empty) == 0 and empty.sparsity == 0.0
    assert len(baselines.random_mask(empty, seed=0)) == 0


# -- 3. validate before you mutate --------------------------------------------------------------
def _bad_shape_mask(model):
    mask = vlticket.prune_magnitude(model, sparsity=0.5, adapter=None)
    mask["fc1.weight"] = torch.ones(3, 3, dtype=torch.bool)
    return mask


def _wrong_names_mask(model):
    mask = vlticket.prune_magnitude(model, sparsity=0.5, adapter=None)
    mask["nope.weight"] = mask.pop("fc2.weight")
    return mask


def _init(model):
    return Checkpoint.capture(model)


def _bad_init(model):
    theta = dict(Checkpoint.capture(model))
    theta["fc2.weight"] = torch.zeros(2, 2)
    return Checkpoint(theta)


def _foreign_bad(model):
    return Checkpoint({"fc1.weight": torch.zeros(1, 1)})


def _ticket(model):
    return vlticket.prune_magnitude(model, sparsity=0.5, adapter=None)


BASELINES = {
    "retrain": lambda m, t, i: baselines.retrain(m, t, i),
    "transfer": lambda m, t, i: baselines.transfer(m, t, i),
    "random_pruning": lambda m, t, i: baselines.random_pruning(m, t, i, seed=0),
    "complement": lambda m, t, i: baselines.complement(m, t, i),
    "shuffled_weights": lambda m, t, i: baselines.shuffled_weights(m, t, i, seed=0),
    "foreign_weights": lambda m, t, i: baselines.foreign_weights(
        m, t, i, Checkpoint.capture(m, names=list(t))
    ),
}

BAD_WRITES = {
    "apply-shape": lambda m: _bad_shape_mask(m).apply(m),
    "apply-names": lambda m: _wrong_names_mask(m).apply(m),
    "attach-shape": lambda m: _bad_shape_mask(m).attach(m),
    "attach-optimizer": lambda m: _ticket(m).attach(m, optimizer="sgd"),
    "restore-shape": lambda m: _bad_init(m).restore(m),
    "restore-mask": lambda m: _init(m).restore(m, _bad_shape_mask(m)),
    "foreign-bad-foreign": lambda m: baselines.foreign_weights(
        m, _ticket(m), _init(m), _foreign_bad(m)
    ),
    **{
        f"{name}-bad-ticket": (lambda m, f=f: f(m, _bad_shape_mask(m), _init(m)))
        for name, f in BASELINES.items()
    },
    **{
        f"{name}-wrong-names": (lambda m, f=f: f(m, _wrong_names_mask(m), _init(m)))
        for name, f in BASELINES.items()
    },
    **{
        f"{name}-bad-init": (lambda m, f=f: f(m, _ticket(m), _bad_init(m)))
        for name, f in BASELINES.items()
    },
}


@pytest.mark.parametrize("write", BAD_WRITES.values(), ids=BAD_WRITES.keys())
def test_bad_input_raises_and_leaves_the_model_bit_identical(write):
    model = TinyNet()
    with torch.no_grad():  # a state that a write of θ0 or of zeros would change
        for p in model.parameters():
            p.add_(1.0)
    before = bits(model)
    with pytest.raises(vlticket.VlticketError):
        write(model)
    assert same_bits(bits(model), before)


@pytest.mark.parametrize("name", BASELINES)
def test_every_baseline_still_works_on_good_input(name):
    model = TinyNet()
    init = _init(model)
    ticket = _ticket(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    handle = BASELINES[name](model, ticket, init)
    handle.remove()
    assert torch.equal(model.norm.weight, init["norm.weight"])  # reset to θ0 happened


# -- 4. a mask remembers how it was named ----------------------------------------------------------
def test_mask_records_its_adapter_through_every_operation(tmp_path):
    model = lxmert()
    mask = vlticket.prune_magnitude(model, sparsity=0.5, adapter=LXMERT.with_options(pooler=True))
    record = AdapterRecord("lxmert", ("pooler",))
    assert mask.adapter == record
    for derived in (mask.clone(), mask.to("cpu"), mask & mask, mask | mask, ~mask):
        assert derived.adapter == record
    plain = Mask(dict(mask))
    assert plain.adapter is None and plain == mask  # equality ignores how names were made
    assert (plain & mask).adapter == record
    mask.save(tmp_path / "m.safetensors")
    meta = Mask.read_metadata(tmp_path / "m.safetensors")
    assert meta["adapter"] == "lxmert" and meta["adapter_options"] == '["pooler"]'
    loaded = Mask.load(tmp_path / "m.safetensors")
    assert loaded.adapter == record and loaded == mask
    Mask(dict(mask)).save(tmp_path / "plain.safetensors")
    assert Mask.load(tmp_path / "plain.safetensors").adapter is None


def test_apply_and_attach_use_the_recorded_adapter():
    model = lxmert()
    mask = vlticket.prune_magnitude(model, sparsity=0.5, adapter="lxmert")
    assert all(not n.startswith("lxmert.") for n in mask)  # canonical names
    mask.apply(model)  # no adapter given: the recorded one
    params = LXMERT.prunable(model)
    assert all(torch.all(params[n][~k] == 0) for n, k in mask.items())
    mask.attach(model).remove()
    with pytest.raises(NameMismatchError, match=r"pass adapter=vlticket\.adapter_for\(model\)"):
        mask.apply(model, adapter=None)  # opted out: canonical names are suffixes


def test_ticket_config_and_ticket_apply_use_the_recorded_adapter():
    model = lxmert()
    mask = vlticket.prune_magnitude(model, sparsity=0.5, adapter="lxmert")
    config = vlticket.hub.TicketConfig.describe(mask)
    assert config.adapter == "lxmert"
    ticket = vlticket.Ticket(Mask(dict(mask), adapter=mask.adapter))
    ticket.apply(model)
    params = LXMERT.prunable(model)
    assert all(torch.all(params[n][~k] == 0) for n, k in mask.items())


def test_bad_recorded_adapter_options_in_a_file_are_a_format_error(tmp_path):
    Mask({"w": torch.ones(3, dtype=torch.bool)}).save(
        tmp_path / "m.safetensors", metadata={"adapter": "lxmert", "adapter_options": "{oops"}
    )
    with pytest.raises(vlticket.FileFormatError, match="adapter_options"):
        Mask.load(tmp_path / "m.safetensors")


# -- 5. a known family's adapter by default ------------------------------------------------------
def test_a_known_family_is_pruned_through_its_adapter_by_default(caplog):
    model = lxmert()
    with caplog.at_level(logging.INFO, logger="vlticket"):
        auto = vlticket.prune_magnitude(model, sparsity=0.5)
        vlticket.prune_magnitude(model, sparsity=0.5)
    explicit = vlticket.prune_magnitude(model, sparsity=0.5, adapter="lxmert")
    everything = vlticket.prune_magnitude(model, sparsity=0.5, adapter=None)
    assert auto == explicit and auto.adapter == AdapterRecord("lxmert", ())
    assert len(everything) > len(auto)  # embeddings and the task head too
    assert everything.adapter is None
    assert set(Mask.ones(model)) == set(auto)
    assert set(vlticket.prune_random(model, sparsity=0.5, seed=0)) == set(auto)
    # the once-per-family log line (once per process, so maybe already logged by another test)
    said = [r.getMessage() for r in caplog.records if "'lxmert' adapter" in r.getMessage()]
    assert len(said) <= 1


def test_a_mapping_and_an_unknown_model_are_never_auto_adapted(tiny_net):
    named = dict(lxmert().named_parameters())
    assert set(Mask.ones(named)) == set(named)
    assert registry.detect(n for n, _ in tiny_net.named_parameters()) is None
    assert set(Mask.ones(tiny_net)) == {"emb.weight", "fc1.weight", "fc2.weight", "head.weight"}


def test_registry_detect_is_what_adapter_for_uses():
    names = [n for n, _ in lxmert().named_parameters()]
    assert registry.detect(names) is LXMERT
    assert vlticket.adapter_for(names) is LXMERT
    with pytest.raises(vlticket.adapters.UnknownModelError):
        vlticket.adapter_for(["fc.weight"])


# -- 6. per-stream and per-layer scopes ------------------------------------------------------------
def _reference(model, scope, **request):
    """Each group pruned on its own, as a global magnitude pruning of that group alone."""
    params = LXMERT.prunable(model)
    out = {}
    for group in LXMERT.groups(list(params), by=scope).values():
        out.update(vlticket.prune_magnitude({n: params[n] for n in group}, **request))
    return Mask(out)


@settings(max_examples=10, deadline=None)
@given(
    scope=st.sampled_from(["stream", "layer"]),
    fraction=st.floats(0.0, 0.95),
    use_amount=st.booleans(),
    seed=st.integers(0, 100),
)
def test_grouped_scopes_prune_each_group_exactly_as_alone(scope, fraction, use_amount, seed):
    model = lxmert(seed)
    request = {"amount" if use_amount else "sparsity": fraction}
    got = vlticket.prune_magnitude(model, scope=scope, adapter="lxmert", **request)
    assert got == _reference(model, scope, **request)
    groups = LXMERT.groups(list(got), by=scope)
    for members in groups.values():
        numel = sum(got[n].numel() for n in members)
        pruned = sum(int((~got[n]).sum()) for n in members)
        assert pruned == round(fraction * numel)
    # a second round keeps what was pruned and is again exact per group
    again = vlticket.prune_magnitude(model, scope=scope, mask=got, amount=0.2)
    assert all(torch.all(again[n] <= got[n]) for n in got)


def test_grouped_scopes_for_random_and_score_pruning():
    model = lxmert()
    params = LXMERT.prunable(model)
    for scope in ("stream", "layer"):
        rand = vlticket.prune_random(model, sparsity=0.4, scope=scope, seed=0)
        scores = {n: p.detach().abs() for n, p in params.items()}
        by_score = vlticket.prune_by_score(scores, sparsity=0.4, scope=scope, adapter="lxmert")
        assert by_score == vlticket.prune_magnitude(model, sparsity=0.4, scope=scope)
        for members in LXMERT.groups(list(params), by=scope).values():
            numel = sum(params[n].numel() for n in members)
            assert sum(int((~rand[n]).sum()) for n in members) == round(0.4 * numel)


def test_grouped_scopes_need_an_adapter_with_groups(tiny_net, weights):
    for scope in ("stream", "layer"):
        with pytest.raises(ArgumentError, match="`scope`"):
            vlticket.prune_magnitude(tiny_net, sparsity=0.5, scope=scope)
        with pytest.raises(ArgumentError, match="`scope`"):
            vlticket.prune_magnitude(weights, sparsity=0.5, scope=scope)
        with pytest.raises(ArgumentError, match="`scope`"):
            vlticket.prune_random(weights, sparsity=0.5, scope=scope)
        with pytest.raises(ArgumentError, match="`scope`"):
            vlticket.prune_by_score(weights, sparsity=0.5, scope=scope)
