import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vlticket
from vlticket import ArgumentError, Mask, NameMismatchError, ShapeMismatchError


@st.composite
def mask_pairs(draw):
    sizes = draw(st.lists(st.integers(1, 30), min_size=1, max_size=4))

    def one():
        return Mask(
            {
                f"t{i}": torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
                for i, n in enumerate(sizes)
            }
        )

    return one(), one()


def test_iou_hand_computed():
    a = Mask({"w": torch.tensor([True, True, False, False]), "v": torch.tensor([True])})
    b = Mask({"w": torch.tensor([True, False, True, False]), "v": torch.tensor([False])})
    assert vlticket.iou(a, b) == 1 / 4
    assert vlticket.tensor_iou(a, b) == {"w": 1 / 3, "v": 0.0}
    assert vlticket.mask_distance(a, b) == 3 / 5


def test_two_empty_masks_are_identical():
    e = Mask({"w": torch.zeros(4, dtype=torch.bool)})
    assert vlticket.iou(e, e.clone()) == 1.0
    assert vlticket.tensor_iou(e, e) == {"w": 1.0}


@settings(max_examples=80, deadline=None)
@given(mask_pairs())
def test_iou_properties(pair):
    a, b = pair
    x = vlticket.iou(a, b)
    assert 0.0 <= x <= 1.0
    assert x == vlticket.iou(b, a)
    assert vlticket.iou(a, a) == 1.0
    assert vlticket.mask_distance(a, a) == 0.0
    assert vlticket.mask_distance(a, ~a) == 1.0
    assert vlticket.mask_distance(a, b) == vlticket.mask_distance(b, a)
    assert all(0.0 <= v <= 1.0 for v in vlticket.tensor_iou(a, b).values())


@settings(max_examples=40, deadline=None)
@given(mask_pairs())
def test_iou_matrix_agrees_with_iou(pair):
    a, b = pair
    names, m = vlticket.iou_matrix({"s": a, "t": b, "u": ~a})
    assert names == ["s", "t", "u"]
    assert torch.equal(m, m.T)
    assert torch.all(m.diagonal() == 1.0)
    assert m[0, 1].item() == pytest.approx(vlticket.iou(a, b), abs=1e-12)
    assert m[1, 2].item() == pytest.approx(vlticket.iou(b, ~a), abs=1e-12)


def test_mismatched_masks_raise():
    a = Mask({"w": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ShapeMismatchError, match="'w'"):
        vlticket.iou(a, Mask({"w": torch.ones(4, dtype=torch.bool)}))
    with pytest.raises(NameMismatchError, match="'v'"):
        vlticket.tensor_iou(a, Mask({"v": torch.ones(3, dtype=torch.bool)}))
    with pytest.raises(NameMismatchError):
        vlticket.iou_matrix({"x": a, "y": Mask({"v": torch.ones(3, dtype=torch.bool)})})
    with pytest.raises(ArgumentError, match="non-empty"):
        vlticket.iou_matrix({})
    with pytest.raises(ArgumentError, match="`b`"):
        vlticket.mask_distance(a, {"w": torch.ones(3, dtype=torch.bool)})
