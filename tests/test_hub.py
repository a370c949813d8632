import json
import pickle
import socket
import struct

import pytest
import torch
from hub_server import TOKEN, hub  # noqa: F401  (pytest fixture)
from huggingface_hub import ModelCard
from huggingface_hub.errors import HfHubHTTPError

import vlticket
from vlticket import (
    ArgumentError,
    Checkpoint,
    FileFormatError,
    HubError,
    NameMismatchError,
    ShapeMismatchError,
    Ticket,
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
    return Ticket(mask, **INFO).save_pretrained(tmp_path / "ticket")


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
    ticket = Ticket.from_pretrained(folder)
    assert ticket.mask == mask
    assert ticket.checkpoint is None and ticket.config.task == "vqa"
    Ticket(mask, **INFO).save_pretrained(folder.parent / "again")
    again = Ticket.from_pretrained(folder.parent / "again").config
    assert again == ticket.config  # the config reads back as it was written
    assert repr(ticket).startswith("Ticket(4 tensors, sparsity 0.5")


def test_checkpoint_shared_on_request(tmp_path, tiny_net, mask):
    theta0 = Checkpoint.capture(tiny_net)
    folder = Ticket(mask, checkpoint=theta0).save_pretrained(tmp_path / "t")
    assert (folder / "checkpoint.safetensors").is_file()
    loaded = Ticket.from_pretrained(folder, checkpoint=True).checkpoint
    assert set(loaded) == set(theta0)
    assert all(torch.equal(loaded[n], theta0[n]) for n in theta0)
    assert Ticket.from_pretrained(folder).checkpoint is None


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
        Ticket(mask, **info).save_pretrained(tmp_path / "t")
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
    Ticket.from_pretrained(folder).apply(tiny_net)
    assert torch.equal(tiny_net.fc1.weight != 0, mask["fc1.weight"])


def test_apply_to_another_size_changes_nothing(folder, tiny_net):
    tiny_net.fc2 = torch.nn.Linear(16, 32)
    tiny_net.head = torch.nn.Linear(32, 3)
    before = {n: p.clone() for n, p in tiny_net.named_parameters()}
    with pytest.raises(ShapeMismatchError, match=r"'fc2.weight'.*\(16, 16\).*\(32, 16\)"):
        Ticket.from_pretrained(folder).apply(tiny_net)
    assert all(torch.equal(p, before[n]) for n, p in tiny_net.named_parameters())


def test_apply_to_another_architecture_names_first_missing_tensor(folder):
    other = torch.nn.Sequential(torch.nn.Linear(8, 16))
    with pytest.raises(NameMismatchError, match="mask \\(made for org/tiny-base\\).*'emb.weight'"):
        Ticket.from_pretrained(folder).apply(other)


# -- hostile or corrupted folders -------------------------------------------------------------
def _rewrite(folder, name, data, *, fix_config=True):
    (folder / name).write_bytes(data)
    if fix_config:  # a careful attacker also fixes the size and hash in the config
        config = _config(folder)
        config["files"][name] = vhub.file_record(folder / name)
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
        Ticket.from_pretrained(folder)
    assert "pickle code ran" not in capsys.readouterr().out


def test_tampered_mask_fails_the_hash_check(folder):
    data = bytearray((folder / "mask.safetensors").read_bytes())
    data[-1] ^= 0xFF
    _rewrite(folder, "mask.safetensors", bytes(data), fix_config=False)
    with pytest.raises(FileFormatError, match="SHA-256"):
        Ticket.from_pretrained(folder)


def test_mask_shapes_must_match_config_fingerprint(folder):
    config = _config(folder)
    config["fingerprint"]["fc1.weight"] = [4, 4]
    (folder / vhub.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(
        FileFormatError, match=r"'fc1.weight': vlticket_config.json has shape \(4, 4\).*\(16, 8\)"
    ):
        Ticket.from_pretrained(folder)


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
        Ticket.from_pretrained(folder)


def test_files_outside_the_ticket_are_refused_in_config(folder):
    config = _config(folder)
    config["files"]["pytorch_model.bin"] = {"size": 1, "sha256": "0"}
    (folder / vhub.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(FileFormatError, match="'files'"):
        Ticket.from_pretrained(folder)


# -- through a Hub-compatible server ------------------------------------------------------------
def test_push_is_one_commit_and_from_pretrained_reads_it_back(hub, mask):  # noqa: F811
    url = Ticket(mask, **INFO).push_to_hub("alice/tiny-ticket")
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
    assert 'Ticket.from_pretrained("alice/tiny-ticket")' in card
    assert Ticket.from_pretrained("alice/tiny-ticket").mask == mask


def test_revision_selects_the_branch(hub, mask):  # noqa: F811
    Ticket(mask).push_to_hub("alice/t")
    other = ~mask
    Ticket(other).push_to_hub("alice/t", revision="v2", commit_message="complement")
    assert Ticket.from_pretrained("alice/t").mask == mask
    assert Ticket.from_pretrained("alice/t", revision="v2").mask == other
    commit = hub.repos["alice/t"].branches["main"]
    assert Ticket.from_pretrained("alice/t", revision=commit).mask == mask


def test_wrong_token_is_a_one_line_hub_error(hub, mask):  # noqa: F811
    with pytest.raises(HubError, match="'alice/t': the token was refused \\(401") as info:
        Ticket(mask).push_to_hub("alice/t", token="hf_wrong")
    assert "\n" not in str(info.value) and isinstance(info.value.__cause__, HfHubHTTPError)
    assert hub.commits_posted() == []


def test_missing_repo_and_revision_are_hub_errors(hub, mask, tmp_path):  # noqa: F811
    with pytest.raises(HubError, match="'alice/nope': repo not found.*token=") as info:
        Ticket.from_pretrained("alice/nope")
    assert "\n" not in str(info.value)
    Ticket(mask).push_to_hub("alice/t")
    with pytest.raises(HubError, match="revision 'v9' not found"):
        Ticket.from_pretrained("alice/t", revision="v9")
    with pytest.raises(HubError, match="repo not found"):
        vhub.download_ticket("alice/nope", tmp_path / "pulled")
    assert not (tmp_path / "pulled").exists()


def _closed_port_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connections are refused
    return f"http://127.0.0.1:{port}"


def test_no_network_is_a_hub_error(hub, mask, monkeypatch):  # noqa: F811
    from huggingface_hub import constants

    url = _closed_port_url()
    monkeypatch.setattr(constants, "ENDPOINT", url)
    template = url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    with pytest.raises(HubError, match="cannot download 'alice/t': the Hub at .* cannot be"):
        Ticket.from_pretrained("alice/t")
    with pytest.raises(HubError, match="cannot push to 'alice/t': the Hub at .* cannot be"):
        Ticket(mask).push_to_hub("alice/t")
    with pytest.raises(HubError, match="HF_HUB_OFFLINE is set"):
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        Ticket(mask).push_to_hub("alice/t")


def test_offline_mode_serves_from_cache(hub, mask, monkeypatch):  # noqa: F811
    from huggingface_hub import constants

    Ticket(mask).push_to_hub("alice/t")
    assert Ticket.from_pretrained("alice/t").mask == mask  # fills the cache
    hub.stop()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    n = len(hub.requests)
    assert Ticket.from_pretrained("alice/t").mask == mask
    assert len(hub.requests) == n
    with pytest.raises(HubError, match="not in the local cache and downloads are off"):
        Ticket.from_pretrained("alice/never-downloaded")


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
        Ticket.from_pretrained("mallory/ticket")
    fetched = [path for method, path, _ in hub.requests if "/resolve/" in path]
    assert fetched and not any(p.endswith((".bin", ".py")) for p in fetched)


def test_download_ticket_and_push_folder(hub, folder, tmp_path, mask):  # noqa: F811
    vhub.push_folder(folder, "alice/t")
    assert len(hub.commits_posted()) == 1
    out = vhub.download_ticket("alice/t", tmp_path / "pulled")
    assert (out / "README.md").read_text() == (folder / "README.md").read_text()
    assert Ticket.from_pretrained(out).mask == mask


def test_push_folder_validates_before_any_request(hub, folder):  # noqa: F811
    _rewrite(folder, "mask.safetensors", b"garbage!" * 4)
    with pytest.raises(FileFormatError):
        vhub.push_folder(folder, "alice/t")
    assert hub.requests == []


def test_push_folder_sends_what_it_validated(hub, folder, mask, monkeypatch):  # noqa: F811
    """A folder overwritten between validation and upload does not change what is sent."""
    from vlticket.hub import remote

    real_upload = remote.upload

    def overwrite_then_upload(*args, **kwargs):
        _rewrite(folder, "mask.safetensors", b"garbage!" * 4)
        return real_upload(*args, **kwargs)

    monkeypatch.setattr(remote, "upload", overwrite_then_upload)
    vhub.push_folder(folder, "alice/t")
    assert Ticket.from_pretrained("alice/t").mask == mask


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
    monkeypatch.setattr(vlticket.registry, "_REGISTRY", dict(vlticket.registry._REGISTRY))
    adapter = adapters.PatternAdapter(
        include=[r"backbone\.\d+\.weight"], strip=r"backbone\.", name="hub-test-backbone"
    )
    adapters.register_adapter(adapter, replace=True)
    return adapter


def test_recorded_adapter_is_used_to_apply_on_another_head(tmp_path, pattern_adapter):
    torch.manual_seed(0)
    mask = vlticket.prune_magnitude(_Wrapped(3), sparsity=0.5, adapter=pattern_adapter)
    assert list(mask) == ["0.weight", "1.weight"]
    folder = Ticket(mask, adapter=pattern_adapter).save_pretrained(tmp_path / "t")
    config = _config(folder)
    assert config["adapter"] == {"family": "hub-test-backbone", "options": []}
    assert "layer.0" in config["sparsity"]["groups"]
    other_task = _Wrapped(10)
    Ticket.from_pretrained(folder).apply(other_task)  # canonical names found through the adapter
    assert torch.equal(other_task.backbone[1].weight != 0, mask["1.weight"])
    before = {n: p.clone() for n, p in other_task.named_parameters()}
    vlticket.registry._REGISTRY.pop("hub-test-backbone")  # a reader without the adapter
    with pytest.raises(NameMismatchError, match="model's parameters: '0.weight'"):
        Ticket.from_pretrained(folder).apply(other_task)
    assert all(torch.equal(p, before[n]) for n, p in other_task.named_parameters())


@pytest.mark.parametrize(
    "field, value",
    [("adapter", "vilt"), ("base_model", "x"), ("adapter", {"family": 3}), ("search", [1])],
)
def test_config_fields_of_the_wrong_type_are_refused(folder, field, value):
    config = _config(folder)
    config[field] = value
    (folder / vhub.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(FileFormatError, match=repr(field)):
        Ticket.from_pretrained(folder)


def test_deeply_nested_config_is_refused(folder):
    (folder / vhub.CONFIG_FILE).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(FileFormatError, match="not JSON"):
        Ticket.from_pretrained(folder)


def test_resaving_without_checkpoint_removes_the_stale_one(tmp_path, tiny_net, mask, hub):  # noqa: F811
    folder = tmp_path / "t"
    Ticket(mask, checkpoint=vlticket.Checkpoint.capture(tiny_net)).save_pretrained(folder)
    Ticket(mask).save_pretrained(folder)
    assert not (folder / vhub.CHECKPOINT_FILE).exists()
    (folder / "notes.bin").write_bytes(b"not part of the ticket")
    vhub.push_folder(folder, "alice/clean")
    uploaded = set(hub.files("alice/clean")) - {".gitattributes"}  # the server's own file
    assert uploaded == {vhub.CONFIG_FILE, vhub.MASK_FILE, vhub.CARD_FILE}
