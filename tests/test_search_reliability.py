"""TicketSearch under failure and first use: retried reports, counted steps, strict arguments,
the run folder's lock and validation, strict JSON, and the ticket it writes."""

from __future__ import annotations

import errno
import gc
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hub_server import hub  # noqa: F401  (pytest fixture)
from test_search import X, Y, accuracy, make_model, run, train
from torch import nn

import vlticket
from vlticket.adapters import PatternAdapter, groups_for
from vlticket.errors import ArgumentError, FileFormatError, VlticketError
from vlticket.hub import Ticket
from vlticket.search import TicketSearch


def search_in(path, model=None, **kwargs) -> TicketSearch:
    args = {"sparsity": 0.5, "amount": 0.3, "progress": False, **kwargs}
    return TicketSearch(model if model is not None else make_model(), run_dir=path, **args)


# -- 1. a retried report does not double its effect ---------------------------------------------
@pytest.mark.parametrize("fail_at", ["mask", "history"])
def test_report_retried_after_a_failed_write_commits_once(tmp_path, monkeypatch, fail_at):
    model = make_model()
    reference = search_in(tmp_path / "ref", model)
    run(reference, model)

    model = make_model()
    search = search_in(tmp_path / "run", model)
    real_replace = os.replace
    failed = []

    def full_disk(src, dst):
        name = Path(dst).name
        wanted = name == "history.json" if fail_at == "history" else name.startswith("round_")
        if wanted and not failed:
            failed.append(name)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(src, dst)

    for rnd in search:
        train(model, rnd)
        if rnd.index == 1:
            on_disk = (tmp_path / "run" / "history.json").read_bytes()
            monkeypatch.setattr(os, "replace", full_disk)
            with pytest.raises(OSError, match="No space"):
                rnd.report(accuracy=accuracy(model))
            monkeypatch.setattr(os, "replace", real_replace)
            assert failed
            assert len(search.history) == 1  # nothing committed in memory ...
            assert (tmp_path / "run" / "history.json").read_bytes() == on_disk  # ... nor on disk
            with pytest.raises(ArgumentError, match="no mask yet"):
                search.mask_at(2)
            assert rnd.metrics is None
        rnd.report(accuracy=accuracy(model))
    assert search.finished
    assert [h["round"] for h in search.history] == list(range(len(search.schedule)))
    assert search.mask == reference.mask
    saved = json.loads((tmp_path / "run" / "history.json").read_text())["rounds"]
    assert [r["round"] for r in saved] == list(range(len(search.schedule)))
    assert not list((tmp_path / "run").rglob("*.tmp"))


def test_report_retried_without_run_dir(monkeypatch):
    model = make_model()
    search = TicketSearch(model, sparsity=0.5, amount=0.3, progress=False)
    calls = []
    real = vlticket.search.pruners.prune_magnitude

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(vlticket.search.pruners, "prune_magnitude", flaky)
    for rnd in search:
        train(model, rnd)
        if rnd.index == 0:
            with pytest.raises(MemoryError):
                rnd.report(accuracy=0.5)
            assert search.history == []
        rnd.report(accuracy=0.5)
    assert search.finished
    assert [h["round"] for h in search.history] == list(range(len(search.schedule)))


# -- 2. the history records the optimizer's steps -----------------------------------------------
def test_steps_are_counted_from_the_optimizer_once():
    model = make_model()
    search = TicketSearch(model, sparsity=0.5, amount=0.3, progress=False)
    for rnd in search:
        # Counting by hand as well, as the old docs said, must not double the count.
        train(model, rnd, steps=7 + rnd.index, search=search if rnd.index % 2 else None)
        assert rnd.steps == 7 + rnd.index
        rnd.report(accuracy=accuracy(model))
    assert [h["steps"] for h in search.history] == [7 + i for i in range(len(search.schedule))]


def test_two_optimizers_count_one_step_and_hooks_end_with_the_round():
    model = make_model()
    search = TicketSearch(model, sparsity=0.5, amount=0.3, progress=False)
    kept = []
    for rnd in search:
        head = torch.optim.SGD(model[4].parameters(), lr=0.1)
        body = torch.optim.SGD([p for m in model[:4] for p in m.parameters()], lr=0.1)
        rnd.add_optimizer(body)
        search.add_optimizer(head)
        rnd.add_optimizer(body)  # again: nothing more
        for _ in range(5):
            loss = nn.functional.cross_entropy(model(X), Y)
            body.zero_grad()
            head.zero_grad()
            loss.backward()
            body.step()
            head.step()
        kept.append(body)
        rnd.report(accuracy=accuracy(model))
    assert [h["steps"] for h in search.history] == [5] * len(search.schedule)
    assert all(not o._optimizer_step_post_hooks for o in kept)  # no hook outlives its round


