"""The demo's cheaper-tickets comparison (issue 14): rows, steps, IoU, the goal, resume."""

from __future__ import annotations

import io
import json
import shutil
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlticket import Ticket, saliency
from vlticket.adapters import adapter_for
from vlticket.cli import main
from vlticket.core import Checkpoint
from vlticket.demo import cheaper
from vlticket.demo import data as _demo_data
from vlticket.demo import model as _demo_model
from vlticket.demo import options as _demo_options
from vlticket.search import TicketSearch

TINY = {**_demo_options.DEFAULTS, **_demo_options.TINY}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One fresh ``--tiny`` demo: its folder, results.json and printout."""
    pytest.importorskip("easy_vqa")
    out = tmp_path_factory.mktemp("cheaper") / "demo"
    with pytest.MonkeyPatch.context() as mp:
        capture = io.StringIO()
        mp.setattr(sys, "stdout", capture)
        assert main(["demo", "--tiny", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text()), capture.getvalue()


def test_every_method_has_a_row_with_its_steps(tiny_run):
    out, results, _ = tiny_run
    c = results["cheaper"]
    assert c["settings"] == cheaper.settings(TINY)
    assert c["sparsity"] == TINY["sparsity"]
    steps = TINY["steps"]
    for task in "AB":
        rows = c["tasks"][task]["rows"]
        assert list(rows) == ["dense", "imp", *cheaper.METHODS]
        history = results["history"][task]
        assert rows["dense"] == {
            "accuracy": history[0]["metrics"]["accuracy"],
            "steps": history[0]["steps"],
        }
        assert rows["imp"]["accuracy"] == results["rows"][task]["imp"]
        assert rows["imp"]["steps"] == sum(h["steps"] for h in history) == steps * len(history)
        for method in ("snip", "grasp", "synflow", "rigl"):
            assert rows[method]["steps"] == steps  # trained once
        eb = rows["early_bird_imp"]
        assert eb["steps"] == sum(eb["round_steps"])
        assert len(eb["round_steps"]) == len(history)  # IMP's schedule
        assert eb["round_steps"][-1] == steps  # the ticket's own round is trained in full
        every, queue = c["settings"]["check_every"], c["settings"]["queue"]
        for used in eb["round_steps"][:-1]:  # stopped at a check, never before the queue fills
            assert queue * every <= used <= steps and used % every == 0
        for method in ("imp", *cheaper.METHODS):
            assert 0.0 <= rows[method]["iou"] <= 1.0
            assert 0.0 <= rows[method]["accuracy"] <= 1.0
            # every mask has the ticket's sparsity (exact counts: the same number of weights)
            assert rows[method]["sparsity"] == pytest.approx(results["rows"][task]["sparsity"])
        assert rows["imp"]["iou"] == 1.0
        ticket = Ticket.from_pretrained(out / f"ticket_{task}").mask
        assert c["tensors"] == len(ticket)
        emptied = [n for n, s in ticket.tensor_sparsity().items() if s == 1.0]
        assert rows["imp"]["emptied"] == len(emptied)
        for method in cheaper.METHODS:
            assert 0 <= rows[method]["emptied"] <= c["tensors"]


def test_table_prints_every_number_and_the_goal(tiny_run):
    _, results, printed = tiny_run
    c = results["cheaper"]
    assert printed.count("Cheaper tickets at 50.0% sparsity") == 1
    for task, result in c["tasks"].items():
        for method, row in result["rows"].items():
            line = next(x for x in printed.splitlines() if x.startswith(cheaper.NAMES[method]))
            assert f"{row['accuracy']:.3f}" in line and f" {row['steps']} " in line + " "
            if "iou" in row:
                assert f"{row['iou']:.3f}" in line
        assert cheaper.sentence(task, result) in printed.splitlines()
        _check_sentence(task, result)
    emptied = ", ".join(
        f"{cheaper.NAMES[m]} " + "/".join(str(r["rows"][m]["emptied"]) for r in c["tasks"].values())
        for m in ("imp", *cheaper.METHODS)
    )
    assert f"pruned entirely (of {c['tensors']}), task A/B: {emptied}." in printed


def _check_sentence(task: str, result) -> None:
    """The goal's sentence says what the numbers say, computed here from the rows alone."""
    rows = result["rows"]
    imp = rows["imp"]
    met = [
        m
        for m in cheaper.METHODS
        if imp["accuracy"] - rows[m]["accuracy"] <= 0.01 + 1e-12
        and 4 * rows[m]["steps"] <= imp["steps"]
    ]
    assert result["goal"]["met"] == met
    text = cheaper.sentence(task, result)
    assert text.startswith(f"Task {task}: IMP {imp['accuracy']:.3f} in {imp['steps']} steps")
    if met:
        assert "Within 1 point of IMP with <= 1/4 of its steps: " in text
        for m in cheaper.METHODS:
            assert (f"{cheaper.NAMES[m]} ({rows[m]['accuracy']:.3f}" in text) == (m in met)
    else:
        assert "None came within 1 point of IMP" in text
        for m in cheaper.METHODS:
            short = imp["accuracy"] - rows[m]["accuracy"]
            part = text.split(f"{cheaper.NAMES[m]} ", 1)[1].split(";")[0]
            assert (f"{100 * short:.1f} points below" in part) == (short > 0.01 + 1e-12)
            ratio = rows[m]["steps"] / imp["steps"]
            used = f"used {rows[m]['steps']} steps ({ratio:.2f} of IMP's)"
            assert (used in part) == (4 * rows[m]["steps"] > imp["steps"])


