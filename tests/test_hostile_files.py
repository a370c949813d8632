"""Nothing lost on bad input or a crash: hostile files, failed writes, and concurrent saves.

Every malformed file is a FileFormatError; a failed write names its file and leaves the old one;
a ticket folder is replaced whole or not at all; readers loading while a writer re-saves see the
old ticket or the new one.
"""

import errno
import json
import os
import struct
import threading

import pytest
import torch
from hub_server import hub  # noqa: F401  (pytest fixture)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vlticket
from vlticket import ArgumentError, Checkpoint, FileFormatError, Mask, Ticket, _files
from vlticket import hub as vhub
from vlticket.hub import ticket as ticket_module


def _mask(seed=0):
    g = torch.Generator().manual_seed(seed)
    return Mask(
        {
            "a.weight": torch.rand(6, 5, generator=g) < 0.5,
            "b.weight": torch.rand(7, generator=g) < 0.5,
        }
    )


def _checkpoint(seed=0):
    g = torch.Generator().manual_seed(seed)
    return Checkpoint(
        {"a.weight": torch.randn(6, 5, generator=g), "b.weight": torch.randn(7, generator=g)}
    )


def _ticket(seed=0):
    return Ticket(_mask(seed), checkpoint=_checkpoint(seed), task="vqa", score=0.5)


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _header_file(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


MASK_META = {"format": "vlticket.mask", "format_version": "1"}
CKPT_META = {"format": "vlticket.checkpoint", "format_version": "1"}


# -- 1. folders replaced whole ------------------------------------------------------------------
@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-aside"])
def test_resave_replaces_the_folder_whole(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(_files, "_exchange", lambda a, b: False)
    folder = _ticket(0).save_pretrained(tmp_path / "t")
    inode = folder.stat().st_ino
    _ticket(1).save_pretrained(folder)
    assert folder.stat().st_ino != inode  # a new folder, not files rewritten in place
    back = Ticket.from_pretrained(folder, checkpoint=True)
    assert back.mask == _mask(1) and torch.equal(
        back.checkpoint["b.weight"], _checkpoint(1)["b.weight"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]  # no staging or old folder left


@pytest.mark.parametrize("failing", ["checkpoint", "card", "fsync"])
def test_a_failed_resave_keeps_the_old_ticket_and_leaves_nothing_behind(
    tmp_path, monkeypatch, failing
):
    folder = _ticket(0).save_pretrained(tmp_path / "t")
    before = _snapshot(folder)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    target = {
        "checkpoint": (Checkpoint, "save"),
        "card": (ticket_module, "model_card"),
        "fsync": (_files.os, "fsync"),
    }[failing]
    monkeypatch.setattr(*target, disk_full)
    with pytest.raises(OSError, match="cannot save '.*t', left as it was: .*No space left") as info:
        _ticket(1).save_pretrained(folder)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert _snapshot(folder) == before
    assert Ticket.from_pretrained(folder).mask == _mask(0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_save_refuses_a_folder_with_other_files(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    with pytest.raises(ArgumentError, match=r"neither empty nor a ticket folder.*thesis\.tex"):
        _ticket().save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArgumentError, match="exists and is not a folder"):
        _ticket().save_pretrained(tmp_path / "file")
    ticket_folder = _ticket().save_pretrained(tmp_path / "t")
    (ticket_folder / "notes.txt").write_text("mine")
    with pytest.raises(ArgumentError, match="notes.txt"):
        _ticket(1).save_pretrained(ticket_folder)
    assert (ticket_folder / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert Ticket.from_pretrained(_ticket().save_pretrained(empty)).mask == _mask()


def test_save_through_a_symlink_replaces_the_target_folder(tmp_path):
    real = _ticket(0).save_pretrained(tmp_path / "real")
    (tmp_path / "link").symlink_to(real)
    _ticket(1).save_pretrained(tmp_path / "link")
    assert (tmp_path / "link").is_symlink()
    assert Ticket.from_pretrained(tmp_path / "link").mask == _mask(1)


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-aside"])
def test_readers_see_the_old_or_the_new_ticket_while_a_writer_resaves(
    tmp_path, monkeypatch, exchange
):
    if not exchange:
        monkeypatch.setattr(_files, "_exchange", lambda a, b: False)
    folder = tmp_path / "t"
    tickets = [_ticket(0), _ticket(1)]
    masks = [_mask(0), _mask(1)]
    tickets[0].save_pretrained(folder)
    done = threading.Event()
    errors = []

    def writer():
        try:
            for i in range(40):
                tickets[i % 2].save_pretrained(folder)
        except BaseException as e:  # reported by the main thread
            errors.append(e)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    loads = 0
    try:
        while not done.is_set() or loads < 5:
            got = Ticket.from_pretrained(folder, checkpoint=True)
            assert got.mask in masks
            i = masks.index(got.mask)
            assert torch.equal(got.checkpoint["a.weight"], _checkpoint(i)["a.weight"])
            loads += 1
    finally:
        thread.join()
    assert not errors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_download_that_fails_validation_leaves_no_folder(hub, tmp_path):  # noqa: F811
    good = _ticket().save_pretrained(tmp_path / "good")
    files = _snapshot(good)
    files[vhub.MASK_FILE] = files[vhub.MASK_FILE][:-1]  # config's size and hash now disagree
    hub.put("mallory/t", files)
    with pytest.raises(FileFormatError, match="bytes"):
        vhub.download_ticket("mallory/t", tmp_path / "pulled")
    assert not (tmp_path / "pulled").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("hf")) == ["good"]
    existing = _ticket(1).save_pretrained(tmp_path / "pulled")
    before = _snapshot(existing)
    with pytest.raises(FileFormatError):
        vhub.download_ticket("mallory/t", existing)
    assert _snapshot(existing) == before


def test_download_replaces_an_earlier_download_whole(hub, tmp_path):  # noqa: F811
    _ticket(0).push_to_hub("alice/t")
    out = vhub.download_ticket("alice/t", tmp_path / "pulled")
    assert sorted(p.name for p in out.iterdir()) == sorted(vhub.TICKET_FILES)
    _ticket(1).push_to_hub("alice/t")
    vhub.download_ticket("alice/t", out)
    assert Ticket.from_pretrained(out).mask == _mask(1)


# -- 2. only regular files, size capped ---------------------------------------------------------
@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "folder"])
@pytest.mark.parametrize("name", [vhub.CONFIG_FILE, vhub.MASK_FILE, vhub.CHECKPOINT_FILE])
def test_a_ticket_file_that_is_not_a_regular_file_is_refused(tmp_path, kind, name):
    folder = _ticket().save_pretrained(tmp_path / "t")
    (folder / name).unlink()
    if kind == "dev-zero":
        (folder / name).symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(folder / name)  # no writer: a blocking open or read would hang
    else:
        (folder / name).mkdir()
    match = "a folder" if kind == "folder" else "not a regular file"
    with pytest.raises(FileFormatError, match=match):
        Ticket.from_pretrained(folder, checkpoint=True)


@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
def test_mask_and_checkpoint_loaders_refuse_special_files(tmp_path, kind):
    path = tmp_path / "x.safetensors"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    for load in (Mask.load, Checkpoint.load, Mask.read_metadata):
        with pytest.raises(FileFormatError, match="not a regular file"):
            load(path)


def test_a_symlink_to_a_regular_file_is_read(tmp_path):
    _mask().save(tmp_path / "real.safetensors")
    (tmp_path / "link.safetensors").symlink_to(tmp_path / "real.safetensors")
    assert Mask.load(tmp_path / "link.safetensors") == _mask()


def test_an_oversized_config_is_refused_before_it_is_read(tmp_path, monkeypatch):
    folder = _ticket().save_pretrained(tmp_path / "t")
    monkeypatch.setattr(ticket_module, "MAX_CONFIG_BYTES", 100)
    with pytest.raises(FileFormatError, match="over the limit of 100"):
        Ticket.from_pretrained(folder)


# -- 3. every malformed file is a FileFormatError -----------------------------------------------
def _mask_with(shapes, entry_shape, data):
    meta = {**MASK_META, "shapes": json.dumps(shapes)}
    header = {
        "__metadata__": meta,
        "w": {"dtype": "U8", "shape": entry_shape, "data_offsets": [0, len(data)]},
    }
    return _header_file(header, data)


@pytest.mark.parametrize(
    "content, match",
    [
        (_mask_with({"w": [1] * 65}, [1], b"\x01"), "'shapes'"),
        (_mask_with({"w": [10**200, 10**200]}, [1], b"\x01"), "should be U8 of shape"),
        (_mask_with({"w": [-1, -8]}, [1], b"\x01"), "'shapes'"),
        (_mask_with({"w": [True]}, [1], b"\x01"), "'shapes'"),
        (_mask_with(["w"], [1], b"\x01"), "'shapes'"),
        (_mask_with({"w": [8]}, [True], b"\x01"), "malformed header entry"),
        (_mask_with({"w": [8]}, [1] * 65, b"\x01"), "malformed header entry"),
        (_header_file({"w": {"dtype": "U8", "shape": [1], "data_offsets": [0]}}, b"x"), "entry"),
        (_header_file({"w": "U8"}, b""), "malformed header entry"),
        (
            _header_file({"w": {"dtype": ["U8"], "shape": [1], "data_offsets": [0, 1]}}, b"x"),
            "entry",
        ),
        (_header_file({"__metadata__": {"shapes": "[" * 10_000}}, b""), "not a vlticket.mask"),
    ],
    ids=[
        "65-dims",
        "huge-dims",
        "negative",
        "bool-dim",
        "shapes-not-object",
        "bool-entry-shape",
        "65-entry-dims",
        "one-offset",
        "entry-not-object",
        "dtype-list",
        "deep-json",
    ],
)
def test_malformed_mask_headers_are_format_errors(tmp_path, content, match):
    path = tmp_path / "m.safetensors"
    path.write_bytes(content)
    with pytest.raises(FileFormatError, match=match):
        Mask.load(path)


def _checkpoint_with(names, dtype="F32", nbytes=4):
    meta = {**CKPT_META, "names": names}
    header = {
        "__metadata__": meta,
        "w": {"dtype": dtype, "shape": [1], "data_offsets": [0, nbytes]},
    }
    return _header_file(header, b"\0" * nbytes)


@pytest.mark.parametrize(
    "content, match",
    [
        (_checkpoint_with('["w"]', dtype="I32"), "dtype I32"),
        (_checkpoint_with('["w"]', dtype="BOOL", nbytes=1), "dtype BOOL"),
        (_checkpoint_with('"w"'), "list of tensor names"),
        (_checkpoint_with('{"w": 1}'), "list of tensor names"),
        (_checkpoint_with("[1]"), "list of tensor names"),
        (_checkpoint_with("[" * 100_000), "'names'"),
        (_checkpoint_with('["w", "w"]'), "do not match"),
        (_checkpoint_with("not json"), "'names'"),
    ],
    ids=["int", "bool", "str", "dict", "int-name", "deep", "duplicate", "not-json"],
)
def test_malformed_checkpoints_are_format_errors(tmp_path, content, match):
    path = tmp_path / "c.safetensors"
    path.write_bytes(content)
    with pytest.raises(FileFormatError, match=match):
        Checkpoint.load(path)


def test_truncated_checkpoint_and_folder_in_place_of_a_file(tmp_path):
    _checkpoint().save(tmp_path / "c.safetensors")
    data = (tmp_path / "c.safetensors").read_bytes()
    for cut in (0, 7, 8, 20, len(data) - 1):
        (tmp_path / "c.safetensors").write_bytes(data[:cut])
        with pytest.raises(FileFormatError):
            Checkpoint.load(tmp_path / "c.safetensors")
    (tmp_path / "d").mkdir()
    with pytest.raises(FileFormatError, match="a folder"):
        Checkpoint.load(tmp_path / "d")


def _valid_files(tmp_path):
    _mask().save(tmp_path / "m.safetensors", metadata={"base_model": "org/x"})
    _checkpoint().save(tmp_path / "c.safetensors")
    return (tmp_path / "m.safetensors").read_bytes(), (tmp_path / "c.safetensors").read_bytes()


def _mutations():
    flip = st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255))
    cut = st.tuples(st.just("cut"), st.integers(0, 10**6), st.just(0))
    insert = st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255))
    header = st.tuples(
        st.just("header"),
        st.sampled_from(["dtype", "shape", "data_offsets", "shapes", "names", "format"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-(2**70), 2**70),
            st.floats(allow_nan=False),
            st.text(max_size=5),
            st.lists(st.integers(-(2**66), 2**66), max_size=70),
            st.sampled_from(
                ["U8", "I32", "F8_E4M3", "BF16", "F64", "BOOL", "[]", "{}", '["a.weight"]']
            ),
        ),
    )
    return st.lists(st.one_of(flip, cut, insert, header), min_size=1, max_size=3)


