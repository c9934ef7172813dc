"""Every module imports only from its own layer or the layers below it (see the README's
"Development" section): the foundations, the runtime core, the cluster, the transport,
the HTTP server, and the process that assembles a node."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "towtruck"

#: Lowest first. A top-level module by name; a subpackage by its folder.
LAYERS = [
    {"errors", "settings", "ids", "codec", "figures"},
    {"storage"},
    {
        "methods",
        "calls",
        "activation",
        "catalog",
        "client",
        "runtime",
        "failures",
        "watchdog",
        "state",
        "timers",
        "reminders",
        "tracing",
    },
    {"cluster"},
    {"transport"},
    {"server"},
    {"node", "process", "workers", "cli", "testing", "remote", "__init__", "__main__"},
]


def layer(module: str) -> int:
    """The layer of ``towtruck.<module>`` (dotted below the package)."""
    top = module.split(".")[0]
    for number, names in enumerate(LAYERS):
        if top in names:
            return number
    raise AssertionError(f"towtruck.{module} is in no layer: add it to LAYERS")


def imports(path: Path) -> list[str]:
    """The towtruck modules a file imports (dotted below the package), however it
    imports them (relative or absolute, under ``TYPE_CHECKING`` too)."""
    package = list(path.relative_to(PACKAGE).with_suffix("").parts)[:-1]
    return imports_in(path.read_text(), package)


def imports_in(source: str, package: list[str]) -> list[str]:
    """The towtruck modules ``source`` imports, were it a module of ``package``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
            elif (node.module or "").split(".")[0] == "towtruck":
                base = []
            else:
                continue
            module = [*base, *(node.module or "").split(".")] if node.module else base
            module = module[1:] if module[:1] == ["towtruck"] else module
            for alias in node.names:
                submodule = PACKAGE.joinpath(*module, alias.name)
                named = [*module, alias.name]
                if submodule.with_suffix(".py").exists() or submodule.is_dir():
                    found.append(".".join(named))
                elif module:
                    found.append(".".join(module))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("towtruck."):
                    found.append(alias.name.removeprefix("towtruck."))
    return found


def test_every_module_imports_only_downwards() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)
        for imported in imports(path):
            if layer(imported) > layer(module):
                wrong.append(f"towtruck.{module} imports towtruck.{imported}")
    assert wrong == []


def test_the_check_sees_imports_in_every_form() -> None:
    source = """
from typing import TYPE_CHECKING
from .. import codec
from ..server.app import App
from . import membership
import towtruck.transport.lanes
if TYPE_CHECKING:
    from towtruck.node import Node
"""
    found = imports_in(source, ["cluster"])
    assert found == ["codec", "server.app", "cluster.membership", "transport.lanes", "node"]
    assert [layer(name) > layer("cluster.router") for name in found] == [
        False,
        True,
        False,
        True,
        True,
    ]
