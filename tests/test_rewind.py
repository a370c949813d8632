import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vlticket
from vlticket import ArgumentError, Checkpoint, FileFormatError, NameMismatchError


def test_capture_restore_rewind_is_exact(tiny_net, tmp_path):
    theta0 = Checkpoint.capture(tiny_net)
    assert set(theta0) == {n for n, _ in tiny_net.named_parameters()}
    ids = {n: id(p) for n, p in tiny_net.named_parameters()}
    with torch.no_grad():
        for p in tiny_net.parameters():
            p.add_(1.0)
    mask = vlticket.prune_magnitude(tiny_net, sparsity=0.5)
    theta0.restore(tiny_net, mask)
    for name, p in tiny_net.named_parameters():
        assert id(p) == ids[name]
        expected = theta0[name] * mask[name] if name in mask else theta0[name]
        assert torch.equal(p.detach(), expected)


def test_capture_is_a_copy(tiny_net):
    theta0 = Checkpoint.capture(tiny_net, names=["fc1.weight"])
    with torch.no_grad():
        tiny_net.fc1.weight.zero_()
    assert list(theta0) == ["fc1.weight"] and theta0["fc1.weight"].abs().sum() > 0
    with pytest.raises(NameMismatchError, match="nope"):
        Checkpoint.capture(tiny_net, names=["nope"])


def test_restore_validates_before_writing(tiny_net):
    other = torch.nn.Linear(3, 3)
    ckpt = Checkpoint({"fc1.weight": torch.zeros(16, 9)})
    before = tiny_net.fc1.weight.detach().clone()
    with pytest.raises(vlticket.ShapeMismatchError, match="fc1.weight"):
        ckpt.restore(tiny_net)
    assert torch.equal(tiny_net.fc1.weight, before)
    with pytest.raises(NameMismatchError):
        Checkpoint.capture(tiny_net).restore(other)
    with pytest.raises(NameMismatchError, match="strict|not in"):
        Checkpoint.capture(tiny_net, names=["fc1.weight"]).restore(tiny_net, strict=True)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_shuffled_permutes_within_each_tensor(seed):
    g = torch.Generator().manual_seed(seed % 1000)
    ckpt = Checkpoint({"a": torch.randn(6, 5, generator=g), "b": torch.randn(7, generator=g)})
    shuf = ckpt.shuffled(seed)
    assert shuf.shapes() == ckpt.shapes()
    for name in ckpt:
        assert torch.equal(
            torch.sort(shuf[name].reshape(-1)).values, torch.sort(ckpt[name].reshape(-1)).values
        )
    assert not torch.equal(shuf["a"], ckpt["a"])
    assert torch.equal(ckpt.shuffled(seed)["a"], shuf["a"])


def test_from_state_dict_with_mapping_and_function():
    sd = {
        "bert.layer.0.w": torch.ones(2, 2),
        "bert.pooler.w": torch.zeros(2),
        "ids": torch.arange(3),
    }
    by_map = Checkpoint.from_state_dict(sd, rename={"bert.layer.0.w": "enc.0.w"})
    assert list(by_map) == ["enc.0.w"]
    by_fn = Checkpoint.from_state_dict(
        sd, rename=lambda n: n.replace("bert.", "") if "layer" in n else None
    )
    assert list(by_fn) == ["layer.0.w"]
    assert list(Checkpoint.from_state_dict(sd)) == ["bert.layer.0.w", "bert.pooler.w"]
    with pytest.raises(NameMismatchError, match="absent"):
        Checkpoint.from_state_dict(sd, rename={"absent": "x"})
    with pytest.raises(ArgumentError, match="two tensors"):
        Checkpoint.from_state_dict(sd, rename=lambda n: "same")
    with pytest.raises(ArgumentError, match="rename"):
        Checkpoint.from_state_dict(sd, rename=3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_save_load_identical(tmp_path, dtype):
    ckpt = Checkpoint({"z": torch.randn(3, 4).to(dtype), "a": torch.randn(5).to(dtype)})
    ckpt.save(tmp_path / "theta0.safetensors")
    back = Checkpoint.load(tmp_path / "theta0.safetensors")
    assert list(back) == ["z", "a"]
    assert all(torch.equal(back[n], ckpt[n]) and back[n].dtype == dtype for n in ckpt)


def test_load_refuses_a_mask_file(tmp_path):
    vlticket.Mask({"w": torch.ones(3, dtype=torch.bool)}).save(tmp_path / "m.safetensors")
    with pytest.raises(FileFormatError, match="not a vlticket.checkpoint"):
        Checkpoint.load(tmp_path / "m.safetensors")


def test_from_state_dict_refuses_duplicates_and_non_tensors():
    sd = {"a": torch.ones(2), "b": torch.ones(2)}
    with pytest.raises(ArgumentError, match="two tensors"):
        Checkpoint.from_state_dict(sd, rename={"a": "x", "b": "x"})
    with pytest.raises(ArgumentError, match="state_dict"):
        Checkpoint.from_state_dict({"a": [1.0, 2.0]})


def test_restore_into_a_meta_model_raises():
    ckpt = Checkpoint.capture(torch.nn.Linear(4, 3))
    with torch.device("meta"):
        meta = torch.nn.Linear(4, 3)
    with pytest.raises(ArgumentError, match="meta device"):
        ckpt.restore(meta)
