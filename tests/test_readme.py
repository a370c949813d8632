"""Every Python block in README.md runs as written (against a local Hub look-alike)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hub_server import FakeHub, hub_env

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(
    r"(<!-- (?:not run|continued)[^>]*-->\n)?```python\n(.*?)```",
    (ROOT / "README.md").read_text(),
    re.S,
)


def _runnable() -> list[str]:
    """Standalone blocks; a block marked `continued` runs after the block before it."""
    out: list[str] = []
    for marker, code in BLOCKS:
        if marker.startswith("<!-- not run"):
            continue
        out.append(out[-1] + code if marker.startswith("<!-- continued") else code)
    return out


RUNNABLE = _runnable()


def test_readme_has_examples():
    assert len(RUNNABLE) >= 5


@pytest.mark.parametrize("code", RUNNABLE, ids=[f"block{i}" for i in range(len(RUNNABLE))])
def test_readme_block_runs(code, tmp_path):
    (tmp_path / "tests").symlink_to(ROOT / "tests")
    hub = FakeHub().start()
    try:
        env = {**os.environ, **hub_env(hub, str(tmp_path / "hf")), "PYTHONPATH": str(ROOT)}
        run = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        hub.stop()
    assert run.returncode == 0, run.stderr[-3000:]