@pytest.mark.parametrize("rewind_step", [3, 6])  # 6: round 0's last step, captured at report
def test_rewind_point_is_captured_at_the_optimizer_step(rewind_step):
    model = make_model()
    search = TicketSearch(model, sparsity=0.3, amount=0.2, rewind_step=rewind_step, progress=False)
    seen = {}
    for rnd in search:
        if rnd.index == 0:
            body = torch.optim.SGD([p for m in model[:4] for p in m.parameters()], lr=0.1)
            head = torch.optim.SGD(model[4].parameters(), lr=0.1)
            rnd.add_optimizer(body)
            rnd.add_optimizer(head)
            for step in range(6):
                loss = nn.functional.cross_entropy(model(X), Y)
                body.zero_grad()
                head.zero_grad()
                loss.backward()
                body.step()
                head.step()  # θi is the weights after both optimizers' step
                if step == rewind_step - 1:
                    seen = {n: p.detach().clone() for n, p in model.named_parameters()}
        else:
            for name, p in model.named_parameters():
                expected = seen[name] * rnd.mask[name] if name in rnd.mask else seen[name]
                assert torch.equal(p.detach(), expected)
            train(model, rnd, steps=2)
        rnd.report(accuracy=accuracy(model))
    assert search.history[0]["steps"] == 6


# -- 3. booleans are booleans ----------------------------------------------------------------------
@pytest.mark.parametrize(("name", "value"), [("one_shot", "no"), ("one_shot", 1), ("progress", 0)])
def test_flags_must_be_bool(name, value):
    kwargs = {"progress": False, name: value}
    with pytest.raises(ArgumentError, match=f"`{name}`"):
        TicketSearch(make_model(), sparsity=0.5, **kwargs)


# -- 4. scope, and sparsity by group --------------------------------------------------------------
def test_scope_tensor_prunes_each_tensor_and_is_recorded(tmp_path):
    model = make_model()
    search = search_in(tmp_path, model, scope="tensor")
    run(search, model)
    for name, keep in search.mask.items():
        assert abs((~keep).sum().item() / keep.numel() - 0.5) <= 1.5 / keep.numel(), name
    assert json.loads((tmp_path / "run.json").read_text())["scope"] == "tensor"
    with pytest.raises(ArgumentError, match="scope"):
        search_in(tmp_path, scope="global")


def test_unknown_scope_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ArgumentError, match="scope"):
        search_in(tmp_path / "run", scope="row")
    assert not (tmp_path / "run").exists()


def test_run_without_scope_resumes_as_global(tmp_path):
    search_in(tmp_path).close()
    record = json.loads((tmp_path / "run.json").read_text())
    del record["scope"]  # written before scope existed
    (tmp_path / "run.json").write_text(json.dumps(record))
    assert search_in(tmp_path).args["scope"] == "global"


def test_history_records_sparsity_by_group(caplog):
    model = make_model()
    search = TicketSearch(model, sparsity=0.5, amount=0.3, progress=False)
    with caplog.at_level("INFO", logger="vlticket.search.imp"):
        run(search, model)
    for i, entry in enumerate(search.history):
        mask = search.mask_at(i)
        assert entry["groups"] == vlticket.group_sparsity(mask, groups_for(list(mask)))
        assert set(entry["groups"]) == {"0", "2", "4"}
        numel = {g: sum(mask[n].numel() for n in ns) for g, ns in groups_for(list(mask)).items()}
        pruned = sum(s * numel[g] for g, s in entry["groups"].items())
        assert round(pruned) == mask.num_pruned
    assert "sparsity by group" in caplog.text


def test_history_groups_come_from_the_adapter_streams():
    model = make_model()
    adapter = PatternAdapter(include=[r"\d+\.weight"], name="sequential-test")
    search = TicketSearch(model, sparsity=0.5, amount=0.3, adapter=adapter, progress=False)
    run(search, model)
    assert [h["groups"] for h in search.history] == [{"all": h["sparsity"]} for h in search.history]


# -- 5. one writer per run folder ------------------------------------------------------------------
HOLDER = """
import sys, time
from torch import nn
from vlticket.search import TicketSearch
s = TicketSearch(nn.Linear(4, 4), sparsity=0.5, run_dir=sys.argv[1], progress=False)
print("ready", flush=True)
time.sleep(120)
"""