_row = st.fixed_dictionaries(
    {
        "accuracy": st.integers(0, 200).map(lambda k: k / 200),
        "steps": st.integers(1, 2000),
    }
)


@settings(max_examples=200, deadline=None)
@given(imp=_row, methods=st.lists(_row, min_size=5, max_size=5))
def test_goal_sentence_follows_the_numbers(imp, methods):
    rows = {"dense": {"accuracy": 0.5, "steps": 10}, "imp": imp}
    rows.update(dict(zip(cheaper.METHODS, methods, strict=True)))
    _check_sentence("A", {"rows": rows, "goal": cheaper.goal(rows)})


def test_goal_at_its_edges():
    rows = {
        "dense": {"accuracy": 0.9, "steps": 100},
        "imp": {"accuracy": 0.95, "steps": 1000},
        "early_bird_imp": {"accuracy": 0.94, "steps": 250},  # exactly 1 point, exactly 1/4
        "snip": {"accuracy": 0.939, "steps": 100},  # 1.1 points below
        "grasp": {"accuracy": 0.99, "steps": 251},  # better, but one step too many
        "synflow": {"accuracy": 0.5, "steps": 2000},
        "rigl": {"accuracy": 0.96, "steps": 100},
    }
    assert cheaper.goal(rows)["met"] == ["early_bird_imp", "rigl"]
    rows["early_bird_imp"]["accuracy"] = rows["rigl"]["accuracy"] = 0.5
    text = cheaper.sentence("B", {"rows": rows, "goal": cheaper.goal(rows)})
    assert text == (
        "Task B: IMP 0.950 in 1000 steps (1/4: 250). None came within 1 point of IMP with <= 1/4 "
        "of its steps: early-bird IMP 45.0 points below; SNIP 1.1 points below; GraSP used 251 "
        "steps (0.25 of IMP's); SynFlow 45.0 points below and used 2000 steps (2.00 of IMP's); "
        "RigL 45.0 points below."
    )


def test_rerun_trains_nothing(tiny_run, tmp_path, monkeypatch):
    first, results, _ = tiny_run
    out = tmp_path / "demo"
    shutil.copytree(first, out)
    calls = []
    for module, name in ((_demo_model, "train"), (saliency, "prune_at_init")):
        real = getattr(module, name)
        monkeypatch.setattr(
            module, name, lambda *a, _real=real, **k: calls.append(1) or _real(*a, **k)
        )
    assert main(["demo", "--tiny", "--out", str(out)]) == 0
    assert calls == []
    assert json.loads((out / "results.json").read_text())["cheaper"] == results["cheaper"]


def test_early_bird_imp_that_never_stops_is_imp(tiny_run, monkeypatch):
    """With no check in a round, early-bird IMP is the demo's IMP: same seeds, same ticket."""
    out, results, _ = tiny_run
    s = TINY
    data = _demo_data.load(max_images=s["max_images"])
    model = _demo_model.build_model(len(data.vocab), len(data.answers))
    adapter = adapter_for(model)
    theta0 = Checkpoint.load(out / "theta0.safetensors")
    c = {**cheaper.settings(s), "check_every": s["steps"] + 1}
    monkeypatch.setattr(cheaper, "settings", lambda _: c)
    task = cheaper._Task(model, adapter, theta0, "A", data, s, c)
    accuracy, steps, mask, per_round = cheaper._early_bird_imp(task)
    search = TicketSearch(
        model, sparsity=s["sparsity"], amount=s["amount"], adapter=adapter, run_dir=out / "task_A"
    )
    assert per_round == [h["steps"] for h in search.history]
    assert accuracy == results["rows"]["A"]["imp"]
    assert mask == search.mask
    assert steps == results["cheaper"]["tasks"]["A"]["rows"]["imp"]["steps"]


def test_interrupted_comparison_resumes_where_it_stopped(tiny_run, tmp_path, monkeypatch):
    """A folder without the comparison (an older demo's, or an interrupted one) gains it: an
    interrupt in the middle keeps the finished methods, and the re-run trains only the rest."""
    first, results, _ = tiny_run
    out = tmp_path / "demo"
    shutil.copytree(first, out)
    state = json.loads((out / "demo.json").read_text())
    state["measured"] = {k: v for k, v in state["measured"].items() if "/cheaper/" not in k}
    (out / "demo.json").write_text(json.dumps(state))
    real, scored = saliency.prune_at_init, []

    def interrupted(*args, **kwargs):
        scored.append(1)
        if len(scored) == 2:  # task A's GraSP, after early-bird IMP and SNIP finished
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(saliency, "prune_at_init", interrupted)
    assert main(["demo", "--tiny", "--out", str(out)]) == 130
    measured = json.loads((out / "demo.json").read_text())["measured"]
    assert [k for k in measured if "/cheaper/" in k] == [
        "A/cheaper/early_bird_imp",
        "A/cheaper/snip",
    ]
    monkeypatch.setattr(saliency, "prune_at_init", real)
    trains = []
    real_train = _demo_model.train
    monkeypatch.setattr(
        _demo_model, "train", lambda *a, **k: trains.append(1) or real_train(*a, **k)
    )
    assert main(["demo", "--tiny", "--out", str(out)]) == 0
    assert len(trains) == 3 + 6  # task A's GraSP, SynFlow, RigL; all of task B's
    assert json.loads((out / "results.json").read_text())["cheaper"] == results["cheaper"]
