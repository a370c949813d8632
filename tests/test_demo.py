"""The offline demo: a reduced end-to-end run, its files, and the missing-extra message."""

from __future__ import annotations

import argparse
import io
import json
import logging
import shutil
import struct
import sys

import pytest
import torch

import vlticket
from vlticket.cli import main
from vlticket.demo import data as _demo_data
from vlticket.demo import model as _demo_model
from vlticket.demo import options as _demo_options
from vlticket.demo import pretraining as _demo_pretraining
from vlticket.demo import report as _demo_report
from vlticket.demo import speed as _demo_speed
from vlticket.demo import structured as _demo_structured


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    _demo_options.configure_parser(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One fresh ``--tiny`` run: its folder, results, printout and number of training runs."""
    pytest.importorskip("easy_vqa")
    out = tmp_path_factory.mktemp("tiny") / "demo"
    with pytest.MonkeyPatch.context() as mp:
        trains = _count(mp, _demo_model, "train")
        capture = io.StringIO()
        mp.setattr(sys, "stdout", capture)
        assert main(["demo", "--tiny", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    return out, results, capture.getvalue(), len(trains)


def _count(mp, module, name: str) -> list[int]:
    """Replace ``module.name`` by a wrapper that appends to the returned list at each call."""
    real, calls = getattr(module, name), []

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    mp.setattr(module, name, counted)
    return calls


def _strict(text: str):
    def refuse(constant):
        raise AssertionError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_tiny_demo_end_to_end(tiny_run):
    out, results, printed, trains = tiny_run
    assert _strict((out / "results.json").read_text()) == results
    s = _demo_options.TINY
    assert results["pretrain"]["steps"] <= s["pretrain_steps"]
    assert results["pretrain"]["reused"] is False
    assert results["transfer_steps"] == s["steps"]
    for task in "AB":
        row = results["rows"][task]
        ticket = vlticket.Ticket.from_pretrained(out / f"ticket_{task}").mask
        assert ticket.sparsity == pytest.approx(0.5, abs=1e-6)
        assert row["sparsity"] == ticket.sparsity
        history = json.loads((out / f"task_{task}" / "history.json").read_text())["rounds"]
        assert history == results["history"][task]
        assert row["dense"] == history[0]["metrics"]["accuracy"]
        assert row["imp"] == history[-1]["metrics"]["accuracy"]
        # the optimizer steps each round and each baseline really took
        assert [h["steps"] for h in history] == row["steps"]["imp_rounds"] == [s["steps"]] * 2
        for key in ("random", "random_per_tensor", "shuffled"):
            assert row["steps"][key] == s["steps"]
        # every number in the table row is the run's own
        for key in ("dense", "dense_99", "imp", "random", "random_per_tensor", "shuffled"):
            assert f"{row[key]:.3f}" in printed
    pre = results["pretraining_ticket"]
    structured = sum(len(results["structured"][t]["rounds"]) for t in "AB")
    # rounds and baselines of both tasks, the transfer, the pre-training ticket's trained
    # rounds (its round 0 is θ0's pre-training) and its two transfers, the structured rounds,
    # and the cheaper methods (early-bird IMP's 2 rounds and 4 trained once) of both tasks
    assert trains == 2 * (2 + 3) + 1 + (len(pre["history"]) - 1) + 2 + structured + 2 * (2 + 4)
    assert f"{results['iou_A_B']:.3f}" in printed
    assert f"{results['transfer_A_to_B']:.3f}" in printed
    iou = vlticket.iou(
        vlticket.Ticket.from_pretrained(out / "ticket_A").mask,
        vlticket.Ticket.from_pretrained(out / "ticket_B").mask,
    )
    assert iou == results["iou_A_B"]
    png = (out / "accuracy_vs_sparsity.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])  # IHDR: 7.5 x 4.8 inches at 200 dpi
    assert (width, height) == (1500, 960)
    assert b"<svg" in (out / "accuracy_vs_sparsity.svg").read_bytes()[:500]


def test_rerun_resumes_without_retraining(tiny_run, tmp_path, monkeypatch, caplog):
    first, results, _, _ = tiny_run
    out = tmp_path / "demo"
    shutil.copytree(first, out)
    trains = _count(monkeypatch, _demo_model, "train")
    pretrains = _count(monkeypatch, _demo_pretraining, "pretrain")
    with caplog.at_level(logging.INFO, logger="vlticket"):
        assert main(["demo", "--tiny", "--out", str(out)]) == 0
    assert "resuming the run with the same settings" in caplog.text
    assert (trains, pretrains) == ([], [])  # θ0, every round and every baseline reused
    again = json.loads((out / "results.json").read_text())
    assert again["rows"] == results["rows"]
    assert again["history"] == results["history"]
    for key in ("pretraining_ticket", "structured", "csr"):  # speeds are not re-measured
        assert again[key] == results[key]
    assert again["pretrain"] == {**results["pretrain"], "reused": True}


def test_rerun_with_other_settings_starts_afresh(tiny_run, tmp_path, monkeypatch, caplog):
    first = tiny_run[0]
    out = tmp_path / "demo"
    shutil.copytree(first, out)
    (out / "notes.txt").write_text("the user's own file")
    pretrains = _count(monkeypatch, _demo_pretraining, "pretrain")
    with caplog.at_level(logging.INFO, logger="vlticket"):
        assert main(["demo", "--tiny", "--steps", "3", "--out", str(out)]) == 0
    assert "other settings (steps 8 -> 3): starting afresh (θ0 reused)" in caplog.text
    assert pretrains == []  # the pre-training settings are the same: θ0 is reused
    again = json.loads((out / "results.json").read_text())
    for task in "AB":
        assert [h["steps"] for h in again["history"][task]] == [3, 3]
        assert again["rows"][task]["steps"]["random"] == 3
    assert (out / "notes.txt").read_text() == "the user's own file"
    assert not list(out.glob(".trash-*"))


def test_interrupted_run_resumes_where_it_stopped(tiny_run, tmp_path, monkeypatch, capsys):
    _, results, _, trains_in_full_run = tiny_run
    out = tmp_path / "demo"
    real_train, calls = _demo_model.train, []

    def train(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # task B's last round, after three finished rounds
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(_demo_model, "train", train)
    assert main(["demo", "--tiny", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        "vlticket demo: interrupted; rerun the same command to resume"
    )
    assert not (out / "results.json").exists()
    for task, finished in (("A", 2), ("B", 1)):
        history = json.loads((out / f"task_{task}" / "history.json").read_text())["rounds"]
        assert len(history) == finished
    monkeypatch.setattr(_demo_model, "train", real_train)
    trains = _count(monkeypatch, _demo_model, "train")
    pretrains = _count(monkeypatch, _demo_pretraining, "pretrain")
    assert main(["demo", "--tiny", "--out", str(out)]) == 0
    assert pretrains == []
    assert len(trains) == trains_in_full_run - 3  # only what had not finished
    again = json.loads((out / "results.json").read_text())
    assert again["rows"] == results["rows"]  # the same numbers as an uninterrupted run


def test_interrupted_structured_search_resumes(tiny_run, tmp_path, monkeypatch):
    _, results, _, trains_in_full_run = tiny_run
    # Table 1, the pre-training ticket's trained rounds and its transfers come first
    before = 2 * (2 + 3) + 1 + (len(results["pretraining_ticket"]["history"]) - 1) + 2
    out = tmp_path / "demo"
    real_train, calls = _demo_model.train, []

    def train(*args, **kwargs):
        calls.append(1)
        if len(calls) == before + 1:  # task A's first structured round
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(_demo_model, "train", train)
    assert main(["demo", "--tiny", "--out", str(out)]) == 130
    assert (out / "structured_A" / "mask_1.safetensors").exists()
    monkeypatch.setattr(_demo_model, "train", real_train)
    trains = _count(monkeypatch, _demo_model, "train")
    assert main(["demo", "--tiny", "--out", str(out)]) == 0
    assert len(trains) == trains_in_full_run - before  # only the structured rounds
    again = json.loads((out / "results.json").read_text())
    pre, first_pre = again["pretraining_ticket"], results["pretraining_ticket"]
    assert pre["tasks"] == first_pre["tasks"]
    assert pre["objective"] == first_pre["objective"]
    for task in "AB":
        found, first = again["structured"][task], results["structured"][task]
        assert (found["rounds"], found["best_round"]) == (first["rounds"], first["best_round"])


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--sparsity", "1.5"], "argument --sparsity: expected a number in (0, 1), found 1.5"),
        (["--sparsity", "0"], "argument --sparsity"),
        (["--sparsity", "nan"], "argument --sparsity"),
        (["--amount", "1"], "argument --amount"),
        (["--amount", "0.3", "--rounds", "3"], "argument --rounds: not allowed with argument"),
        (["--rounds", "0"], "argument --rounds: expected an integer >= 1, found 0"),
        (["--steps", "0"], "argument --steps"),
        (["--steps", "ten"], "argument --steps: expected an integer, found 'ten'"),
        (["--threads", "-2"], "argument --threads"),
        (["--batch-size", "0"], "argument --batch-size"),
        (["--pretrain-steps", "0"], "argument --pretrain-steps"),
        (["--pretrain-target", "1.2"], "argument --pretrain-target"),
        (["--lr", "0"], "argument --lr"),
        (["--lr", "inf"], "argument --lr"),
        (["--seed", "-1"], "argument --seed"),
    ],
)
def test_bad_options_are_usage_errors_before_any_work(
    argv, complaint, tmp_path, monkeypatch, capsys
):
    loads = _count(monkeypatch, _demo_data, "load")
    out = tmp_path / "demo"
    assert main(["demo", "--tiny", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: vlticket demo")
    assert err.strip().splitlines()[-1].startswith(f"vlticket demo: error: {complaint}")
    assert loads == [] and not out.exists()


def test_out_must_not_be_a_file(tmp_path, capsys):
    path = tmp_path / "results.txt"
    path.write_text("keep me")
    assert main(["demo", "--tiny", "--out", str(path)]) == 2
    assert "argument --out: expected a folder" in capsys.readouterr().err
    assert path.read_text() == "keep me"


def test_rounds_flag_sets_the_amount():
    settings = _demo_options.settings(parse("--sparsity", "0.9", "--rounds", "4"))
    assert (1 - settings["amount"]) ** 4 == pytest.approx(0.1)
    assert _demo_options.settings(parse("--tiny"))["max_images"] == _demo_options.TINY["max_images"]
    # with --tiny, an option given explicitly still wins over the tiny value
    assert _demo_options.settings(parse("--tiny", "--sparsity", "0.7"))["sparsity"] == 0.7


def test_table_header_names_each_column():
    row = {
        "dense": 0.9,
        "dense_99": 0.891,
        "sparsity": 0.95,
        "imp": 0.93,
        "random": 0.5,
        "random_per_tensor": 0.6,
        "shuffled": 0.7,
        "relaxed_sparsity": 0.95,
    }
    structured = {
        "rounds": [{"head": 0.5, "neuron": 0.5, "accuracy": 0.9}],
        "best_round": 1,
        "speed": None,
    }
    results = {
        "rows": {"A": row, "B": row},
        "iou_A_B": 0.7,
        "iou_random": 0.03,
        "transfer_A_to_B": 0.9,
        "pretrain": {"steps": 300, "colour": 0.85},
        "seconds": 100.0,
        "structured": {"A": structured, "B": {**structured, "best_round": None}},
    }
    lines = _demo_report.format_table(results).splitlines()
    header = lines[0].split("  ")
    names = [c.strip() for c in header if c.strip()]
    assert names == [
        "task",
        "dense acc",
        "99% of dense",
        "sparsity",
        "IMP",
        "random",
        "random (per tensor)",
        "θ0′′",
        "structured",
    ]
    cells = ["0.900", "0.891", "95.0%", "0.930", "0.500", "0.600", "0.700"]
    assert lines[1].split() == ["A", *cells, "50%/50%"]
    assert lines[2].split() == ["B", *cells, "none"]
    assert lines[3] == _demo_report.LEGEND  # what each column is, right under the table


def test_missing_extra_gives_a_clear_message(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "easy_vqa", None)  # import easy_vqa now raises ImportError
    with pytest.raises(_demo_data.DemoExtraMissing, match=r"pip install 'vlticket\[demo\]'"):
        _demo_data.require_demo_extra()
    assert main(["demo", "--tiny", "--out", str(tmp_path)]) == 1
    assert "easy-vqa" in capsys.readouterr().err


def test_batched_image_embeds_match_vilt_own_embedding():
    pytest.importorskip("transformers")

    torch.manual_seed(0)
    model = _demo_model.build_model(20, 5).eval()
    pixels = torch.rand(3, 3, 64, 64) * 2 - 1
    b = {
        "input_ids": torch.randint(4, 20, (3, 12)),
        "attention_mask": torch.ones(3, 12, dtype=torch.long),
        "pixels": pixels,
    }
    with torch.no_grad():
        fast = _demo_model.logits(model, b)
        own = model(
            input_ids=b["input_ids"], attention_mask=b["attention_mask"], pixel_values=pixels
        ).logits
    assert torch.allclose(fast, own, atol=1e-5)


def test_each_subnetwork_is_trained_alone(tmp_path, monkeypatch):
    # Every training run starts from exactly its own mask: no baseline inherits another's zeros.
    pytest.importorskip("easy_vqa")

    real_train, checked = _demo_model.train, []

    def train(model, *args, add_optimizer, **kwargs):
        handle = getattr(add_optimizer, "__self__", None)
        if isinstance(handle, vlticket.MaskHandle):
            params = vlticket.adapter_for(model).prunable(model)
            zeros = sum(int((params[n] == 0).sum()) for n in handle.mask)
            assert all(torch.all(params[n][~k] == 0) for n, k in handle.mask.items())
            assert zeros <= handle.mask.num_pruned + 5  # kept weights are (almost) never 0
            checked.append(handle.mask.sparsity)
        return real_train(model, *args, add_optimizer=add_optimizer, **kwargs)

    monkeypatch.setattr(_demo_model, "train", train)
    assert main(["demo", "--tiny", "--out", str(tmp_path / "demo")]) == 0
    assert len(checked) >= 7  # two random and θ0'' for both tasks, and the transfer


def _same(a: vlticket.Checkpoint, b: vlticket.Checkpoint) -> bool:
    return list(a) == list(b) and all(torch.equal(a[n], b[n]) for n in a)


def test_pretraining_ticket_is_table_2(tiny_run):
    out, results, printed, _ = tiny_run
    s, pre = _demo_options.TINY, results["pretraining_ticket"]
    ticket = vlticket.Ticket.from_pretrained(out / "ticket_pretraining").mask
    history = json.loads((out / "pretraining" / "history.json").read_text())["rounds"]
    assert history == pre["history"]
    assert ticket.sparsity == pytest.approx(s["sparsity"], abs=1e-6)
    assert pre["sparsity"] == ticket.sparsity == results["rows"]["A"]["sparsity"]
    # IMP rewinds to θ0; its dense round is θ0's pre-training, later rounds train `steps`
    theta0 = vlticket.Checkpoint.load(out / "theta0.safetensors")
    assert _same(vlticket.Checkpoint.load(out / "pretraining" / "theta_init.safetensors"), theta0)
    rounds = [s["steps"] // 2] * (len(history) - 1)  # half a task round's steps
    assert [h["steps"] for h in history] == [0, *rounds]
    assert pre["objective"] == [h["metrics"]["accuracy"] for h in history]
    for task in "AB":
        row, table1 = pre["tasks"][task], results["rows"][task]
        own = vlticket.Ticket.from_pretrained(out / f"ticket_{task}").mask
        assert row["iou"] == vlticket.iou(ticket, own)
        assert (row["dense"], row["own"], row["random"]) == (
            table1["dense"],
            table1["imp"],
            table1["random"],
        )
        assert row["steps"] == s["steps"]
        cells = [f"{row[k]:.3f}" for _, k in _demo_report.TABLE2]
        assert any(line.split() == [task, *cells] for line in printed.splitlines())


def test_structured_column_from_saved_masks(tiny_run):
    out, results, printed, _ = tiny_run
    torch.manual_seed(0)
    data = _demo_data.load(max_images=_demo_options.TINY["max_images"])
    model = _demo_model.build_model(len(data.vocab), len(data.answers))
    adapter = vlticket.adapter_for(model)
    for task in "AB":
        found, dense = results["structured"][task], results["rows"][task]["dense"]
        rounds = found["rounds"]
        assert 1 <= len(rounds) <= _demo_structured.ROUNDS
        # it stops at the first round below 99% of dense; every earlier round kept it
        assert all(r["accuracy"] >= 0.99 * dense for r in rounds[:-1])
        assert len(rounds) == _demo_structured.ROUNDS or rounds[-1]["accuracy"] < 0.99 * dense
        for k, r in enumerate(rounds, 1):
            mask = vlticket.Mask.load(out / f"structured_{task}" / f"mask_{k}.safetensors")
            assert _demo_structured.removed(model, adapter, mask) == {
                "head": r["head"],
                "neuron": r["neuron"],
            }
            assert r["steps"] == _demo_options.TINY["steps"]
        passed = [k for k, r in enumerate(rounds, 1) if r["accuracy"] >= 0.99 * dense]
        assert found["best_round"] == (passed[-1] if passed else None)
        speed = found["speed"]
        if speed is None:
            continue
        assert speed["params_shrunk"] < speed["params"]
        assert speed["max_abs_diff"] < 1e-4  # the shrunk model answers as the masked one does
        assert (speed["batch"], speed["threads"]) == (_demo_speed.BATCH, 1)
        assert speed["speedup"] == speed["baseline_ms"] / speed["candidate_ms"]
        assert f"{speed['params_shrunk']:,} of {speed['params']:,} parameters" in printed


def test_structured_rounds_prune_half_of_what_is_kept():
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = _demo_model.build_model(20, 5)
    adapter = vlticket.adapter_for(model)
    mask, seen = None, []
    for _ in range(3):
        mask = _demo_structured._prune(model, adapter, mask)
        seen.append(_demo_structured.removed(model, adapter, mask))
    # 8 heads (4 per layer) -> 4 -> 2, then one per layer stays; 512 neurons -> 256 -> 128 -> 64
    assert seen == [
        {"head": 0.5, "neuron": 0.5},
        {"head": 0.75, "neuron": 0.75},
        {"head": 0.75, "neuron": 0.875},
    ]
    vlticket.shrink(model, mask)  # whole units only: shrink accepts the mask


def test_csr_speed_is_measured_on_the_tickets(tiny_run):
    _, results, printed, _ = tiny_run
    for task in "AB":
        csr = results["csr"][task]
        assert csr["max_abs_diff"] < 1e-4  # the exported ticket answers as the masked model
        assert 0 <= csr["csr_layers"] <= csr["pruned_layers"] == 12
        assert (csr["batch"], csr["threads"]) == (_demo_speed.BATCH, 1)
        assert f"{csr['csr_layers']} of {csr['pruned_layers']} pruned layers sparse" in printed
    assert set(results["timing"]) >= {"load", "pretrain", "imp", "structured", "csr"}


def test_speed_report_says_slower_when_slower():
    speed = {"speedup": 0.5, "baseline_ms": 1.0, "candidate_ms": 2.0, "batch": 64, "threads": 2}
    text = _demo_report._times(speed, "masked dense")
    assert text.startswith("2.00x slower than masked dense (1.00 -> 2.00 ms")
    assert "batch 64, 2 threads" in text
