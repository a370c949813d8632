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
