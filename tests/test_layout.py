"""The package layout shows the architecture (docs/architecture.md, "Layout"):

* ``d2tls.core`` is the protocol core: the spec loader and model, the DTLS engine, delegation,
  the sans-IO roles, TwinPeaks, PKI and session stores. It imports nothing of the tooling and
  does no I/O of its own (no asyncio, sockets, subprocesses or event selectors);
* the tooling (``d2tls.net`` hosts and pumps, ``d2tls.sim``, conformance, bench, adversary,
  prove, lab, the CLI) builds on the core, never the reverse;
* the spec and the theories ship as package data under ``d2tls/data``.

Imports are read from the syntax tree, including imports inside functions, so a lazy import
of the tooling from the core fails here as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "d2tls"
CORE = PACKAGE / "core"
#: Standard-library modules that would give the core I/O of its own.
IO_MODULES = frozenset({"asyncio", "socket", "subprocess", "selectors", "socketserver"})
#: What lives at the top of the package besides the core: all of it tooling.
TOOLING = frozenset(
    {"adversary", "bench", "cli", "conformance", "interrupt", "lab", "net", "prove", "sim", "trace"}
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, relative ones resolved."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package.pop()
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            found.extend((node.lineno, f"{name}.{alias.name}") for alias in node.names)
    return found


def layer_violations(path: Path) -> list[str]:
    """What ``path`` (a core module) imports that the core may not."""
    problems = []
    for line, name in imported_modules(path):
        top = name.split(".")[0]
        where = f"{path.relative_to(ROOT)}:{line}"
        if name.startswith("d2tls.") and not name.startswith("d2tls.core"):
            if name.split(".")[1] != "data":
                problems.append(f"{where}: imports tooling {name}")
        elif top in IO_MODULES:
            problems.append(f"{where}: does I/O through {name}")
    return problems


def core_files() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_the_core_imports_no_tooling_and_does_no_io() -> None:
    problems = [problem for path in core_files() for problem in layer_violations(path)]
    assert problems == []


def test_the_check_catches_a_core_module_that_reaches_into_the_tooling() -> None:
    # A core module written the wrong way round, lazily and eagerly, relative and absolute.
    bad = CORE / "roles" / "_layout_probe.py"
    bad.write_text(
        "import asyncio\n"
        "from d2tls.net.pump import Pump\n"
        "def f() -> None:\n"
        "    from ...lab import demo\n"
        "    from d2tls.core.dtls import client\n",
        encoding="utf-8",
    )
    try:
        found = layer_violations(bad)
    finally:
        bad.unlink()
    assert [problem.split(": ", 1)[1] for problem in found] == [
        "does I/O through asyncio",
        "imports tooling d2tls.net.pump",
        "imports tooling d2tls.net.pump.Pump",
        "imports tooling d2tls.lab",
        "imports tooling d2tls.lab.demo",
    ]


def test_everything_outside_the_core_is_named_tooling() -> None:
    """A new top-level module must be placed on purpose: in the core, or in the tooling."""
    tops = {
        path.stem if path.is_file() else path.name
        for path in PACKAGE.iterdir()
        if (path.suffix == ".py" and path.stem != "__init__")
        or (path.is_dir() and (path / "__init__.py").exists())
    }
    assert tops - {"core"} == TOOLING


@pytest.mark.parametrize(
    "package", sorted(p.name for p in CORE.iterdir() if p.is_dir() and p.name != "__pycache__")
)
def test_every_core_package_is_a_regular_package(package: str) -> None:
    assert (CORE / package / "__init__.py").exists(), f"d2tls.core.{package} has no __init__.py"


def test_the_core_reaches_its_spec_as_package_data() -> None:
    from d2tls.core.resources import spec_dir

    assert (spec_dir() / "dtls.yaml").is_file()
    assert spec_dir().is_relative_to(PACKAGE / "data")


def test_no_virtual_environment_is_tracked() -> None:
    """A checkout's .venv (a directory, or a link to a shared one) is never part of the tree:
    a tracked link would replace the environment of whoever checks it out."""
    import subprocess

    tracked = subprocess.run(
        ["git", "ls-files", "--", ".venv", "venv"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert tracked == []
