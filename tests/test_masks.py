import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import vlticket
from vlticket import ArgumentError, Mask, NameMismatchError, ShapeMismatchError

bool_masks = st.lists(st.lists(st.booleans(), min_size=1, max_size=40), min_size=1, max_size=4).map(
    lambda rows: Mask({f"t{i}": torch.tensor(r) for i, r in enumerate(rows)})
)


def test_ones_on_module_covers_float_matrices(tiny_net):
    mask = Mask.ones(tiny_net)
    assert list(mask) == ["emb.weight", "fc1.weight", "fc2.weight", "head.weight"]
    assert mask.sparsity == 0.0 and mask.density == 1.0
    assert mask.numel == 10 * 8 + 16 * 8 + 16 * 16 + 3 * 16


def test_statistics_hand_computed():
    m = Mask({"w": torch.tensor([True, False, False, True]), "v": torch.tensor([[False, True]])})
    assert (m.numel, m.num_kept, m.num_pruned) == (6, 3, 3)
    assert m.sparsity == 0.5 and m.density == 0.5
    assert m.tensor_sparsity() == {"w": 0.5, "v": 0.5}
    assert Mask({}).sparsity == 0.0


@pytest.mark.parametrize(
    "value, match",
    [
        (torch.ones(3), "torch.bool"),
        (torch.ones(3, dtype=torch.int64), "torch.bool"),
        ([True, False], "torch.Tensor"),
        (torch.ones(3, dtype=torch.bool).to_sparse(), "dense"),
    ],
)
def test_constructor_validates_values(value, match):
    with pytest.raises(ArgumentError, match=match):
        Mask({"w": value})


def test_setitem_validates():
    m = Mask()
    with pytest.raises(ArgumentError, match=r"mask\['w'\]"):
        m["w"] = torch.zeros(2)
    with pytest.raises(ArgumentError, match="str"):
        Mask({1: torch.ones(2, dtype=torch.bool)})


def test_algebra_hand_computed():
    a = Mask({"w": torch.tensor([True, True, False, False])})
    b = Mask({"w": torch.tensor([True, False, True, False])})
    assert (a & b)["w"].tolist() == [True, False, False, False]
    assert (a | b)["w"].tolist() == [True, True, True, False]
    assert (~a)["w"].tolist() == [False, False, True, True]
    assert a == a.clone() and a != b
    assert a != Mask({"v": torch.tensor([True, True, False, False])})


def test_algebra_refuses_other_layouts():
    a = Mask({"w": torch.ones(4, dtype=torch.bool)})
    with pytest.raises(ShapeMismatchError, match="'w'"):
        a & Mask({"w": torch.ones(5, dtype=torch.bool)})
    with pytest.raises(NameMismatchError, match="'v'"):
        a | Mask({"v": torch.ones(4, dtype=torch.bool)})
    with pytest.raises(ArgumentError):
        a & {"w": torch.ones(4, dtype=torch.bool)}


@given(bool_masks)
def test_complement_is_involution_and_partitions(m):
    assert ~~m == m
    assert (m & ~m).num_kept == 0
    assert (m | ~m).num_kept == m.numel
    assert m.num_kept + (~m).num_kept == m.numel


def test_apply_zeroes_pruned_weights_in_place(tiny_net):
    mask = vlticket.prune_magnitude(tiny_net, sparsity=0.5)
    before = {n: p.detach().clone() for n, p in tiny_net.named_parameters()}
    ids = {n: id(p) for n, p in tiny_net.named_parameters()}
    mask.apply(tiny_net)
    for name, p in tiny_net.named_parameters():
        assert id(p) == ids[name]
        if name in mask:
            assert torch.equal(p[~mask[name]], torch.zeros_like(p[~mask[name]]))
            assert torch.equal(p[mask[name]], before[name][mask[name]])
        else:
            assert torch.equal(p, before[name])
    keys = set(tiny_net.state_dict())
    assert keys == set(before)  # no weight_orig / weight_mask


