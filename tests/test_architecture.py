"""The package's layers hold: the import-linter contract passes, and no import cycle exists.

Imports are read from the source (every ``import`` statement, including those inside functions
and under ``TYPE_CHECKING``), so a lazy import cannot hide an upward dependency.
"""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vlticket"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def _imports(name: str, path: Path) -> set[str]:
    """The vlticket modules ``name`` imports (the deepest existing module of each import)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (
                _resolve(name, is_package, node.level, node.module) if node.level else node.module
            )
            # `from pkg import sub` imports the submodule; `from mod import attr` the module.
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:
                t = t.rpartition(".")[0]
            if t.startswith("vlticket"):
                found.add(t)
    found.discard(name)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_the_graph_is_read():
    assert "vlticket.core.mask" in GRAPH["vlticket.core.pruning"]
    assert "vlticket.core.attach" in GRAPH["vlticket.core.mask"]
    assert len(MODULES) > 30


def test_no_module_imports_the_root_package():
    # `vlticket/__init__.py` imports every layer; reaching it from inside would go upward.
    offenders = sorted(n for n, deps in GRAPH.items() if "vlticket" in deps and n != "vlticket")
    assert offenders == []


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(GRAPH[node]):
            if state.get(dep) == 1:
                cycle = [*stack[stack.index(dep) :], dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_import_linter_layers_contract_passes():
    exe = shutil.which("lint-imports")
    assert exe, "import-linter is a dev dependency: pip install -e '.[dev]'"
    run = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "1 kept, 0 broken" in run.stdout


def test_the_contract_catches_an_upward_import(tmp_path):
    """The check can fail: a core module importing the search layer breaks the contract."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "vlticket", copy / "vlticket")
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    rewind = copy / "vlticket" / "core" / "rewind.py"
    rewind.write_text(rewind.read_text() + "\n\ndef _late():\n    from ..search import imp\n")
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlinter.cli import lint_imports_command as c; c()",
            "--no-cache",
        ],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode != 0
    assert "vlticket.core.rewind -> vlticket.search.imp" in run.stdout