def test_second_process_is_refused_and_dead_owner_taken_over(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(VlticketError, match=rf"in use by process {proc.pid}") as e:
            TicketSearch(nn.Linear(4, 4), sparsity=0.5, run_dir=tmp_path, progress=False)
        assert str(tmp_path) in str(e.value)
    finally:
        proc.kill()
        proc.wait()
    # Killed: its lock names a pid that no longer runs on this host, so it is taken over.
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == proc.pid
    search = TicketSearch(nn.Linear(4, 4), sparsity=0.5, run_dir=tmp_path, progress=False)
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    search.close()
    assert not (tmp_path / ".lock").exists()


def test_lock_of_another_host_is_refused(tmp_path):
    tmp_path.joinpath(".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(VlticketError, match="process 1 on host 'elsewhere'"):
        search_in(tmp_path)
    tmp_path.joinpath(".lock").write_text("")  # unreadable: never assumed stale
    with pytest.raises(VlticketError, match="unknown process"):
        search_in(tmp_path)


def test_lock_released_by_close_with_finish_and_collection(tmp_path):
    lock = tmp_path / ".lock"
    with search_in(tmp_path) as search:
        assert lock.exists()
    assert not lock.exists()
    with pytest.raises(VlticketError, match="closed"):
        next(iter(search))
    model = make_model()
    search = search_in(tmp_path, model)
    run(search, model)
    assert not lock.exists()  # finished
    search = search_in(tmp_path / "other")
    assert (tmp_path / "other" / ".lock").exists()
    del search
    gc.collect()
    assert not (tmp_path / "other" / ".lock").exists()


def test_newer_search_in_the_same_process_takes_the_folder_over(tmp_path):
    model = make_model()
    old = search_in(tmp_path, model)
    rounds = iter(old)
    rnd = next(rounds)
    new = search_in(tmp_path, model)  # e.g. a notebook cell run again
    with pytest.raises(VlticketError, match="took the folder over"):
        rnd.report(accuracy=0.5)
    rounds.close()
    run(new, model)
    assert new.finished
    old.close()  # must not remove the lock or files of the newer search
    assert len(json.loads((tmp_path / "history.json").read_text())["rounds"]) == len(new.schedule)


def test_resume_removes_partial_files(tmp_path):
    model = make_model()
    run(search_in(tmp_path, model), model, stop_after=0)
    gc.collect()
    left = [tmp_path / ".history.json.x1.tmp", tmp_path / "masks" / ".round_002.safetensors.x.tmp"]
    for path in left:
        path.write_bytes(b"half")
    search_in(tmp_path, model)
    assert not any(p.exists() for p in left)


def test_unwritable_run_dir_fails_at_construction(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    with pytest.raises(VlticketError, match="cannot be written"):
        search_in(tmp_path / "file" / "run")
    model = make_model()
    run(search_in(tmp_path / "run", model), model, stop_after=0)
    gc.collect()
    real_open = os.open

    def read_only(path, flags, *args):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(VlticketError, match="cannot be written.*Read-only"):
        search_in(tmp_path / "run", model)


# -- 6. damaged run files are refused on resume ----------------------------------------------------
def _damage_history(rounds):
    return [
        ("rounds", "many", "'rounds'"),
        ("rounds", rounds + rounds + rounds, "at most"),
        ("entry", 3, "object"),
        ("del", "kept", "keys"),
        ("set", ("sparsity", "0.5"), "sparsity"),
        ("set", ("steps", -1), "steps"),
        ("set", ("round", 4), "'round'"),
        ("set", ("metrics", {"accuracy": "high"}), "metrics"),
        ("set", ("groups", [1]), "groups"),
        ("nan", None, "NaN"),
    ]


@pytest.fixture
def stopped_run(tmp_path):
    model = make_model()
    run(search_in(tmp_path, model), model, stop_after=1)
    gc.collect()
    return tmp_path, model


@pytest.mark.parametrize("case", range(10))
def test_damaged_history_is_a_file_format_error(stopped_run, case):
    path, model = stopped_run
    data = json.loads((path / "history.json").read_text())
    kind, value, message = _damage_history(data["rounds"])[case]
    text = None
    if kind == "rounds":
        data["rounds"] = value
    elif kind == "entry":
        data["rounds"][1] = value
    elif kind == "del":
        del data["rounds"][1][value]
    elif kind == "set":
        data["rounds"][1][value[0]] = value[1]
    else:
        text = json.dumps(data).replace('"seconds": ', '"seconds": NaN, "x": ', 1)
    (path / "history.json").write_text(text or json.dumps(data))
    with pytest.raises(FileFormatError, match="history.json") as e:
        search_in(path, model)
    assert message in str(e.value)
    assert not (path / ".lock").exists()  # a refused resume leaves the folder free


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("sparsity", "0.5"),
        ("one_shot", "no"),
        ("rewind_step", 0.5),
        ("shapes", {"0.weight": "16x8"}),
        ("schedule", [0, 1]),
        ("scope", 3),
    ],
)
def test_damaged_run_file_is_a_file_format_error(stopped_run, key, value):
    path, model = stopped_run
    data = json.loads((path / "run.json").read_text())
    data[key] = value
    (path / "run.json").write_text(json.dumps(data))
    with pytest.raises(FileFormatError, match=rf"run\.json.*{key}"):
        search_in(path, model)


# -- 7. strict JSON --------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [math.nan, math.inf, torch.tensor(-math.inf)])
def test_non_finite_metric_is_refused_before_any_write(tmp_path, bad):
    model = make_model()
    search = search_in(tmp_path, model)
    rounds = iter(search)  # held: a dropped generator ends its round
    rnd = next(rounds)
    train(model, rnd)
    with pytest.raises(ArgumentError, match="loss"):
        rnd.report(accuracy=0.5, loss=bad)
    assert not (tmp_path / "history.json").exists()
    rnd.report(accuracy=0.5, loss=1.0)
    text = (tmp_path / "history.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in history.json"))


