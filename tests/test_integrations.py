"""The Hugging Face Trainer integration: a real Trainer, a tiny ViLT, the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("accelerate")
transformers = pytest.importorskip("transformers")

import vlticket  # noqa: E402
from vlticket.integrations.transformers import TicketCallback  # noqa: E402

HERE = Path(__file__).parent


def _job(run_dir, out, *extra):
    env_path = str(HERE.parent)
    return subprocess.run(
        [sys.executable, str(HERE / "trainer_job.py"), str(run_dir), str(out), *extra],
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "PYTHONPATH": env_path},
    )


def test_importing_vlticket_does_not_import_transformers():
    code = "import sys, vlticket; assert 'transformers' not in sys.modules, 'imported'"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_callback_needs_a_round():
    with pytest.raises(vlticket.ArgumentError, match="`rnd`: expected the running round"):
        TicketCallback(None)
    search = vlticket.TicketSearch(torch.nn.Linear(4, 4), sparsity=0.5, progress=False)
    with pytest.raises(vlticket.ArgumentError, match="TicketSearch"):
        TicketCallback(search)


def test_trainer_keeps_pruned_weights_zero_and_a_killed_search_resumes(tmp_path):
    # One uninterrupted search, and one killed right after round 1 then started again.
    whole = _job(
        tmp_path / "whole",
        tmp_path / "whole.safetensors",
        "--progress",
        str(tmp_path / "whole.jsonl"),
    )
    assert whole.returncode == 0, whole.stderr[-3000:]
    rounds = [json.loads(line) for line in (tmp_path / "whole.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    # Gradient accumulation, clipping, warm-up, weight decay and AdamW: nothing revived.
    assert all(r["revived"] == 0 for r in rounds)

    killed = _job(tmp_path / "run", tmp_path / "k.safetensors", "--die-after-round", "1")
    assert killed.returncode == 3, killed.stderr[-3000:]
    resumed = _job(
        tmp_path / "run", tmp_path / "k.safetensors", "--progress", str(tmp_path / "resumed.jsonl")
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = [json.loads(line) for line in (tmp_path / "resumed.jsonl").read_text().splitlines()]
    assert [r["round"] for r in again] == [2]  # rounds 0 and 1 were not trained again
    final = vlticket.Mask.load(tmp_path / "k.safetensors")
    assert final == vlticket.Mask.load(tmp_path / "whole.safetensors")
    assert final.sparsity == pytest.approx(0.5, abs=1e-3)


def _accelerate(out, *launch):
    example = HERE.parent / "examples" / "accelerate_imp.py"
    cmd = [*launch, str(example), str(out)] if launch else [sys.executable, str(example), str(out)]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "PYTHONPATH": str(HERE.parent), "OMP_NUM_THREADS": "1"},
    )


def test_accelerate_one_process(tmp_path):
    run = _accelerate(tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    mask = vlticket.Mask.load(tmp_path / "mask.rank0.safetensors")
    assert mask.sparsity == pytest.approx(0.8, abs=1e-3)
    assert "round 0:" in run.stdout and "sparsity 0.800" in run.stdout


def test_accelerate_launch_two_cpu_processes_agree(tmp_path):
    launcher = Path(sys.executable).with_name("accelerate")
    run = _accelerate(
        tmp_path,
        str(launcher),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    a = vlticket.Mask.load(tmp_path / "mask.rank0.safetensors")
    b = vlticket.Mask.load(tmp_path / "mask.rank1.safetensors")
    assert a == b
    assert a.sparsity == pytest.approx(0.8, abs=1e-3)


class _Regressor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 16), torch.nn.Linear(16, 1)

    def forward(self, x, labels):
        return {"loss": (self.b(torch.relu(self.a(x))).squeeze(-1) - labels).pow(2).mean()}


class _Data(torch.utils.data.Dataset):
    def __len__(self):
        return 32

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"x": torch.randn(8, generator=g), "labels": torch.randn((), generator=g)}


def test_a_trainer_reused_with_the_last_rounds_callback_is_refused(tmp_path):
    torch.manual_seed(0)
    model = _Regressor()
    search = vlticket.TicketSearch(
        model, sparsity=0.5, amount=0.5, early_bird=True, early_bird_every=1, progress=False
    )
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=6,
        per_device_train_batch_size=4,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Data())
    rounds = iter(search)
    first = next(rounds)
    trainer.add_callback(TicketCallback(first))
    trainer.train()
    first.report(loss=1.0)
    second = next(rounds)
    trainer.add_callback(TicketCallback(second))  # round 0's callback is still there
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(vlticket.VlticketError, match="round 0, which is over.*remove_callback"):
        trainer.train()
    assert second.steps == 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    trainer.remove_callback(TicketCallback)  # the first one: round 0's
    trainer.train()
    assert second.steps == 6
    assert all((p[~second.mask[n]] == 0).all() for n, p in search._handle.params.items())
