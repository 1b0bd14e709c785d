"""The package's shape, checked: one composition root, no import cycles.

Imports are read with ``ast`` from every module of ``audiosocket_gw`` (imports inside
functions and under ``if TYPE_CHECKING:`` included), relative imports resolved.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "audiosocket_gw"
ROOT = "audiosocket_gw.gateway"
ALLOWED_ROOT_IMPORTERS = {"audiosocket_gw.gateway", "audiosocket_gw.cli"}


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Package modules ``name`` imports (the most specific existing module)."""
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" for a in node.names] + [mod]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("audiosocket_gw"):
                found.add(t)
    # "from .x import y" names both x and x.y; keep only the most specific one per chain
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_only_the_cli_imports_the_composition_root() -> None:
    g = graph()
    assert ROOT in g
    offenders = sorted(m for m, deps in g.items() if ROOT in deps and m not in
                       ALLOWED_ROOT_IMPORTERS)
    assert offenders == [], f"modules importing the composition root: {offenders}"


def test_the_package_has_no_import_cycle() -> None:
    found = cycles(graph())
    assert found == [], "import cycles (TYPE_CHECKING included):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_the_checks_can_fail() -> None:
    """The cycle finder and the import reader see what they must."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    g = graph()
    assert "audiosocket_gw.settings" in g["audiosocket_gw.gateway"]
    # the TYPE_CHECKING-only import of the context is seen
    assert "audiosocket_gw.context" in g["audiosocket_gw.routing"]
