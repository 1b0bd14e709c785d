"""The runtime never imports the tooling in ``audiosocket_gw.testing``.

Why: the simulator, the local Realtime bot, the fake Twilio app, the demo and the
benchmarks ship in the package (the CLI runs them) but must never end up on a call's
path. Every module is parsed with :mod:`ast` and every import in it is checked: module
level, inside functions, under ``if TYPE_CHECKING:``, relative ones resolved, plus
``importlib.import_module("...")`` / ``__import__("...")`` with a literal name. Only the
``testing`` package itself and ``cli.py`` (which runs those commands, importing them
inside its functions) may import it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import audiosocket_gw

PACKAGE = "audiosocket_gw"
TOOLING = f"{PACKAGE}.testing"
ROOT = Path(audiosocket_gw.__file__).resolve().parent
CLI = f"{PACKAGE}.cli"


def module_name(path: Path) -> str:
    """Dotted name of the module at ``path`` (a file under :data:`ROOT`)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names (relative levels resolved)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base.pop()  # a plain module's package is its parent
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imported_names(
    source: str, module: str, is_package: bool = False
) -> Iterator[tuple[int, str]]:
    """(line, absolute dotted name) for everything ``source`` may import, anywhere in it.

    ``from X import y`` yields both ``X`` and ``X.y`` (``y`` may be a submodule).
    """
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node)
            yield node.lineno, target
            for alias in node.names:
                yield node.lineno, f"{target}.{alias.name}"
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    yield node.lineno, arg.value


def is_tooling(name: str) -> bool:
    return name == TOOLING or name.startswith(TOOLING + ".")


def tooling_imports(path: Path) -> list[str]:
    """``path:line: name`` for each import of the tooling package in the module."""
    module = module_name(path)
    return [
        f"{path.relative_to(ROOT.parent)}:{line}: imports {name}"
        for line, name in imported_names(path.read_text(), module, path.name == "__init__.py")
        if is_tooling(name)
    ]


def runtime_modules() -> list[Path]:
    """Every module of the package outside ``testing/``, ``cli.py`` excepted."""
    return [
        path
        for path in sorted(ROOT.rglob("*.py"))
        if not is_tooling(module_name(path)) and module_name(path) != CLI
    ]


def test_runtime_never_imports_the_tooling() -> None:
    modules = runtime_modules()
    assert len(modules) > 50  # the walk found the package
    bad = [hit for path in modules for hit in tooling_imports(path)]
    assert bad == [], "runtime modules import audiosocket_gw.testing:\n" + "\n".join(bad)


def test_cli_imports_the_tooling_only_inside_functions() -> None:
    tree = ast.parse((ROOT / "cli.py").read_text())
    top = ast.Module(
        body=[s for s in tree.body if not isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef)],
        type_ignores=[],
    )
    names = [name for _, name in imported_names(ast.unparse(top), CLI) if is_tooling(name)]
    assert names == []
    assert any(is_tooling(n) for _, n in imported_names((ROOT / "cli.py").read_text(), CLI))


def test_the_check_sees_every_kind_of_import() -> None:
    source = """
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from ..testing.localbot import LocalRealtimeBot
def f():
    from .. import testing
    import audiosocket_gw.testing.simulator
    importlib.import_module("audiosocket_gw.testing.demo")
from ..twilio.streams import MEDIA_FORMAT
from . import protocol
"""
    names = [n for _, n in imported_names(source, "audiosocket_gw.realtime.protocol")]
    hits = sorted({n for n in names if is_tooling(n)})
    assert hits == [
        "audiosocket_gw.testing",
        "audiosocket_gw.testing.demo",
        "audiosocket_gw.testing.localbot",
        "audiosocket_gw.testing.localbot.LocalRealtimeBot",
        "audiosocket_gw.testing.simulator",
    ]
    assert "audiosocket_gw.twilio.streams" in names
    assert "audiosocket_gw.realtime.protocol" in names
    # In a package's __init__, "." is the package itself.
    init = [n for _, n in imported_names("from .testing import x", "audiosocket_gw", True)]
    assert init == ["audiosocket_gw.testing", "audiosocket_gw.testing.x"]
    # Names that merely start alike are not the tooling.
    assert not is_tooling("audiosocket_gw.testing_helpers")
