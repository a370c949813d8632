import json
import pickle
import struct

import pytest
import torch
from hub_server import TOKEN, hub  # noqa: F401  (pytest fixture)
from huggingface_hub import ModelCard
from huggingface_hub.utils import LocalEntryNotFoundError

import vlticket
from vlticket import (
    ArgumentError,
    Checkpoint,
    FileFormatError,
    Mask,
    NameMismatchError,
    ShapeMismatchError,
    ticket_config,
)
from vlticket import hub as vhub
from vlticket.adapters import groups_for

INFO = dict(
    base_model="org/tiny-base",
    base_model_revision="abc123",
    method="imp",
    amount=0.1,
    rounds=3,
    rewind_step=0,
    scope="global",
    seed=7,
    task="vqa",
    metric="accuracy",
    score=0.5,
    dense_score=0.52,
)


@pytest.fixture
def mask(tiny_net):
    return vlticket.prune_magnitude(tiny_net, sparsity=0.5)


@pytest.fixture
def folder(tmp_path, mask):
    return mask.save_pretrained(tmp_path / "ticket", **INFO)


def _config(folder):
    return json.loads((folder / vhub.CONFIG_FILE).read_text())


# -- local folders ----------------------------------------------------------------------------
def test_save_pretrained_writes_the_three_files(folder, mask):
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "mask.safetensors",
        "vlticket_config.json",
    ]
    config = _config(folder)
    assert config["fingerprint"] == {n: list(s) for n, s in mask.shapes().items()}
    assert config["base_model"] == {"id": "org/tiny-base", "revision": "abc123"}
    assert config["search"] == {
        "method": "imp",
        "amount": 0.1,
        "rounds": 3,
        "rewind_step": 0,
        "scope": "global",
        "seed": 7,
    }
    assert config["metric"] == {"name": "accuracy", "score": 0.5, "dense_score": 0.52}
    assert config["sparsity"]["overall"] == pytest.approx(0.5, abs=0.01)
    fc1 = mask["fc1.weight"]
    assert config["sparsity"]["groups"]["fc1"] == {
        "weights": 128,
        "kept": int(fc1.sum()),
        "sparsity": 1 - int(fc1.sum()) / 128,
    }
    assert (
        config["files"]["mask.safetensors"]["size"] == (folder / "mask.safetensors").stat().st_size
    )


def test_model_card_metadata_and_sparsity_table(folder):
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "vlticket"
    assert card.data.base_model == "org/tiny-base"
    assert {"lottery-ticket", "pruning-mask", "vqa"} <= set(card.data.tags)
    assert "| group | weights | kept | sparsity |" in card.text
    assert "| fc2 | 256 |" in card.text
    assert "iterative magnitude pruning" in card.text


def test_round_trip_local_folder(folder, mask):
    assert Mask.from_pretrained(folder) == mask
    ticket = vhub.load_ticket(folder)
    assert ticket.checkpoint is None and ticket.config["task"] == "vqa"


def test_checkpoint_shared_on_request(tmp_path, tiny_net, mask):
    theta0 = Checkpoint.capture(tiny_net)
    folder = mask.save_pretrained(tmp_path / "t", checkpoint=theta0)
    assert (folder / "checkpoint.safetensors").is_file()
    loaded = vhub.load_ticket(folder, checkpoint=True).checkpoint
    assert set(loaded) == set(theta0)
    assert all(torch.equal(loaded[n], theta0[n]) for n in theta0)
    assert vhub.load_ticket(folder).checkpoint is None


@pytest.mark.parametrize(
    "info, match",
    [
        ({"methd": "imp"}, "unknown ticket information"),
        ({"method": "magnitude"}, "`method`"),
        ({"amount": 1.5}, "`amount`"),
        ({"rounds": "3"}, "`rounds`"),
        ({"scope": "local"}, "`scope`"),
    ],
)
def test_bad_ticket_information_is_refused_before_writing(tmp_path, mask, info, match):
    with pytest.raises(ArgumentError, match=match):
        mask.save_pretrained(tmp_path / "t", **info)
    assert not (tmp_path / "t").exists()


