"""The scripts in examples/ run as shipped and print what they promise."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_finds_a_ticket_that_beats_random_pruning():
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    ticket = float(lines[-3].rsplit(" ", 1)[1])
    random = float(lines[-1].rsplit(" ", 1)[1])
    assert lines[-3].startswith("round 9: sparsity 0.950")
    assert ticket > random + 0.2
