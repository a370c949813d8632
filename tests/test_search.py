"""TicketSearch: IMP with rewinding inside the user's loop, resumable run folders."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import vlticket
from vlticket.errors import ArgumentError, NameMismatchError, VlticketError
from vlticket.search import TicketSearch, prune_schedule

DATA_G = torch.Generator().manual_seed(1)
X = torch.randn(128, 8, generator=DATA_G)
Y = (X[:, 0] > 0).long()


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2)
    )


def train(model: nn.Module, rnd, steps: int = 10, search=None) -> None:
    torch.manual_seed(rnd.index)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rnd.add_optimizer(opt)
    for _ in range(steps):
        idx = torch.randint(0, 128, (16,))
        loss = nn.functional.cross_entropy(model(X[idx]), Y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if search is not None:
            search.step()


def accuracy(model: nn.Module) -> float:
    with torch.no_grad():
        return float((model(X).argmax(1) == Y).float().mean())


def run(search: TicketSearch, model: nn.Module, stop_after: int | None = None) -> None:
    for rnd in search:
        train(model, rnd)
        rnd.report(accuracy=accuracy(model))
        if stop_after is not None and rnd.index == stop_after:
            break


@pytest.mark.parametrize(
    ("numel", "sparsity", "amount", "one_shot", "expected"),
    [
        (100, 0.3, 0.1, False, [0, 10, 19, 27, 30]),
        (100, 0.3, 0.1, True, [0, 30]),
        (10, 0.5, 0.2, False, [0, 2, 4, 5]),  # round(1.6) = 2, round(1.2) = 1 -> clipped at 5
        (1000, 0.19, 0.1, False, [0, 100, 190]),
    ],
)
def test_prune_schedule_hand_computed(numel, sparsity, amount, one_shot, expected):
    assert prune_schedule(numel, sparsity, amount, one_shot) == expected


def test_search_end_to_end_rewinds_and_keeps_zeros():
    model = make_model()
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    search = TicketSearch(model, sparsity=0.5, amount=0.2, progress=False)
    previous = None
    for rnd in search:
        # Each round starts from θ0 with the round's mask applied.
        for name, p in model.named_parameters():
            expected = theta0[name] * rnd.mask[name] if name in rnd.mask else theta0[name]
            assert torch.equal(p.detach(), expected)
        if previous is not None:
            assert not (rnd.mask & ~previous).num_kept  # pruned weights stay pruned
            assert rnd.mask.num_kept < previous.num_kept
        train(model, rnd)
        for name, keep in rnd.mask.items():
            assert not model.get_parameter(name)[~keep].any()
        rnd.report(accuracy=accuracy(model))
        previous = rnd.mask
    numel = search.mask.numel
    assert search.finished
    assert search.mask.num_pruned == round(0.5 * numel)
    assert [h["round"] for h in search.history] == list(range(len(search.schedule)))
    assert [round(h["sparsity"] * numel) for h in search.history] == search.schedule
    assert search.history[0]["sparsity"] == 0.0
    assert search.mask_at(0).sparsity == 0.0


def test_one_shot_has_two_rounds_and_reaches_target():
    model = make_model()
    search = TicketSearch(model, sparsity=0.8, one_shot=True, progress=False)
    run(search, model)
    assert len(search.history) == 2
    assert search.mask.num_pruned == round(0.8 * search.mask.numel)


def test_rewind_step_captures_theta_i():
    model = make_model()
    search = TicketSearch(model, sparsity=0.3, amount=0.2, rewind_step=3, progress=False)
    seen = {}
    for rnd in search:
        if rnd.index == 0:
            torch.manual_seed(0)
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            for step in range(6):
                loss = nn.functional.cross_entropy(model(X), Y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                search.step()
                if step == 2:
                    seen = {n: p.detach().clone() for n, p in model.named_parameters()}
        else:
            for name, p in model.named_parameters():
                expected = seen[name] * rnd.mask[name] if name in rnd.mask else seen[name]
                assert torch.equal(p.detach(), expected)
            train(model, rnd, steps=2)
        rnd.report(accuracy=accuracy(model))
    assert search.finished


def test_rewind_step_never_reached_raises():
    model = make_model()
    search = TicketSearch(model, sparsity=0.3, rewind_step=50, progress=False)
    with pytest.raises(VlticketError, match="rewind_step"):
        run(search, model)


def test_round_without_report_raises():
    model = make_model()
    search = TicketSearch(model, sparsity=0.3, progress=False)
    with pytest.raises(VlticketError, match="report"):
        for _rnd in search:
            pass


class FirstLayerOnly:
    """A stand-in adapter: only the first weight matrix, under a canonical name."""

    def prunable(self, model):
        return {"encoder.first": model[0].weight}


def test_adapter_names_the_prunable_set():
    model = make_model()
    search = TicketSearch(model, sparsity=0.5, amount=0.3, adapter=FirstLayerOnly(), progress=False)
    run(search, model)
    assert list(search.mask) == ["encoder.first"]
    assert search.mask.num_pruned == 64
    assert not model[0].weight[~search.mask["encoder.first"]].any()
    assert model[2].weight.count_nonzero() == model[2].weight.numel()


def test_resume_in_process_matches_uninterrupted(tmp_path):
    model = make_model()
    full = TicketSearch(model, sparsity=0.6, amount=0.2, run_dir=tmp_path / "a", progress=False)
    run(full, model)

    model = make_model()
    part = TicketSearch(model, sparsity=0.6, amount=0.2, run_dir=tmp_path / "b", progress=False)
    run(part, model, stop_after=1)
    assert len(part.history) == 2
    with torch.no_grad():  # a fresh process would start from other weights: they get rewound
        for p in model.parameters():
            p.add_(1.0)
    again = TicketSearch(model, sparsity=0.6, amount=0.2, run_dir=tmp_path / "b", progress=False)
    assert len(again.history) == 2
    run(again, model)
    assert again.mask == full.mask
    assert again.mask_at(2) == full.mask_at(2)
    saved = json.loads((tmp_path / "b" / "history.json").read_text())
    assert [r["round"] for r in saved["rounds"]] == list(range(len(full.schedule)))
    assert vlticket.Mask.load(tmp_path / "b" / "masks" / "round_001.safetensors") == full.mask_at(1)


def test_finished_run_yields_nothing(tmp_path):
    model = make_model()
    run(TicketSearch(model, sparsity=0.3, run_dir=tmp_path, progress=False), model)
    again = TicketSearch(model, sparsity=0.3, run_dir=tmp_path, progress=False)
    assert again.finished
    assert list(again) == []
    assert again.mask.num_pruned == round(0.3 * again.mask.numel)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"sparsity": 0.5}, "sparsity"), ({"amount": 0.2}, "amount"), ({"rewind_step": 2}, "rewind")],
)
def test_contradicting_arguments_raise(tmp_path, kwargs, name):
    model = make_model()
    TicketSearch(model, sparsity=0.3, amount=0.1, run_dir=tmp_path, progress=False)
    args = {"sparsity": 0.3, "amount": 0.1, **kwargs}
    with pytest.raises(ArgumentError, match=name):
        TicketSearch(model, run_dir=tmp_path, progress=False, **args)


def test_other_model_in_run_dir_raises(tmp_path):
    TicketSearch(make_model(), sparsity=0.3, run_dir=tmp_path, progress=False)
    with pytest.raises(NameMismatchError):
        TicketSearch(nn.Linear(3, 3), sparsity=0.3, run_dir=tmp_path, progress=False)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sparsity": 1.0},
        {"sparsity": 0.0},
        {"sparsity": 0.5, "amount": 1.5},
        {"sparsity": 0.5, "rewind_step": -1},
    ],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ArgumentError):
        TicketSearch(make_model(), progress=False, **kwargs)


def test_killed_process_resumes_bit_identical(tmp_path):
    job = Path(__file__).with_name("search_job.py")
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    ref = subprocess.run(
        [sys.executable, str(job), str(tmp_path / "ref"), str(tmp_path / "ref.mask")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ref.returncode == 0, ref.stderr
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(job), str(run_dir), str(tmp_path / "k.mask"), "--hang-in-round", "3"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "hanging").exists():
            assert proc.poll() is None, "the job ended before reaching round 3"
            assert time.monotonic() < deadline, "the job never reached round 3"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "k.mask").exists()
    assert json.loads((run_dir / ".lock").read_text())["pid"] == proc.pid  # left by the kill
    history = json.loads((run_dir / "history.json").read_text())["rounds"]
    assert [r["round"] for r in history] == [0, 1, 2]
    resumed = subprocess.run(
        [sys.executable, str(job), str(run_dir), str(tmp_path / "k.mask")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert not (run_dir / ".lock").exists()  # taken over from the dead pid, released at the end
    steps = [r["steps"] for r in json.loads((run_dir / "history.json").read_text())["rounds"]]
    assert steps == [40] * len(steps)  # counted from the optimizer: the job never calls step()
    final = vlticket.Mask.load(tmp_path / "k.mask")
    expected = vlticket.Mask.load(tmp_path / "ref.mask")
    assert final == expected
    assert final.num_pruned == round(0.6 * final.numel)
    for i in range(5):
        name = f"masks/round_{i:03d}.safetensors"
        assert vlticket.Mask.load(run_dir / name) == vlticket.Mask.load(tmp_path / "ref" / name)


def test_step_and_attach_outside_a_round_raise():
    model = make_model()
    search = TicketSearch(model, sparsity=0.3, progress=False)
    with pytest.raises(VlticketError, match="inside a round"):
        search.step()
    with pytest.raises(VlticketError, match="inside a round"):
        search.add_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(VlticketError, match="no round"):
        _ = search.mask


def test_report_twice_raises():
    model = make_model()
    search = TicketSearch(model, sparsity=0.3, progress=False)
    rnd = next(iter(search))
    rnd.report(accuracy=0.5)
    with pytest.raises(VlticketError, match="already reported"):
        rnd.report(accuracy=0.6)
    with pytest.raises(ArgumentError, match="accuracy"):
        next(iter(TicketSearch(model, sparsity=0.3, progress=False))).report(accuracy="high")
