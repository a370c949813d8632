import json
import os
import subprocess
import sys
import types

import pytest
import torch
from hub_server import hub, hub_env  # noqa: F401  (pytest fixture)

import vlticket
from vlticket.cli import main
from vlticket.core import chance_iou_matrix


@pytest.fixture
def tickets(tmp_path, tiny_net):
    """Two ticket folders (IMP at 50% and 70%) and a bare random mask file."""
    a = vlticket.prune_magnitude(tiny_net, sparsity=0.5)
    b = vlticket.prune_magnitude(tiny_net, sparsity=0.7)
    c = vlticket.prune_random(tiny_net, sparsity=0.5, seed=0)
    vlticket.Ticket(a, base_model="org/tiny", method="imp", task="vqa").save_pretrained(
        tmp_path / "a"
    )
    vlticket.Ticket(b, base_model="org/tiny", method="imp", task="nlvr2").save_pretrained(
        tmp_path / "b"
    )
    c.save(tmp_path / "c.safetensors")
    return {str(tmp_path / "a"): a, str(tmp_path / "b"): b, str(tmp_path / "c.safetensors"): c}


def test_inspect_prints_overall_group_and_tensor_tables(tickets, capsys):
    path, mask = next(iter(tickets.items()))
    assert main(["inspect", path]) == 0
    out = capsys.readouterr().out
    assert "base model: org/tiny" in out and "method=imp" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert rows["all"] == [f"{mask.numel:,}", f"{mask.num_kept:,}", f"{mask.sparsity:.4f}"]
    assert rows["fc2.weight"][0] == "16x16"
    assert f"{mask.tensor_sparsity()['fc2.weight']:.4f}" in out


