"""Sparse checkpoints: kept values + the 1-bit mask, loaded back bit for bit, checked first."""

import json

import pytest
import torch
import transformers
from hub_server import hub  # noqa: F401  (pytest fixture)
from hypothesis import given, settings
from hypothesis import strategies as st

import vlticket
from vlticket import FileFormatError, NameMismatchError, ShapeMismatchError
from vlticket.core import mask_file
from vlticket.hub import sparse


def _bert(dtype=torch.float32) -> transformers.BertModel:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
    )
    return transformers.BertModel(cfg).eval().to(dtype)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].dtype == sb[k].dtype
        and torch.equal(
            sa[k].view(-1).view(torch.uint8) if sa[k].dtype.is_floating_point else sa[k],
            sb[k].view(-1).view(torch.uint8) if sb[k].dtype.is_floating_point else sb[k],
        )
        for k in sa
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_transformers_round_trip_is_bit_exact(tmp_path, dtype):
    model = _bert(dtype)
    mask = vlticket.prune_magnitude(model, sparsity=0.7)
    vlticket.save_sparse(model, mask, tmp_path)
    loaded = vlticket.load_sparse(tmp_path)
    assert type(loaded) is transformers.BertModel
    mask.apply(model)
    assert _same(model, loaded)
    ids = torch.randint(0, 100, (2, 5))
    assert torch.equal(model(ids).last_hidden_state, loaded(ids).last_hidden_state)


def test_state_dict_feeds_from_pretrained(tmp_path):
    """Route 3: the checked dense state dict, handed to transformers' own loader."""
    model = _bert()
    mask = vlticket.prune_magnitude(model, sparsity=0.7)
    vlticket.save_sparse(model, mask, tmp_path)
    state = vlticket.load_sparse_state_dict(tmp_path)
    config = transformers.BertConfig.from_pretrained(tmp_path)
    loaded = transformers.BertModel.from_pretrained(None, config=config, state_dict=state)
    mask.apply(model)
    assert _same(model, loaded)
    half = transformers.BertModel.from_pretrained(
        None, config=config, state_dict=state, dtype=torch.bfloat16
    )
    assert half.encoder.layer[0].output.dense.weight.dtype == torch.bfloat16
    (tmp_path / "sparse.safetensors").write_bytes(b"\0" * 64)  # same checks as load_sparse
    with pytest.raises(FileFormatError, match="size and SHA-256"):
        vlticket.load_sparse_state_dict(tmp_path)


def test_fills_a_given_model_in_place(tmp_path, tiny_net):
    mask = vlticket.prune_magnitude(tiny_net, sparsity=0.6)
    vlticket.save_sparse(tiny_net, mask, tmp_path)
    assert not (tmp_path / "config.json").exists()  # not a transformers model
    other = type(tiny_net)()
    assert vlticket.load_sparse(tmp_path, other) is other
    mask.apply(tiny_net)
    assert _same(tiny_net, other)
    with pytest.raises(vlticket.ArgumentError, match="pass the model"):
        vlticket.load_sparse(tmp_path)


def test_adapter_names_map_to_state_keys(tmp_path, tiny_net):
    class Named:
        name = "named"

        def names(self, model):
            return {"first": "fc1.weight", "second": "fc2.weight"}

        def prunable(self, model):
            return {c: model.get_parameter(p) for c, p in self.names(model).items()}

    found = {"first": tiny_net.fc1.weight, "second": tiny_net.fc2.weight}
    mask = vlticket.prune_magnitude(found, sparsity=0.5)
    vlticket.save_sparse(tiny_net, mask, tmp_path, adapter=Named())
    record = json.loads((tmp_path / sparse.SPARSE_CONFIG).read_text())
    assert record["tensors"] == {"first": "fc1.weight", "second": "fc2.weight"}