# -- groups of the config's sparsity table (vlticket.adapters.groups_for) ----------------------
@pytest.mark.parametrize(
    "names, expected",
    [
        (
            [
                "bert.encoder.layer.0.q.weight",
                "bert.encoder.layer.1.q.weight",
                "bert.pooler.weight",
            ],
            {
                "encoder.layer.0": ["bert.encoder.layer.0.q.weight"],
                "encoder.layer.1": ["bert.encoder.layer.1.q.weight"],
                "pooler": ["bert.pooler.weight"],
            },
        ),
        (
            ["blocks.3.attn.weight", "head.weight"],
            {"blocks.3": ["blocks.3.attn.weight"], "head": ["head.weight"]},
        ),
        (["w"], {"w": ["w"]}),
        (
            ["vit.layer.0.q.weight", "vit.layer.0.k.weight"],
            {"layer.0": ["vit.layer.0.q.weight", "vit.layer.0.k.weight"]},
        ),
    ],
)
def test_generic_groups(names, expected):
    assert groups_for(names) == expected


def test_unknown_family_falls_back_to_generic_groups():
    names = ["encoder.layer.0.weight", "encoder.layer.1.weight"]
    assert groups_for(names, "no-such-family") == groups_for(names)


def test_known_family_uses_its_adapter_groups():
    names = ["encoder.layer.0.attention.attention.query.weight", "extra.weight"]
    groups = groups_for(names, "vilt")
    assert groups["cross.layer.0"] == groups["attention"] == names[:1]
    assert groups["other"] == ["extra.weight"]


# -- applying a downloaded mask ---------------------------------------------------------------
def test_apply_checks_fingerprint_then_prunes(folder, mask, tiny_net):
    vhub.load_ticket(folder).apply(tiny_net)
    assert torch.equal(tiny_net.fc1.weight != 0, mask["fc1.weight"])


def test_apply_to_another_size_changes_nothing(folder, tiny_net):
    tiny_net.fc2 = torch.nn.Linear(16, 32)
    tiny_net.head = torch.nn.Linear(32, 3)
    before = {n: p.clone() for n, p in tiny_net.named_parameters()}
    with pytest.raises(ShapeMismatchError, match=r"'fc2.weight'.*\(16, 16\).*\(32, 16\)"):
        vhub.load_ticket(folder).apply(tiny_net)
    assert all(torch.equal(p, before[n]) for n, p in tiny_net.named_parameters())


def test_apply_to_another_architecture_names_first_missing_tensor(folder):
    other = torch.nn.Sequential(torch.nn.Linear(8, 16))
    with pytest.raises(NameMismatchError, match="'emb.weight'.*org/tiny-base"):
        vhub.load_ticket(folder).apply(other)


# -- hostile or corrupted folders -------------------------------------------------------------
def _rewrite(folder, name, data, *, fix_config=True):
    (folder / name).write_bytes(data)
    if fix_config:  # a careful attacker also fixes the size and hash in the config
        config = _config(folder)
        config["files"][name] = ticket_config.file_record(folder / name)
        (folder / vhub.CONFIG_FILE).write_text(json.dumps(config))


class _Evil:
    def __reduce__(self):
        return (print, ("pickle code ran",))


@pytest.mark.parametrize(
    "data, match",
    [
        (pickle.dumps(_Evil()), "not a valid safetensors file"),
        (struct.pack("<Q", 1 << 40) + b"{}" * 10, "header length"),
        (b"\x00" * 4, "only 4 bytes"),
    ],
)
def test_hostile_mask_file_is_refused(folder, data, match, capsys):
    _rewrite(folder, "mask.safetensors", data)
    with pytest.raises(FileFormatError, match=match):
        Mask.from_pretrained(folder)
    assert "pickle code ran" not in capsys.readouterr().out


def test_tampered_mask_fails_the_hash_check(folder):
    data = bytearray((folder / "mask.safetensors").read_bytes())
    data[-1] ^= 0xFF
    _rewrite(folder, "mask.safetensors", bytes(data), fix_config=False)
    with pytest.raises(FileFormatError, match="SHA-256"):
        Mask.from_pretrained(folder)