def test_apply_is_idempotent(weights):
    mask = vlticket.prune_random(weights, sparsity=0.4, seed=0)
    once = {n: t.clone() for n, t in weights.items()}
    mask.apply(once)
    twice = {n: t.clone() for n, t in once.items()}
    mask.apply(twice)
    assert all(torch.equal(once[n], twice[n]) for n in weights)


@pytest.mark.parametrize("bad", ["name", "shape"])
def test_apply_mismatch_leaves_model_untouched(tiny_net, bad):
    mask = vlticket.prune_magnitude(tiny_net, sparsity=0.5)
    if bad == "name":
        mask["missing.weight"] = torch.zeros(3, dtype=torch.bool)
        error = NameMismatchError
    else:
        mask["fc2.weight"] = torch.zeros(16, 15, dtype=torch.bool)
        error = ShapeMismatchError
    before = {n: p.detach().clone() for n, p in tiny_net.named_parameters()}
    with pytest.raises(error, match="missing.weight" if bad == "name" else "fc2.weight"):
        mask.apply(tiny_net)
    assert all(torch.equal(p, before[n]) for n, p in tiny_net.named_parameters())


def test_apply_refuses_wrong_container():
    with pytest.raises(ArgumentError, match="module_or_weights"):
        Mask({"w": torch.ones(2, dtype=torch.bool)}).apply([torch.ones(2)])


def test_to_device_and_from_torch_prune(tiny_net):
    from torch.nn.utils import prune

    prune.l1_unstructured(tiny_net.fc1, "weight", amount=0.25)
    mask = Mask.from_torch_prune(tiny_net)
    assert list(mask) == ["fc1.weight"] and mask.to("cpu") == mask
    assert mask.num_pruned == round(0.25 * 128)
    with pytest.raises(ArgumentError, match="no torch.nn.utils.prune masks"):
        Mask.from_torch_prune(torch.nn.Linear(2, 2))


def test_from_torch_prune_ignores_unrelated_mask_buffers(tiny_net):
    from torch.nn.utils import prune

    tiny_net.register_buffer("attention_mask", torch.ones(3))
    prune.random_unstructured(tiny_net.fc2, "weight", amount=0.5)
    assert list(Mask.from_torch_prune(tiny_net)) == ["fc2.weight"]


def test_ones_on_a_meta_model_is_a_real_cpu_mask(tmp_path):
    with torch.device("meta"):
        model = torch.nn.Linear(4, 3)
    mask = Mask.ones(model)
    assert mask["weight"].device.type == "cpu"
    mask.save(tmp_path / "m.safetensors")
    assert Mask.load(tmp_path / "m.safetensors") == mask


def test_wrapped_models_use_the_inner_names(tiny_net):
    wrapped = torch.nn.DataParallel(tiny_net)
    compiled = torch.compile(tiny_net)
    for model in (wrapped, compiled):
        mask = vlticket.prune_magnitude(model, sparsity=0.5)
        assert set(mask) == set(Mask.ones(tiny_net))
        mask.apply(model)
        assert set(vlticket.Checkpoint.capture(model)) == {
            n for n, _ in tiny_net.named_parameters()
        }


def test_apply_refuses_a_checkpoint(tiny_net):
    theta0 = vlticket.Checkpoint.capture(tiny_net)
    with pytest.raises(ArgumentError, match="restore"):
        Mask.ones(tiny_net).apply(theta0)


def test_adapter_by_registered_name(tiny_net):
    with pytest.raises(ArgumentError, match="no adapter named 'nope'"):
        Mask.ones(tiny_net, adapter="nope")
    with pytest.raises(ArgumentError, match="`adapter`"):
        Mask.ones(tiny_net, adapter=3)


def test_save_metadata_must_be_strings(tmp_path):
    with pytest.raises(ArgumentError, match="metadata"):
        Mask({"w": torch.ones(2, dtype=torch.bool)}).save(tmp_path / "m.safetensors", {"step": 3})
    assert not list(tmp_path.iterdir())