def test_bytes_are_deterministic_and_small(tmp_path):
    model = _bert()
    mask = vlticket.prune_magnitude(model, sparsity=0.7)
    a, b = (
        vlticket.save_sparse(model, mask, tmp_path / "a"),
        vlticket.save_sparse(model, mask, tmp_path / "b"),
    )
    for name in ("sparse.safetensors", "mask.safetensors", "vlticket_sparse.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()

    # Size: only the masked tensors' kept values and mask bits, beside the dense rest.
    def data_bytes(path, names):
        header, _ = vlticket._files.read_header(path)
        return sum(header[n]["data_offsets"][1] - header[n]["data_offsets"][0] for n in names)

    masked = data_bytes(a / "sparse.safetensors", mask) + data_bytes(a / "mask.safetensors", mask)
    bits = masked * 8 / mask.numel
    assert bits <= 0.3 * 32 + 1.1


def test_a_mask_for_another_model_writes_nothing(tmp_path, tiny_net):
    mask = vlticket.prune_magnitude(_bert(), sparsity=0.5)
    with pytest.raises(NameMismatchError):
        vlticket.save_sparse(tiny_net, mask, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_save_replaces_the_folder_whole_or_not_at_all(tmp_path, tiny_net, monkeypatch):
    """Re-saving swaps the folder in whole; a save that fails part-way leaves the old
    checkpoint loadable and nothing behind; a folder of other files is refused."""
    folder = tmp_path / "ckpt"
    old_mask = vlticket.prune_magnitude(tiny_net, sparsity=0.5)
    vlticket.save_sparse(tiny_net, old_mask, folder)
    old_bytes = {p.name: p.read_bytes() for p in folder.iterdir()}
    new_mask = vlticket.prune_magnitude(tiny_net, sparsity=0.8)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(vlticket._files, "save_safetensors", disk_full)
    with pytest.raises(OSError, match="left as it was"):
        vlticket.save_sparse(tiny_net, new_mask, folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == old_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no staging folder left
    monkeypatch.undo()

    vlticket.save_sparse(tiny_net, new_mask, folder)  # a sparse folder is replaced
    loaded = vlticket.load_sparse(folder, type(tiny_net)())
    assert loaded.state_dict()["fc1.weight"].count_nonzero() == new_mask["fc1.weight"].sum()

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(vlticket.ArgumentError, match=r"`folder`: .* neither empty nor a sparse"):
        vlticket.save_sparse(tiny_net, new_mask, mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_a_load_during_a_save_gets_the_old_or_the_new_checkpoint(tmp_path, tiny_net, monkeypatch):
    """A save swapped in while a load reads the folder: the load reads again, never a mix."""
    folder = tmp_path / "ckpt"
    vlticket.save_sparse(tiny_net, vlticket.prune_magnitude(tiny_net, sparsity=0.5), folder)
    newer = type(tiny_net)()
    new_mask = vlticket.prune_magnitude(newer, sparsity=0.8)
    read_files, reads = sparse._read_files, []

    def swapped_midway(where, record):  # the old record is read; then the folder is replaced
        reads.append(record["files"]["sparse.safetensors"]["sha256"])
        if len(reads) == 1:
            vlticket.save_sparse(newer, new_mask, folder)
        return read_files(where, record)

    monkeypatch.setattr(sparse, "_read_files", swapped_midway)
    loaded = vlticket.load_sparse(folder, type(tiny_net)())
    assert len(reads) == 2 and reads[0] != reads[1]  # read again, from the new folder
    new_mask.apply(newer)
    assert _same(newer, loaded)


def test_wrong_model_on_load_is_untouched(tmp_path, tiny_net):
    vlticket.save_sparse(tiny_net, vlticket.prune_magnitude(tiny_net, sparsity=0.5), tmp_path)
    other = torch.nn.Linear(8, 16)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(NameMismatchError):
        vlticket.load_sparse(tmp_path, other)
    half = type(tiny_net)().half()
    with pytest.raises(ShapeMismatchError, match="float16"):
        vlticket.load_sparse(tmp_path, half)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


@pytest.mark.parametrize(
    "victim", ["sparse.safetensors", "mask.safetensors", "vlticket_sparse.json"]
)
def test_corrupt_files_are_refused_before_the_model_changes(tmp_path, tiny_net, victim):
    vlticket.save_sparse(tiny_net, vlticket.prune_magnitude(tiny_net, sparsity=0.5), tmp_path)
    path = tmp_path / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    target = type(tiny_net)()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(FileFormatError):
        vlticket.load_sparse(tmp_path, target)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_a_consistent_but_lying_record_is_refused(tmp_path, tiny_net):
    """Record hashes match, but the weights file declares another length: header check."""
    mask = vlticket.prune_magnitude(tiny_net, sparsity=0.5)
    vlticket.save_sparse(tiny_net, mask, tmp_path)
    other = vlticket.prune_magnitude(tiny_net, sparsity=0.6)
    other.save(tmp_path / "mask.safetensors")
    record = json.loads((tmp_path / sparse.SPARSE_CONFIG).read_text())
    record["files"]["mask.safetensors"] = vlticket.hub.file_record(tmp_path / "mask.safetensors")
    (tmp_path / sparse.SPARSE_CONFIG).write_text(json.dumps(record))
    with pytest.raises(FileFormatError, match="shape"):
        vlticket.load_sparse(tmp_path, type(tiny_net)())


def test_push_and_pull_through_the_hub(hub, tmp_path):  # noqa: F811
    model = _bert()
    mask = vlticket.prune_magnitude(model, sparsity=0.7)
    url = vlticket.push_sparse(model, mask, "alice/tiny-sparse")
    assert url.startswith(f"{hub.url}/alice/tiny-sparse/commit/")
    assert set(hub.files("alice/tiny-sparse")) >= set(sparse.SPARSE_FILES)
    loaded = vlticket.load_sparse("alice/tiny-sparse")
    state = vlticket.load_sparse_state_dict("alice/tiny-sparse")
    mask.apply(model)
    assert _same(model, loaded)
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], t) for k, t in model.state_dict().items())


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    dtype=st.sampled_from(
        [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool, torch.complex128]
    ),
    transposed=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fill_writes_exactly_the_masked_tensor(shape, dtype, transposed, seed):
    """The loader's in-place fill equals ``t * keep`` bit for bit, contiguous or not."""
    g = torch.Generator().manual_seed(seed)
    t = (torch.randn(shape, generator=g) * 100).to(dtype)
    keep = torch.rand(shape, generator=g) > 0.6
    bits = mask_file._pack(keep).numpy()
    dest = torch.full(shape[::-1], 7, dtype=dtype).permute(*range(len(shape) - 1, -1, -1))
    dest = dest if transposed else torch.empty_like(t)
    sparse._fill(dest, bits, t[keep])
    assert torch.equal(dest, torch.where(keep, t, torch.zeros((), dtype=dtype)))


def test_a_wrong_hash_is_named_even_when_the_header_breaks_first(tmp_path, tiny_net):
    vlticket.save_sparse(tiny_net, vlticket.prune_magnitude(tiny_net, sparsity=0.5), tmp_path)
    path = tmp_path / "sparse.safetensors"
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF  # inside the JSON header
    path.write_bytes(bytes(data))
    with pytest.raises(FileFormatError, match="SHA-256"):
        vlticket.load_sparse(tmp_path, type(tiny_net)())


def test_tied_weights_stay_masked_in_place(tmp_path):
    """A tied tensor has two state keys; the one the mask names is saved sparse, the other
    dense, and loading must leave the shared tensor masked."""

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
            self.b.weight = self.a.weight

    model = Tied()
    mask = vlticket.prune_magnitude(model, sparsity=0.5)
    vlticket.save_sparse(model, mask, tmp_path)
    other = vlticket.load_sparse(tmp_path, Tied())
    mask.apply(model)
    assert torch.equal(other.a.weight, model.a.weight) and other.b.weight is other.a.weight


def _masked_lm() -> transformers.BertForMaskedLM:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        vocab_size=50,
    )
    return transformers.BertForMaskedLM(cfg).eval()


