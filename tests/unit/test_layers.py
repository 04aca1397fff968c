"""Imports run one way, from the contract up to the command line, never back (docs/architecture.md).

    schemas, settings  ->  connect  ->  flows  ->  sinks  ->  streampulse (the command line)
    schemas, settings  ->  connect  ->  loadgen  ->  streampulse

A module may import its own layer and any layer below it. The check reads every import statement
(function-level ones included) of every module, so a back import fails here with its file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# What each top-level package may import from this project, besides itself.
ALLOWED: dict[str, frozenset[str]] = {
    "schemas": frozenset(),
    "settings": frozenset(),
    "connect": frozenset({"schemas", "settings"}),
    "flows": frozenset({"schemas", "settings", "connect"}),
    "sinks": frozenset({"schemas", "settings", "connect", "flows"}),
    "loadgen": frozenset({"schemas", "settings", "connect"}),
    "streampulse": frozenset({"schemas", "settings", "connect", "flows", "sinks", "loadgen"}),
}


def back_imports(package: str, source: str, path: str = "<source>") -> list[str]:
    """The imports in `source` (a module of `package`) that reach a package it may not import."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        for module in modules:
            top = module.split(".")[0]
            if top in ALLOWED and top != package and top not in ALLOWED[package]:
                found.append(f"{path}:{node.lineno}: {package} imports {module}")
    return found


def test_every_import_runs_down_the_layers() -> None:
    violations = []
    for package in ALLOWED:
        for path in sorted((REPO / package).rglob("*.py")):
            violations += back_imports(package, path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    assert violations == []


def test_a_back_import_is_caught() -> None:
    # What the check reports for the kinds of back import it must never let through.
    assert back_imports("flows", "from sinks.redis_sink import connect\n") == [
        "<source>:1: flows imports sinks.redis_sink"
    ]
    assert back_imports("settings", "def f():\n    import flows.windows.store\n") == [
        "<source>:2: settings imports flows.windows.store"
    ]
    assert back_imports("loadgen", "from streampulse import options\n") == ["<source>:1: loadgen imports streampulse"]
    assert back_imports("sinks", "from flows.windows.store import WindowUpdate\n") == []
