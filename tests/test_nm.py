"""N:M semi-structured masks: the pattern, the magnitude order within each group, bad input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vlticket
from vlticket import ArgumentError, Mask, ShapeMismatchError


def test_two_of_four_by_hand():
    w = {"w": torch.tensor([[0.1, 0.9, -0.2, 0.5], [-3.0, 1.0, 2.0, 0.0]])}
    m = vlticket.prune_magnitude(w, pattern="2:4")
    assert m["w"].tolist() == [[False, True, False, True], [True, False, True, False]]
    assert m.satisfies("2:4") and m.sparsity == 0.5


def test_ties_prune_the_earlier_entry_first():
    m = vlticket.prune_magnitude({"w": torch.ones(1, 8)}, pattern="1:4")
    assert m["w"].tolist() == [[False, False, False, True] * 2]
    big = vlticket.prune_magnitude({"w": torch.ones(1, 4)}, pattern="1:4", largest=True)
    assert big["w"].tolist() == [[False, False, False, True]]


def test_largest_keeps_the_smallest():
    w = {"w": torch.tensor([[0.1, 0.9, -0.2, 0.5]])}
    m = vlticket.prune_magnitude(w, pattern="2:4", largest=True)
    assert m["w"].tolist() == [[True, False, True, False]]


def _expected(w: torch.Tensor, keep: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Reference: per group, stable order of (|w|, position), pruned entries first."""
    out = torch.zeros(w.numel(), dtype=torch.bool)
    flat, kflat = w.reshape(-1), keep.reshape(-1)
    for g in range(0, w.numel(), m):
        idx = [i for i in range(g, g + m) if kflat[i]]
        idx.sort(key=lambda i: (abs(float(flat[i])), i))
        for i in idx[max(0, len(idx) - n) :]:
            out[i] = True
    return out.reshape(w.shape)


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(2, 8),
    data=st.data(),
    rows=st.integers(1, 5),
    groups=st.integers(1, 4),
    prior=st.booleans(),
)
def test_matches_reference(m, data, rows, groups, prior):
    n = data.draw(st.integers(1, m - 1))
    values = st.sampled_from([0.0, 0.5, -0.5, 1.0, 2.0, -3.0, 0.25])  # many ties
    size = rows * groups * m
    w = torch.tensor(data.draw(st.lists(values, min_size=size, max_size=size)))
    w = w.reshape(rows, groups * m)
    keep = torch.rand(w.shape, generator=torch.Generator().manual_seed(rows)) > 0.3
    mask = Mask({"w": keep}) if prior else None
    got = vlticket.prune_magnitude({"w": w}, pattern=f"{n}:{m}", mask=mask)
    expected = _expected(w, keep if prior else torch.ones_like(keep), n, m)
    assert torch.equal(got["w"], expected)
    assert got.satisfies(f"{n}:{m}")
    if prior:
        assert not (got["w"] & ~keep).any()  # pruned stays pruned
    else:
        assert got.num_kept == w.numel() // m * n


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_and_large_tensor_match_reference(dtype):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 96, generator=g).to(dtype)
    got = vlticket.prune_magnitude({"w": w}, pattern="2:4")["w"]
    assert torch.equal(got, _expected(w.float(), torch.ones_like(got), 2, 4))


def test_module_and_iou_and_files(tiny_net, tmp_path):
    tensors = {n: p for n, p in tiny_net.named_parameters() if p.dim() == 2}
    m = vlticket.prune_magnitude(tensors, pattern="2:4")
    assert m.satisfies("2:4")
    m.save(tmp_path / "m.safetensors")
    assert Mask.load(tmp_path / "m.safetensors") == m
    assert vlticket.iou(m, m) == 1.0


def test_satisfies_detects_violations():
    m = Mask({"w": torch.tensor([[True, True, True, False]])})
    assert not m.satisfies("2:4") and m.satisfies("3:4")


@pytest.mark.parametrize("pattern", ["2-4", "4:2", "0:4", "2:2", "", "a:b", 24])
def test_bad_pattern(pattern):
    with pytest.raises(ArgumentError, match="pattern"):
        vlticket.prune_magnitude({"w": torch.ones(2, 4)}, pattern=pattern)