def test_tied_embeddings_stay_masked_on_every_route(tmp_path):
    """BertForMaskedLM's decoder is its word embeddings: both names must load masked, whether
    the model is rebuilt, filled, or loaded from the state dict (the second name was stored
    unpruned, and tie_weights / from_pretrained let it win)."""
    model = _masked_lm()
    mask = vlticket.prune_magnitude(model, sparsity=0.7, adapter=None)
    assert "bert.embeddings.word_embeddings.weight" in mask
    vlticket.save_sparse(model, mask, tmp_path)
    mask.apply(model)
    rebuilt = vlticket.load_sparse(tmp_path)
    filled = vlticket.load_sparse(tmp_path, _masked_lm())
    state = vlticket.load_sparse_state_dict(tmp_path)
    assert _same(model, rebuilt) and _same(model, filled)
    assert all(torch.equal(state[k], t) for k, t in model.state_dict().items())
    assert rebuilt.cls.predictions.decoder.weight is rebuilt.bert.embeddings.word_embeddings.weight


def test_the_masks_recorded_adapter_is_the_default(tmp_path):
    """prune_magnitude records the family adapter it detected; save_sparse uses it as apply
    does, instead of failing on the canonical names."""
    model = _masked_lm()
    mask = vlticket.prune_magnitude(model, sparsity=0.7)
    assert mask.adapter is not None
    vlticket.save_sparse(model, mask, tmp_path)
    mask.apply(model)
    assert _same(model, vlticket.load_sparse(tmp_path))


