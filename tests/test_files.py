"""Saving and loading masks: exact round trips, 1 bit per weight, and hostile files refused."""

import json
import os
import pickle
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vlticket
from vlticket import FileFormatError, Mask

masks = st.lists(
    st.tuples(st.lists(st.integers(0, 7), min_size=0, max_size=3), st.integers(0, 2**31 - 1)),
    min_size=1,
    max_size=4,
).map(
    lambda specs: Mask(
        {
            f"layer.{i}.weight": torch.rand(shape, generator=torch.Generator().manual_seed(s)) < 0.5
            for i, (shape, s) in enumerate(specs)
        }
    )
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(masks)
def test_save_load_identical(tmp_path, m):
    path = tmp_path / "m.safetensors"
    m.save(path)
    back = Mask.load(path)
    assert back == m and list(back) == list(m)
    assert back.shapes() == m.shapes()


def test_about_one_bit_per_weight(tmp_path):
    m = vlticket.prune_random({"w": torch.zeros(1000, 1000)}, sparsity=0.7, seed=0)
    m.save(tmp_path / "m.safetensors")
    size = (tmp_path / "m.safetensors").stat().st_size
    assert size * 8 / m.numel < 1.01
    meta = Mask.read_metadata(tmp_path / "m.safetensors")
    assert meta["format"] == "vlticket.mask" and float(meta["sparsity"]) == pytest.approx(0.7)


def test_saving_the_same_mask_twice_gives_the_same_bytes(tmp_path):
    g = torch.Generator().manual_seed(0)
    mask = Mask({f"t{i}": torch.rand(7, 5, generator=g) > 0.5 for i in range(6)})
    mask.save(tmp_path / "a.safetensors", metadata={"z": "1", "a": "2", "m": "3"})
    mask.clone().save(tmp_path / "b.safetensors", metadata={"m": "3", "a": "2", "z": "1"})
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    assert Mask.load(tmp_path / "b.safetensors") == mask


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    good = Mask({"w": torch.ones(8, dtype=torch.bool)})
    good.save(path)
    original = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("vlticket._files.os.fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        Mask({"w": torch.zeros(8, dtype=torch.bool)}).save(path)
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _good(tmp_path):
    path = tmp_path / "good.safetensors"
    Mask({"w": torch.ones(10, dtype=torch.bool)}).save(path)
    return path.read_bytes()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda good: b"", "only 0 bytes"),
        (lambda good: good[:-1], "truncated"),
        (lambda good: good + b"\0", "truncated or padded"),
        (lambda good: struct.pack("<Q", 1 << 40) + good[8:], "header length"),
        (lambda good: struct.pack("<Q", 5) + b"nope!", "not JSON"),
        (lambda good: pickle.dumps({"w": torch.ones(3)}), "header"),
        (lambda good: struct.pack("<Q", 2) + b"{}", "not a vlticket.mask"),
    ],
    ids=["empty", "truncated", "padded", "oversized-header", "not-json", "pickle", "foreign"],
)
def test_bad_files_are_refused(tmp_path, make, match):
    path = _write(tmp_path / "mask.safetensors", make(_good(tmp_path)))
    before = path.read_bytes()
    with pytest.raises(FileFormatError, match=match):
        Mask.load(path)
    assert path.read_bytes() == before


def _with_header(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def test_shapes_in_metadata_must_match_tensors(tmp_path):
    meta = {"format": "vlticket.mask", "format_version": "1", "shapes": json.dumps({"w": [100]})}
    header = {"__metadata__": meta, "w": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}
    path = _write(tmp_path / "m.safetensors", _with_header(header, b"\xff\xff"))
    with pytest.raises(FileFormatError, match="U8 of shape \\[13\\]"):
        Mask.load(path)
    meta["format_version"] = "99"
    path = _write(tmp_path / "m.safetensors", _with_header(header, b"\xff\xff"))
    with pytest.raises(FileFormatError, match="version '99'"):
        Mask.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileFormatError, match="cannot read"):
        Mask.load(tmp_path / "absent.safetensors")


def test_negative_dimensions_are_refused(tmp_path):
    meta = {"format": "vlticket.mask", "format_version": "1", "shapes": json.dumps({"w": [-8]})}
    header = {"__metadata__": meta, "w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}
    path = _write(tmp_path / "m.safetensors", _with_header(header, b"\xff"))
    with pytest.raises(FileFormatError, match="'shapes'"):
        Mask.load(path)


def test_a_directory_is_not_a_mask(tmp_path):
    (tmp_path / "d.safetensors").mkdir()
    with pytest.raises(FileFormatError, match="cannot read"):
        Mask.load(tmp_path / "d.safetensors")


def test_saved_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        Mask({"w": torch.ones(3, dtype=torch.bool)}).save(tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o644
