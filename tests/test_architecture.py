"""The shape of the house: layers import only downward, no cycles, short functions and files.

Layers, bottom to top (a module may import its own layer and those below it, lazily or not):

    errors < config < model, optim, schedules, ... < data < rundir, checkpoint, trackers, hf
           < loop < tools < reports < auto < cli
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "steplab"

LAYERS: list[set[str]] = [
    {"steplab", "steplab.errors"},
    {"steplab.config"},
    {
        "steplab.presets",
        "steplab.model",
        "steplab.finetune",
        "steplab.optim",
        "steplab.schedules",
        "steplab.runtime",
        "steplab.dist",
        "steplab.stats",
        "steplab.evaluate",
        "steplab.generate",
        "steplab.figures",
        "steplab.progress",
        "steplab.atomic",
        "steplab.locks",
        "steplab.sizing",
        "steplab.rng",
    },
    {"steplab.data"},
    {
        "steplab.rundir",
        "steplab.runfiles",
        "steplab.checkpoint",
        "steplab.checkpoint_checks",
        "steplab.sharded",
        "steplab.trackers",
        "steplab.hf",
    },
    {"steplab.loop"},
    {"steplab.tools"},
    {"steplab.reports"},
    {"steplab.auto"},
    {"steplab.cli", "steplab.__main__"},
]
MAX_FUNCTION_LINES = 80
MAX_FILE_LINES = 450

# Known debts, to be paid off (each entry is a module, or an "importer -> imported" edge).
ALLOWED_LONG_FILES: set[str] = set()
ALLOWED_LONG_FUNCTIONS: set[str] = set()
ALLOWED_UPWARD: set[str] = set()


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def imports_of(path: Path, name: str) -> set[str]:
    """Every steplab module `path` imports, at the top or inside functions."""
    mods = modules()
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            if t.startswith("steplab") and t in mods and t != name:
                out.add(t)
    return out


def layer(name: str) -> int:
    for i, group in enumerate(LAYERS):
        for g in group:
            if name == g or (g != "steplab" and name.startswith(g + ".")):
                return i
    raise AssertionError(f"{name} is in no layer: add it to LAYERS in tests/test_architecture.py")


def graph() -> dict[str, set[str]]:
    return {n: imports_of(p, n) for n, p in modules().items()}


def test_every_module_has_a_layer() -> None:
    def placed(name: str) -> bool:
        return any(name == g or (g != "steplab" and name.startswith(g + ".")) for grp in LAYERS for g in grp)

    names = list(modules())
    assert len(names) > 100, "the scan found too few modules: is SRC right?"
    unplaced = [n for n in names if not placed(n)]
    assert not unplaced, "modules in no layer (add them to LAYERS): " + ", ".join(unplaced)
    assert not placed("steplab.not_a_module_anywhere")


def test_layers_import_only_downward() -> None:
    upward = sorted(
        f"{a} -> {b}"
        for a, deps in graph().items()
        for b in deps
        if layer(b) > layer(a) and b != "steplab" and f"{a} -> {b}" not in ALLOWED_UPWARD
    )
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_no_import_cycles() -> None:
    g = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for m in sorted(g[n]):
            if m in ("steplab",) or m not in g:
                continue
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m) :] + [m] if m in stack else [n, m])
            elif m not in state:
                visit(m, [*stack, m])
        state[n] = 2

    for n in sorted(g):
        if n not in state:
            visit(n, [n])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("name", sorted(modules()))
def test_functions_and_files_are_short(name: str) -> None:
    path = modules()[name]
    text = path.read_text()
    long_functions = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long_functions or name in ALLOWED_LONG_FUNCTIONS, (
        f"{name}: functions over {MAX_FUNCTION_LINES} lines: {long_functions}"
    )
    if name not in ALLOWED_LONG_FILES:
        n = len(text.splitlines())
        assert n <= MAX_FILE_LINES, f"{name}: {n} lines (split it by concept; at most {MAX_FILE_LINES})"