def _mutate(data: bytes, ops) -> bytes:
    for op, where, value in ops:
        if op == "header" and len(data) >= 8:
            (n,) = struct.unpack("<Q", data[:8])
            try:
                header = json.loads(data[8 : 8 + n])
            except ValueError:
                continue
            if not isinstance(header, dict):
                continue
            if where in ("shapes", "names", "format"):
                meta = header.get("__metadata__")
                if isinstance(meta, dict) and where in meta:
                    meta[where] = value if isinstance(value, str) else json.dumps(value)
            else:
                for entry in header.values():
                    if isinstance(entry, dict) and where in entry:
                        entry[where] = value
                        break
            raw = json.dumps(header).encode()
            data = struct.pack("<Q", len(raw)) + raw + data[8 + n :]
        elif op != "header" and data:
            i = where % (len(data) + 1)
            if op == "flip" and i < len(data):
                data = data[:i] + bytes([data[i] ^ value]) + data[i + 1 :]
            elif op == "cut":
                data = data[:i]
            elif op == "insert":
                data = data[:i] + bytes([value]) + data[i:]
    return data


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=_mutations(), which=st.sampled_from(["mask", "checkpoint"]))
def test_fuzzed_files_load_or_raise_a_format_error(tmp_path, ops, which):
    mask_bytes, ckpt_bytes = _valid_files(tmp_path)
    original = mask_bytes if which == "mask" else ckpt_bytes
    data = _mutate(original, ops)
    path = tmp_path / "fuzzed.safetensors"
    path.write_bytes(data)
    load = Mask.load if which == "mask" else Checkpoint.load
    try:
        loaded = load(path)
    except FileFormatError:
        return
    if data == original:
        expected = _mask() if which == "mask" else _checkpoint()
        assert list(loaded) == list(expected)
        assert all(torch.equal(loaded[n], expected[n]) for n in expected)
    # Whatever loaded is well-formed: it saves and loads back to the same values.
    loaded.save(tmp_path / "again.safetensors")
    again = load(tmp_path / "again.safetensors")
    assert list(again) == list(loaded)
    assert all(torch.equal(again[n], loaded[n]) for n in loaded)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=_mutations(), which=st.sampled_from([vhub.MASK_FILE, vhub.CHECKPOINT_FILE]))