def test_mask_shapes_must_match_config_fingerprint(folder):
    config = _config(folder)
    config["fingerprint"]["fc1.weight"] = [4, 4]
    (folder / vhub.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(FileFormatError, match=r"'fc1.weight' has shape \[16, 8\].*\[4, 4\]"):
        Mask.from_pretrained(folder)


@pytest.mark.parametrize(
    "config, match",
    [
        (b"not json", "not JSON"),
        (b'{"format": "something.else"}', "not a vlticket.ticket config"),
        (b'{"format": "vlticket.ticket", "format_version": 99}', "version 99"),
        (
            b'{"format": "vlticket.ticket", "format_version": 1, "fingerprint": {"a": [-1]}}',
            "'fingerprint' must map",
        ),
    ],
)
def test_bad_config_is_refused(folder, config, match):
    (folder / vhub.CONFIG_FILE).write_bytes(config)
    with pytest.raises(FileFormatError, match=match):
        vhub.load_ticket(folder)


def test_files_outside_the_ticket_are_refused_in_config(folder):
    config = _config(folder)
    config["files"]["pytorch_model.bin"] = {"size": 1, "sha256": "0"}
    (folder / vhub.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(FileFormatError, match="'files'"):
        vhub.load_ticket(folder)


# -- through a Hub-compatible server ------------------------------------------------------------
def test_push_is_one_commit_and_from_pretrained_reads_it_back(hub, mask):  # noqa: F811
    url = mask.push_to_hub("alice/tiny-ticket", **INFO)
    assert url.startswith(f"{hub.url}/alice/tiny-ticket/commit/")
    assert len(hub.commits_posted()) == 1
    writes = [auth for method, _, auth in hub.requests if method == "POST"]
    assert writes and all(auth == f"Bearer {TOKEN}" for auth in writes)
    assert set(hub.files("alice/tiny-ticket")) == {
        ".gitattributes",
        "README.md",
        "mask.safetensors",
        "vlticket_config.json",
    }
    card = hub.files("alice/tiny-ticket")["README.md"].decode()
    assert 'load_ticket("alice/tiny-ticket")' in card
    assert Mask.from_pretrained("alice/tiny-ticket") == mask


def test_revision_selects_the_branch(hub, mask):  # noqa: F811
    mask.push_to_hub("alice/t")
    other = ~mask
    other.push_to_hub("alice/t", revision="v2", commit_message="complement")
    assert Mask.from_pretrained("alice/t") == mask
    assert Mask.from_pretrained("alice/t", revision="v2") == other
    commit = hub.repos["alice/t"].branches["main"]
    assert Mask.from_pretrained("alice/t", revision=commit) == mask


def test_wrong_token_is_an_http_error(hub, mask):  # noqa: F811
    with pytest.raises(OSError, match="401"):
        mask.push_to_hub("alice/t", token="hf_wrong")
    assert hub.commits_posted() == []


def test_offline_mode_serves_from_cache(hub, mask, monkeypatch):  # noqa: F811
    from huggingface_hub import constants

    mask.push_to_hub("alice/t")
    assert Mask.from_pretrained("alice/t") == mask  # fills the cache
    hub.stop()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    n = len(hub.requests)
    assert Mask.from_pretrained("alice/t") == mask
    assert len(hub.requests) == n
    with pytest.raises(LocalEntryNotFoundError):
        Mask.from_pretrained("alice/never-downloaded")


def test_hostile_repo_is_refused_and_unknown_files_never_fetched(hub, folder):  # noqa: F811
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    evil = pickle.dumps(_Evil())
    config = json.loads(files[vhub.CONFIG_FILE])
    config["files"]["mask.safetensors"] = {
        "size": len(evil),
        "sha256": __import__("hashlib").sha256(evil).hexdigest(),
    }
    files.update(
        {
            "mask.safetensors": evil,
            vhub.CONFIG_FILE: json.dumps(config).encode(),
            "pytorch_model.bin": evil,
            "modeling_evil.py": b"import os",
        }
    )
    hub.put("mallory/ticket", files)
    with pytest.raises(FileFormatError, match="not a valid safetensors file"):
        Mask.from_pretrained("mallory/ticket")
    fetched = [path for method, path, _ in hub.requests if "/resolve/" in path]
    assert fetched and not any(p.endswith((".bin", ".py")) for p in fetched)


def test_download_ticket_and_push_folder(hub, folder, tmp_path, mask):  # noqa: F811
    vhub.push_folder(folder, "alice/t")
    assert len(hub.commits_posted()) == 1
    out = vhub.download_ticket("alice/t", tmp_path / "pulled")
    assert (out / "README.md").read_text() == (folder / "README.md").read_text()
    assert Mask.from_pretrained(out) == mask


def test_push_folder_validates_before_any_request(hub, folder):  # noqa: F811
    _rewrite(folder, "mask.safetensors", b"garbage!" * 4)
    with pytest.raises(FileFormatError):
        vhub.push_folder(folder, "alice/t")
    assert hub.requests == []


# -- adapters -----------------------------------------------------------------------------------
class _Wrapped(torch.nn.Module):
    def __init__(self, labels: int) -> None:
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Linear(6, 6))
        self.head = torch.nn.Linear(6, labels)


@pytest.fixture
def pattern_adapter(monkeypatch):
    from vlticket import adapters

    # A private copy of the registry: other test files expect only the built-in adapters.
    monkeypatch.setattr(adapters, "_REGISTRY", dict(adapters._REGISTRY))
    adapter = adapters.PatternAdapter(
        include=[r"backbone\.\d+\.weight"], strip=r"backbone\.", name="hub-test-backbone"
    )
    adapters.register_adapter(adapter, replace=True)
    return adapter


def test_recorded_adapter_is_used_to_apply_on_another_head(tmp_path, pattern_adapter):
    torch.manual_seed(0)
    mask = vlticket.prune_magnitude(_Wrapped(3), sparsity=0.5, adapter=pattern_adapter)
    assert list(mask) == ["0.weight", "1.weight"]
    folder = mask.save_pretrained(tmp_path / "t", adapter=pattern_adapter)
    config = _config(folder)
    assert config["adapter"] == {"family": "hub-test-backbone", "options": []}
    assert "layer.0" in config["sparsity"]["groups"]
    other_task = _Wrapped(10)
    vhub.load_ticket(folder).apply(other_task)  # canonical names found through the adapter
    assert torch.equal(other_task.backbone[1].weight != 0, mask["1.weight"])
    with pytest.raises(NameMismatchError, match="'0.weight'.*model's parameters"):
        vhub.check_fingerprint(mask.shapes(), other_task)


@pytest.mark.parametrize(
    "field, value",
    [("adapter", "vilt"), ("base_model", "x"), ("adapter", {"family": 3}), ("search", [1])],
)
def test_config_fields_of_the_wrong_type_are_refused(folder, field, value):
    config = _config(folder)
    config[field] = value
    (folder / vhub.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(FileFormatError, match=repr(field)):
        vhub.load_ticket(folder)


def test_deeply_nested_config_is_refused(folder):
    (folder / vhub.CONFIG_FILE).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(FileFormatError, match="not JSON"):
        vhub.load_ticket(folder)


def test_resaving_without_checkpoint_removes_the_stale_one(tmp_path, tiny_net, mask, hub):  # noqa: F811
    folder = tmp_path / "t"
    mask.save_pretrained(folder, checkpoint=vlticket.Checkpoint.capture(tiny_net))
    mask.save_pretrained(folder)
    assert not (folder / vhub.CHECKPOINT_FILE).exists()
    (folder / "notes.bin").write_bytes(b"not part of the ticket")
    vhub.push_folder(folder, "alice/clean")
    uploaded = set(hub.files("alice/clean")) - {".gitattributes"}  # the server's own file
    assert uploaded == {vhub.CONFIG_FILE, vhub.MASK_FILE, vhub.CARD_FILE}
