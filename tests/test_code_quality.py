"""The code stays lint- and type-clean: part of the test run so CI enforces it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_ruff_finds_nothing() -> None:
    result = run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_applied() -> None:
    result = run("ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_finds_nothing() -> None:
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def wspush_imports() -> dict[str, set[str]]:
    """Module -> the modules it imports (at any depth of its code), by its source."""
    package = ROOT / "wspush"
    graph: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                imported.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = imported
    return {name: {i for i in imported if i in graph} for name, imported in graph.items()}


def test_no_module_of_wspush_imports_itself_through_others() -> None:
    graph = wspush_imports()
    cycles: list[list[str]] = []

    def visit(name: str, path: list[str]) -> None:
        for target in sorted(graph[name]):
            if target in path:
                cycles.append([*path[path.index(target) :], target])
            elif target not in done:
                visit(target, [*path, target])
        done.add(name)

    done: set[str] = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    assert not cycles, cycles


SERVER_PACKAGES = ("uvicorn", "httptools", "websockets")


def test_only_the_engine_touches_server_internals() -> None:
    """uvicorn, httptools and websockets are imported only under wspush/engine/, and
    uvicorn's public Config, Server and supervisor by the modules that serve."""
    public = {
        "wspush.serving": {"uvicorn"},
        "wspush.workers": {"uvicorn", "uvicorn.supervisors"},
        "wspush.expvar": {"uvicorn"},  # the -expvar listener is a uvicorn.Server too
    }
    for path in (ROOT / "wspush").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts)
        if parts[1:2] == ("engine",):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            modules = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for module in modules:
                if module.split(".")[0] in SERVER_PACKAGES:
                    assert module in public.get(name, set()), f"{name} imports {module}"


def test_the_contract_imports_nothing_of_a_server_or_of_the_relay() -> None:
    imported = wspush_imports()["wspush.contract"]
    assert not imported, imported
    source = (ROOT / "wspush" / "contract.py").read_text()
    assert not any(f"import {p}" in source or f"from {p}" in source for p in SERVER_PACKAGES)