def test_an_unsavable_tensor_is_refused_before_any_file_changes(tmp_path, tiny_net):
    old = vlticket.prune_magnitude(tiny_net, sparsity=0.5)
    vlticket.save_sparse(tiny_net, old, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    tiny_net.register_buffer("phase", torch.zeros(2, dtype=torch.complex64))
    with pytest.raises(vlticket.ArgumentError, match="'phase'.*complex64"):
        vlticket.save_sparse(tiny_net, old, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_folder_of_the_users_files_is_never_replaced(tmp_path, tiny_net, monkeypatch):
    """Even files with a sparse folder's names are the user's without the record beside them;
    the working directory is refused (swapping it would strand the process in a deleted
    folder), and a relative path inside it saves as any other."""
    mask = vlticket.prune_magnitude(tiny_net, sparsity=0.5)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "config.json").write_text('{"mine": true}')
    with pytest.raises(vlticket.ArgumentError, match="no vlticket_sparse.json"):
        vlticket.save_sparse(tiny_net, mask, theirs)
    assert (theirs / "config.json").read_text() == '{"mine": true}'
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    with pytest.raises(vlticket.ArgumentError, match="current working directory"):
        vlticket.save_sparse(tiny_net, mask, ".")
    assert list(here.iterdir()) == []
    vlticket.save_sparse(tiny_net, mask, "ckpt")
    vlticket.save_sparse(tiny_net, mask, "ckpt")  # and replaced there
    assert sorted(p.name for p in here.iterdir()) == ["ckpt"]  # nothing left beside it


def test_keys_tied_in_the_model_but_not_in_the_folder_are_refused(tmp_path):
    """Two pruned tensors saved apart cannot both fill one tied tensor: refused, untouched."""

    class Pair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(8, 8, bias=False)
            self.b = torch.nn.Linear(8, 8, bias=False)

    torch.manual_seed(0)
    apart = Pair()
    vlticket.save_sparse(apart, vlticket.prune_magnitude(apart, sparsity=0.5), tmp_path / "x")
    tied = Pair()
    tied.b.weight = tied.a.weight
    before = tied.a.weight.detach().clone()
    with pytest.raises(vlticket.ArgumentError, match="'a.weight' and 'b.weight' are one tensor"):
        vlticket.load_sparse(tmp_path / "x", tied)
    assert torch.equal(tied.a.weight, before)
    same = Pair()  # the same values under both names: filled once, without a race
    same.b.weight = same.a.weight
    mask = vlticket.Mask({"a.weight": torch.rand(8, 8) > 0.5})
    vlticket.save_sparse(same, mask, tmp_path / "y")
    mask.apply(same)
    loaded = Pair()
    loaded.b.weight = loaded.a.weight
    vlticket.load_sparse(tmp_path / "y", loaded)
    assert torch.equal(loaded.a.weight, same.a.weight)


def test_meta_models_and_exported_models_are_refused(tmp_path, tiny_net):
    mask = vlticket.prune_magnitude(tiny_net, sparsity=0.5)
    with torch.device("meta"):
        ghost = type(tiny_net)()
    with pytest.raises(vlticket.ArgumentError, match="meta device"):
        vlticket.save_sparse(ghost, mask, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    vlticket.save_sparse(tiny_net, mask, tmp_path)
    with pytest.raises(vlticket.ArgumentError, match="meta device"):  # was a silent no-op
        vlticket.load_sparse(tmp_path, ghost)
    linears = vlticket.Mask({"fc2.weight": mask["fc2.weight"]})
    exported = vlticket.export(type(tiny_net)(), linears, min_sparsity=0.0)
    with pytest.raises(NameMismatchError, match="fc2.weight"):  # no dense weight left to save
        vlticket.save_sparse(exported, linears, tmp_path)
    holder = torch.nn.Linear(4, 4)
    holder.register_buffer("table", torch.eye(4).to_sparse_csr())
    with pytest.raises(vlticket.ArgumentError, match="'table' is torch.sparse_csr"):
        vlticket.save_sparse(holder, vlticket.prune_magnitude(holder, sparsity=0.5), tmp_path)


def test_data_parallel_models_use_the_inner_names(tmp_path, tiny_net):
    mask = vlticket.prune_magnitude(tiny_net, sparsity=0.5)
    vlticket.save_sparse(torch.nn.DataParallel(tiny_net), mask, tmp_path)
    record = json.loads((tmp_path / sparse.SPARSE_CONFIG).read_text())
    assert set(record["shapes"]) == set(tiny_net.state_dict())
    wrapped = torch.nn.DataParallel(type(tiny_net)())
    vlticket.load_sparse(tmp_path, wrapped)
    mask.apply(tiny_net)
    assert _same(tiny_net, wrapped.module)