def test_fuzzed_ticket_folders_load_unchanged_or_raise_a_format_error(tmp_path, ops, which):
    folder = tmp_path / "t"
    if not folder.exists():
        _ticket().save_pretrained(folder)
    original = (folder / which).read_bytes()
    try:
        (folder / which).write_bytes(_mutate(original, ops))
        try:
            got = Ticket.from_pretrained(folder, checkpoint=True)
        except FileFormatError:
            return
        # The config's SHA-256 lets only the exact files through.
        assert got.mask == _mask()
        assert torch.equal(got.checkpoint["a.weight"], _checkpoint()["a.weight"])
    finally:
        (folder / which).write_bytes(original)


# -- 4. failed writes ---------------------------------------------------------------------------
def test_a_failed_write_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    _checkpoint(0).save(path)
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_files.os, "fsync", disk_full)
    with pytest.raises(OSError, match=r"cannot write '.*c\.safetensors': No space left") as info:
        _checkpoint(1).save(path)
    assert info.value.errno == errno.ENOSPC
    with pytest.raises(OSError, match=r"cannot write '.*m\.safetensors'"):
        _mask().save(tmp_path / "m.safetensors")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]


def test_a_failed_write_during_the_data_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    _mask(0).save(path)
    before = path.read_bytes()
    real_open = open

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def failing_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return FullDisk(f) if "w" in mode else f

    monkeypatch.setattr("builtins.open", failing_open)
    with pytest.raises(OSError, match="cannot write .*No space left"):
        _mask(1).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