# -- 8. an empty prunable set ---------------------------------------------------------------------
def test_model_without_prunable_weights_is_refused(tmp_path):
    with pytest.raises(ArgumentError, match="nothing to prune"):
        TicketSearch(nn.Sequential(nn.ReLU()), sparsity=0.5, run_dir=tmp_path, progress=False)
    assert not list(tmp_path.iterdir())


# -- 9. the search writes its ticket ---------------------------------------------------------------
def test_save_pretrained_describes_the_search(tmp_path):
    model = make_model()
    search = search_in(tmp_path / "run", model, rewind_step=2)
    with pytest.raises(VlticketError, match="not finished"):
        search.save_pretrained(tmp_path / "early")
    for rnd in search:
        train(model, rnd)
        rnd.report(accuracy=accuracy(model))
    folder = search.save_pretrained(
        tmp_path / "ticket", checkpoint=True, task="toy", license="mit", seed=7, dense_score=0.5
    )
    ticket = Ticket.from_pretrained(folder, checkpoint=True)
    c = ticket.config
    assert ticket.mask == search.mask
    assert (c.method, c.amount, c.rounds, c.rewind_step, c.scope) == (
        "imp",
        0.3,
        len(search.schedule) - 1,
        2,
        "global",
    )
    assert (c.task, c.license, c.seed, c.metric) == ("toy", "mit", 7, "accuracy")
    assert c.score == search.history[-1]["metrics"]["accuracy"]
    assert c.dense_score == 0.5  # the user's information wins
    assert dict(ticket.checkpoint).keys() == dict(search.rewind_checkpoint).keys()
    assert all(torch.equal(ticket.checkpoint[n], t) for n, t in search.rewind_checkpoint.items())


def test_one_shot_ticket_with_two_metrics_and_named_adapter(tmp_path):
    model = make_model()
    adapter = PatternAdapter(include=[r"\d+\.weight"], name="sequential-test")
    search = TicketSearch(model, sparsity=0.5, one_shot=True, adapter=adapter, progress=False)
    for rnd in search:
        train(model, rnd)
        rnd.report(accuracy=accuracy(model), loss=1.0)
    c = search.ticket().config
    assert (c.method, c.amount, c.rounds, c.adapter) == ("one-shot", None, 1, "sequential-test")
    assert (c.metric, c.score, c.dense_score) == (None, None, None)  # which metric is unclear


def test_push_to_hub_uploads_the_ticket(hub, tmp_path):  # noqa: F811
    model = make_model()
    search = TicketSearch(model, sparsity=0.5, amount=0.3, progress=False)
    run(search, model)
    url = search.push_to_hub("alice/search-ticket", task="toy", commit_message="IMP ticket")
    assert "alice/search-ticket" in url
    ticket = Ticket.from_pretrained("alice/search-ticket")
    assert ticket.mask == search.mask
    assert (ticket.config.task, ticket.config.method) == ("toy", "imp")


def test_lock_names_this_host(tmp_path):
    search = search_in(tmp_path)
    owner = json.loads((tmp_path / ".lock").read_text())
    assert (owner["pid"], owner["host"]) == (os.getpid(), socket.gethostname())
    search.close()
