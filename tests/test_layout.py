"""The layout rules of the house (README, "Where things are"): the core imports nothing
above it, no two modules import each other, and no production module grows past 450
lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("tcms", "gateway", "tss", "ttp", "dc", "tsrg")
ABOVE_CORE = {"gateway", "tss", "ttp", "dc", "tsrg"}
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if "migrations" in parts:
                continue
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports, at any level of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {mod: _imports(path, known) - {mod} for mod, path in known.items()}


def test_the_core_imports_no_package_above_it() -> None:
    bad = sorted(f"{mod} imports {dep}" for mod, deps in _graph().items()
                 if mod.split(".")[0] == "tcms"
                 for dep in deps if dep.split(".")[0] in ABOVE_CORE)
    assert bad == []


def test_no_two_modules_import_each_other() -> None:
    graph = _graph()
    # a package's __init__ re-exporting its own modules is not a cycle of two modules
    pairs = sorted({tuple(sorted((a, b))) for a, deps in graph.items() for b in deps
                    if a in graph.get(b, set()) and not (a.startswith(b + ".")
                                                         or b.startswith(a + "."))})
    assert pairs == []


def test_the_checker_sees_a_mutual_import(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from a import x\n")
    known = {"a": tmp_path / "a.py", "b": tmp_path / "b.py"}
    assert _imports(known["a"], known) == {"b"}
    assert _imports(known["b"], known) == {"a"}


@pytest.mark.parametrize("mod", sorted(_modules()))
def test_no_module_is_over_the_size_limit(mod: str) -> None:
    lines = len(_modules()[mod].read_text().splitlines())
    assert lines <= MAX_LINES, f"{mod}: {lines} lines (split it by what it holds)"
