"""The package reads as the journey of a weight: chapter names at the top, imports running one way.

Every ``import`` in labkit, at module level or inside a function, is an edge of a graph; these
tests check that the graph has no cycle and no edge pointing up the journey.
"""

from __future__ import annotations

import ast
from pathlib import Path

import labkit

ROOT = Path(labkit.__file__).parent
CHAPTERS = ("hierarchy", "quant", "gguf", "loading", "runtime", "staging")
ON_TOP = ("figures", "widgets", "checks", "cli")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module this file imports (``from labkit.x import y`` counts as labkit.x and labkit.x.y)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in files and m != name} for name, path in files.items()}


def _part(module: str) -> str:
    """``labkit.runtime.model`` -> ``runtime``; ``labkit.errors`` -> ``errors``."""
    return module.split(".")[1] if module.count(".") else ""


def test_listing_reads_as_the_table_of_contents() -> None:
    entries = {p.stem for p in ROOT.iterdir() if not p.name.startswith("_") and p.name != "data"}
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    assert set(CHAPTERS) <= packages, "one subpackage per chapter"
    at_root = {"errors", "formats", "modelfiles", "peers", "classroom", "journey"}  # journey: chapter 7
    assert entries - set(CHAPTERS) - set(ON_TOP) <= at_root
    for helpers in ("figures", "widgets", "checks", "cli"):
        names = {p.stem for p in (ROOT / helpers).glob("*.py") if not p.name.startswith("_")}
        assert names <= set(CHAPTERS) | {"common", "capstone", "tour", "classroom"}, (helpers, names)


def test_no_import_cycle() -> None:
    graph = _graph()
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, "import cycle: " + " -> ".join((*path, module))
        if module in done:
            return
        for target in graph[module]:
            if not (target in module and module.startswith(target + ".")):  # a package's own __init__
                visit(target, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())


# part -> the parts it must never import (directly or lazily)
FORBIDDEN = {
    "errors": {*CHAPTERS, *ON_TOP, "formats", "modelfiles", "peers"},
    "formats": {*CHAPTERS, *ON_TOP, "modelfiles", "peers"},
    "hierarchy": {
        "quant",
        "gguf",
        "loading",
        "runtime",
        "staging",
        *ON_TOP,
        "modelfiles",
        "peers",
        "formats",
    },
    "gguf": {"loading", "runtime", "staging", *ON_TOP, "modelfiles"},
    "loading": {"runtime", "staging", *ON_TOP},
    "runtime": {"loading", "staging", *ON_TOP},
    "staging": set(ON_TOP),
    "modelfiles": {"loading", "runtime", "staging", *ON_TOP},
    "figures": {"widgets", "checks", "cli"},
    "checks": {"figures", "widgets", "cli"},
    "widgets": {"cli"},
}


# The capstone's journey (labkit.journey) runs every chapter: it sits above them and below the views.
FORBIDDEN["journey"] = set(ON_TOP)
for _below in ("errors", "formats", *CHAPTERS, "modelfiles"):
    FORBIDDEN.setdefault(_below, set()).add("journey")


def test_imports_never_point_up_the_journey() -> None:
    upward = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in targets
        if _part(target) in FORBIDDEN.get(_part(module), set())
    ]
    assert not upward


def test_core_never_imports_plotly_or_ipywidgets() -> None:
    for path in ROOT.rglob("*.py"):
        if _part(_module_name(path)) in ("figures", "widgets"):
            continue
        heavy = {m for m in _imports(path) if m.split(".")[0] in ("plotly", "ipywidgets", "anywidget")}
        assert not heavy, f"{path.relative_to(ROOT)} imports {heavy}"