def test_pattern_must_divide_last_dimension():
    w = {"ok": torch.ones(2, 8), "bad": torch.ones(4, 6)}
    with pytest.raises(ShapeMismatchError, match="'bad'.*multiple of 4"):
        vlticket.prune_magnitude(w, pattern="2:4")
    with pytest.raises(ShapeMismatchError, match="multiple of 4"):
        Mask({"bad": torch.ones(4, 6, dtype=torch.bool)}).satisfies("2:4")


def test_pattern_with_sparsity_is_refused():
    with pytest.raises(ArgumentError, match="neither `sparsity` nor `amount`"):
        vlticket.prune_magnitude({"w": torch.ones(2, 4)}, pattern="2:4", sparsity=0.5)


@pytest.mark.parametrize("prior", [False, True])
def test_chunks_match_reference(monkeypatch, prior):
    """Groups split over several chunks (ties and a NaN check in later ones) match one pass."""
    from vlticket.core import nm

    g = torch.Generator().manual_seed(1)
    w = torch.randint(-2, 3, (7, 12), generator=g).float()  # many ties, in every chunk
    keep = torch.rand(w.shape, generator=g) > 0.3 if prior else torch.ones(w.shape, dtype=bool)
    monkeypatch.setattr(nm, "_CHUNK_GROUPS", 4)
    got = nm.keep_nm(w, keep if prior else None, "2:4")
    assert torch.equal(got, _expected(w, keep, 2, 4))
    w[-1, -1] = float("inf")  # in the last chunk only
    with pytest.raises(ArgumentError, match="NaN or infinite"):
        nm.keep_nm(w, None, "2:4")


def test_nonfinite_refused():
    with pytest.raises(ArgumentError, match="NaN"):
        vlticket.prune_magnitude({"w": torch.tensor([[1.0, float("nan"), 0, 0]])}, pattern="2:4")


@pytest.mark.parametrize("pattern", ["1:2", "3:16", "7:12", "5:8", "1:3"])
@pytest.mark.parametrize("largest", [False, True])
def test_wide_groups_match_reference(pattern, largest):
    """Any group width, pruning the smallest or the largest, matches the reference."""
    n, m = map(int, pattern.split(":"))
    g = torch.Generator().manual_seed(m)
    w = torch.randn(6, 4 * m, generator=g)
    w[0, :m] = 0.5  # a tied group
    got = vlticket.prune_magnitude({"w": w}, pattern=pattern, largest=largest)["w"]
    expected = torch.zeros(w.numel(), dtype=torch.bool)
    flat = w.reshape(-1).tolist()
    for start in range(0, len(flat), m):  # by (score, position): ties prune the earlier first
        score = [(-abs(v) if largest else abs(v), i) for i, v in enumerate(flat[start : start + m])]
        for _, i in sorted(score)[m - n :]:
            expected[start + i] = True
    assert torch.equal(got, expected.reshape(w.shape))


@pytest.mark.parametrize("m", range(2, 13))
def test_sorting_network_sorts_every_bit_pattern(m):
    """0-1 principle: a comparator network sorting every 0/1 input sorts every input."""
    from vlticket.core.nm import _sort_columns, _sorting_network

    rows = torch.tensor([[b >> i & 1 for i in range(m)] for b in range(1 << m)])
    ranked = torch.stack(_sort_columns(list(rows.unbind(1)), _sorting_network(m)), dim=1)
    assert torch.equal(ranked, rows.sort(dim=1).values)


def test_a_bad_scope_or_a_meta_tensor_is_refused():
    w = {"w": torch.randn(2, 8)}
    with pytest.raises(ArgumentError, match="`scope`.*'bogus'"):  # was silently ignored
        vlticket.prune_magnitude(w, pattern="2:4", scope="bogus")
    ghost = {"w": torch.empty(2, 8, device="meta")}
    for kwargs in ({"pattern": "2:4"}, {"sparsity": 0.5}):
        with pytest.raises(ArgumentError, match="'w'.*meta device"):
            vlticket.prune_magnitude(ghost, **kwargs)