def test_inspect_json(tickets, capsys):
    path, mask = next(iter(tickets.items()))
    assert main(["inspect", path, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["overall"]["sparsity"] == pytest.approx(mask.sparsity)
    assert report["layers"]["fc1.weight"]["shape"] == [16, 8]
    assert set(report["groups"]) == {"emb", "fc1", "fc2", "head"}
    assert report["config"]["task"] == "vqa"


def test_inspect_a_bare_mask_file(tickets, capsys):
    path = next(p for p in tickets if p.endswith(".safetensors"))
    assert main(["inspect", path]) == 0
    assert "without a ticket config" in capsys.readouterr().out


def test_iou_matrix_json_matches_library(tickets, capsys):
    paths = list(tickets)
    assert main(["iou", *paths, "--json", "--groups"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["masks"] == paths
    masks = list(tickets.values())
    assert out["iou"]["all"][0][1] == pytest.approx(vlticket.iou(masks[0], masks[1]))
    assert out["iou"]["all"][1][1] == 1.0
    fc1 = [vlticket.Mask({"fc1.weight": m["fc1.weight"]}) for m in masks]
    assert out["iou"]["fc1"][0][2] == pytest.approx(vlticket.iou(fc1[0], fc1[2]))


def test_iou_table(tickets, capsys):
    assert main(["iou", *tickets]) == 0
    out = capsys.readouterr().out
    assert "IoU (all)" in out and "[2]" in out and "1.0000" in out


def test_iou_plot_writes_a_png_with_a_panel_per_group_and_says_so(
    tickets, tmp_path, monkeypatch, capsys
):
    from matplotlib.figure import Figure

    saved = {}
    original_savefig = Figure.savefig

    def savefig(fig, path, **kw):
        saved["titles"] = [ax.get_title() for ax in fig.axes if ax.get_title()]
        saved["texts"] = [t.get_text() for ax in fig.axes for t in ax.texts]
        return original_savefig(fig, path, **kw)

    monkeypatch.setattr(Figure, "savefig", savefig)
    png = tmp_path / "iou.png"
    assert main(["iou", *tickets, "--plot", str(png), "--groups"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {png}" in capsys.readouterr().out
    assert saved["titles"] == [f"IoU ({g})" for g in ("all", "emb", "fc1", "fc2", "head")]
    assert len(saved["texts"]) == 5 * 3 * 3 and all("(" in t for t in saved["texts"])


def _chance(d1, d2):
    return d1 * d2 / (d1 + d2 - d1 * d2)


def test_iou_shows_the_chance_level_of_random_masks_at_the_same_sparsities(tickets, capsys):
    paths, masks = list(tickets), list(tickets.values())
    assert main(["iou", *paths, "--json", "--groups"]) == 0
    out = json.loads(capsys.readouterr().out)
    d = [m.density for m in masks]
    assert out["chance"]["all"][0][1] == pytest.approx(_chance(d[0], d[1]))
    assert out["chance"]["all"][2][2] == pytest.approx(_chance(d[2], d[2]))
    fc1 = [vlticket.Mask({"fc1.weight": m["fc1.weight"]}).density for m in masks]
    assert out["chance"]["fc1"][1][2] == pytest.approx(_chance(fc1[1], fc1[2]))
    # a 50% magnitude ticket and a 50% random mask: chance is 1/3
    assert out["chance"]["all"][0][2] == pytest.approx(1 / 3, abs=0.01)
    assert main(["iou", *paths]) == 0
    table = capsys.readouterr().out
    assert "chance" in table
    assert f"{out['iou']['all'][0][1]:.4f} ({_chance(d[0], d[1]):.4f})" in table


def test_chance_iou_matches_random_masks():
    # the formula against sampled independent masks (law of large numbers, 1e6 weights)
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1_000_000, generator=g) < 0.3
    b = torch.rand(1_000_000, generator=g) < 0.6
    measured = vlticket.iou(vlticket.Mask({"w": a}), vlticket.Mask({"w": b}))
    assert chance_iou_matrix([0.3, 0.6])[0][1] == pytest.approx(measured, abs=0.002)
    assert chance_iou_matrix([0.0, 0.0]) == [[1.0, 1.0], [1.0, 1.0]]


def test_iou_plot_without_matplotlib_says_which_extra(tickets, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert main(["iou", *tickets, "--plot", str(tmp_path / "x.png")]) == 1
    assert "vlticket[plot]" in capsys.readouterr().err


def test_iou_of_masks_for_different_models_fails_cleanly(tickets, tmp_path, capsys):
    other = vlticket.Mask({"w": torch.ones(3, dtype=torch.bool)})
    other.save(tmp_path / "other.safetensors")
    assert main(["iou", next(iter(tickets)), str(tmp_path / "other.safetensors")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vlticket iou: error:") and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["inspect", "no/such/dir/x"], 1, "no such folder or file"),
        (["inspect", "missing.safetensors"], 1, "cannot read"),
        (["iou", "one"], 2, "at least two"),
        (["inspect"], 2, "required"),
        (["frobnicate"], 2, "invalid choice"),
        ([], 2, "usage"),
    ],
)
def test_errors_and_exit_codes(argv, code, message, capsys):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_corrupt_file_is_exit_1_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04K\x01." * 3)  # a pickle
    assert main(["inspect", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "not a valid safetensors file" in err and "Traceback" not in err


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    assert "inspect" in capsys.readouterr().out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"vlticket {vlticket.__version__}\n"


# -- demo wiring --------------------------------------------------------------------------------
def test_demo_extra_missing_does_not_break_other_commands(monkeypatch, tickets, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "easy_vqa", None)  # import easy_vqa now raises ImportError
    assert main(["demo", "--tiny", "--out", str(tmp_path / "d")]) == 1
    assert "pip install" in capsys.readouterr().err
    assert main(["inspect", next(iter(tickets))]) == 0


def test_demo_is_delegated(monkeypatch, capsys):
    seen = {}
    fake = types.ModuleType("vlticket.demo")
    fake.__doc__ = "Fake demo."
    fake.configure_parser = lambda p: p.add_argument("--steps", type=int, default=1)
    fake.run = lambda args: seen.setdefault("steps", args.steps) and "the demo's report"
    monkeypatch.setattr("vlticket.cli.demo", fake)
    assert main(["demo", "--steps", "3"]) == 0
    assert seen == {"steps": 3}
    assert capsys.readouterr().out == "the demo's report\n"
    assert main(["demo", "--help"]) == 0
    assert "--steps" in capsys.readouterr().out


# -- push / pull end to end -----------------------------------------------------------------------
def _vlticket(*argv: str, env: dict) -> subprocess.CompletedProcess:
    """``python -m vlticket ARGV`` in a fresh process (its own huggingface_hub settings)."""
    return subprocess.run(
        [sys.executable, "-m", "vlticket", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_push_in_a_subprocess_then_pull_and_inspect(hub, tickets, tmp_path, capsys):  # noqa: F811
    path, mask = next(iter(tickets.items()))
    env = {**os.environ, **hub_env(hub, str(tmp_path / "hf_home_sub"))}
    done = _vlticket("push", "alice/tiny", path, "--message", "first", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{hub.url}/alice/tiny/commit/")
    assert len(hub.commits_posted()) == 1

    assert main(["pull", "alice/tiny", str(tmp_path / "pulled")]) == 0
    assert vlticket.Ticket.from_pretrained(tmp_path / "pulled").mask == mask
    capsys.readouterr()
    assert main(["inspect", "alice/tiny", "--json"]) == 0  # fills this process's cache
    assert json.loads(capsys.readouterr().out)["overall"]["kept"] == mask.num_kept

    hub.stop()  # a fresh process with HF_HUB_OFFLINE=1 is served from that cache
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = _vlticket("inspect", "alice/tiny", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["overall"]["kept"] == mask.num_kept


def test_push_a_mask_file_to_a_branch(hub, tickets, capsys):  # noqa: F811
    path, mask = list(tickets.items())[2]
    assert main(["push", "alice/r", path, "--revision", "dev"]) == 0
    assert vlticket.Ticket.from_pretrained("alice/r", revision="dev").mask == mask
    assert "mask.safetensors" not in hub.files("alice/r", "main")


@pytest.mark.parametrize("argv", [["pull", "alice/none", "DIR"], ["inspect", "alice/none"]])
def test_a_missing_repo_is_one_line_and_exit_1(hub, tmp_path, capsys, argv):  # noqa: F811
    argv = [str(tmp_path / "x") if a == "DIR" else a for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"vlticket {argv[0]}: error: cannot download 'alice/none': repo not found"
    )
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("argv", [["pull", "alice/t", "DIR"], ["inspect", "alice/t"]])
def test_no_network_is_one_line_and_exit_1(hub, tmp_path, capsys, monkeypatch, argv):  # noqa: F811
    import socket

    from huggingface_hub import constants

    with socket.socket() as s:  # a port nothing listens on: connection refused
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", dead + "/{repo_id}/resolve/{revision}/{filename}"
    )
    argv = [str(tmp_path / "x") if a == "DIR" else a for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"cannot download 'alice/t': the Hub at {dead} cannot be reached" in err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["inspect", "vilt-vqa-ticket"], "'vilt-vqa-ticket': no such folder or file"),
        (["iou", "a-ticket", "another"], "'a-ticket': no such folder or file"),
        (["pull", "vilt", "DIR"], "REPO_ID: expected a Hub repo id like 'user/name'"),
    ],
)
def test_a_bare_name_asks_no_server(hub, tmp_path, capsys, argv, message):  # noqa: F811
    argv = [str(tmp_path / "x") if a == "DIR" else a for a in argv]
    assert main(argv) == 1
    assert message in capsys.readouterr().err
    assert hub.requests == []


def test_pull_refuses_a_non_empty_folder_without_force_and_leaves_no_cache(
    hub,  # noqa: F811
    tickets,
    tmp_path,
    capsys,
):
    path, mask = next(iter(tickets.items()))
    assert main(["push", "alice/t", path]) == 0
    target = tmp_path / "pulled"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    (target / "checkpoint.safetensors").write_bytes(b"stale")  # from an older ticket
    capsys.readouterr()
    assert main(["pull", "alice/t", str(target)]) == 1
    err = capsys.readouterr().err
    assert "is not empty" in err and "--force" in err
    assert sorted(p.name for p in target.iterdir()) == ["checkpoint.safetensors", "notes.txt"]
    assert main(["pull", "alice/t", str(target), "--force"]) == 0
    assert capsys.readouterr().out.strip() == str(target)
    names = sorted(p.name for p in target.iterdir())
    assert names == ["README.md", "mask.safetensors", "notes.txt", "vlticket_config.json"]
    assert vlticket.Ticket.from_pretrained(target).mask == mask
    assert not list(tmp_path.glob(".vlticket-pull-*"))  # the staging folder is gone
    fresh = tmp_path / "fresh"
    assert main(["pull", "alice/t", str(fresh)]) == 0
    assert not (fresh / ".cache").exists()
    assert sorted(p.name for p in fresh.iterdir()) == names[:2] + names[3:]


def test_push_takes_repo_id_then_folder_and_swaps_the_old_order_with_a_note(
    hub,  # noqa: F811
    tickets,
    capsys,
):
    path, mask = next(iter(tickets.items()))
    assert main(["push", path, "alice/swapped"]) == 0
    captured = capsys.readouterr()
    assert "note: pushing" in captured.err and "REPO_ID DIR" in captured.err
    assert captured.out.startswith(f"{hub.url}/alice/swapped/commit/")
    assert vlticket.Ticket.from_pretrained("alice/swapped").mask == mask
    capsys.readouterr()
    assert main(["push", "alice/in-order", path]) == 0
    assert "note" not in capsys.readouterr().err


def test_a_closed_pipe_is_not_an_error(tickets):
    # `vlticket inspect ... | head` closes stdout early; the command ends quietly with 0.
    code = (
        "import sys, vlticket.cli as c\n"
        "class Closed:\n"
        "    def write(self, s): raise BrokenPipeError(32, 'Broken pipe')\n"
        "    def flush(self): pass\n"
        "sys.stdout = Closed()\n"
        f"sys.exit(c.main(['inspect', {next(iter(tickets))!r}]))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0 and "Broken pipe" not in run.stderr