# -- 5. deterministic, strict files -------------------------------------------------------------
def test_saving_a_ticket_twice_gives_the_same_bytes(tmp_path):
    a = _ticket().save_pretrained(tmp_path / "a")
    b = _ticket().save_pretrained(tmp_path / "b")
    files_a, files_b = _snapshot(a), _snapshot(b)
    assert sorted(files_a) == sorted(vhub.TICKET_FILES)
    assert files_a == files_b
    _ticket().save_pretrained(a)  # a re-save over itself too
    assert _snapshot(a) == files_b


def test_config_json_is_strict(tmp_path):
    folder = _ticket().save_pretrained(tmp_path / "t")
    text = (folder / vhub.CONFIG_FILE).read_text()

    def refuse(constant):
        raise ValueError(f"non-strict JSON constant {constant}")

    json.loads(text, parse_constant=refuse)
    with pytest.raises(ArgumentError, match="finite"):
        Ticket(_mask(), score=float("nan"))
    with pytest.raises(ArgumentError, match="finite"):
        Ticket(_mask(), dense_score=float("inf"))


def test_apply_checks_everything_before_writing(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(5, 6))
    before = model[0].weight.clone()
    with pytest.raises(vlticket.NameMismatchError):
        _ticket().apply(model)
    assert torch.equal(model[0].weight, before)
