"""A normal install runs: the built wheel, in a fresh venv outside the checkout, finds its data.

The wheel is built from a copy of the sources (as ``pip install .`` would build it, with build
isolation: setuptools and wheel come from PyPI or pip's cache) and installed with the ``prove``
extra into a new venv in a temporary directory. Its ``d2tls`` then runs from a directory
outside the checkout with no PYTHONPATH, so nothing of the repository can be found.
Measured on the 2-core development machine with a warm pip cache: about 30 s in all.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from d2tls.core import resources
from d2tls.core.resources import ResourceError

ROOT = Path(__file__).resolve().parents[1]

#: Files the package reads at run time; the wheel must hold every one.
DATA_FILES = (
    "d2tls/data/spec/dtls.yaml",
    "d2tls/data/spec/d2tls.yaml",
    "d2tls/data/spec/delegation.md",
    "d2tls/data/proofs/d2tls_dtls12.spthy",
    "d2tls/data/proofs/expected.toml",
    "d2tls/data/proofs/experimental/d2tls_dtls12_ecdhe.spthy",
    "d2tls/bench/profiles/cc3200.toml",
    "d2tls/bench/profiles/cc2538.toml",
)

#: Variables that could let the installed d2tls see the checkout.
HIDDEN = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", resources.SPEC_ENV, resources.PROOFS_ENV)


# --------------------------------------------------------------------------- in the checkout


def test_repository_spec_and_proofs_are_the_package_data() -> None:
    """spec/ and proofs/ are symlinks to the directories the package ships, not copies."""
    for name, found in (("spec", resources.spec_dir), ("proofs", resources.proofs_dir)):
        link = ROOT / name
        assert link.is_symlink(), f"{name}/ must stay a symlink to src/d2tls/data/{name}"
        assert link.resolve() == (ROOT / "src" / "d2tls" / "data" / name).resolve()
        assert found().resolve() == link.resolve()


def test_override_variables_must_name_a_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(resources.SPEC_ENV, str(tmp_path))
    monkeypatch.setenv(resources.PROOFS_ENV, str(tmp_path))
    assert resources.spec_dir() == tmp_path and resources.proofs_dir() == tmp_path
    missing = tmp_path / "missing"
    monkeypatch.setenv(resources.SPEC_ENV, str(missing))
    with pytest.raises(ResourceError, match=re.escape(f"D2TLS_SPEC_DIR={missing}: no such dir")):
        resources.spec_dir()
    monkeypatch.setenv(resources.PROOFS_ENV, str(tmp_path / "file"))
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ResourceError, match=r"D2TLS_PROOFS_DIR=.*: no such directory"):
        resources.proofs_dir()


def test_no_module_finds_files_by_walking_up_from_its_own_path() -> None:
    """Run-time files come from d2tls.core.resources; a path built from __file__ breaks installs."""
    walking = re.compile(r"__file__|\.parents\[|\.parent\.parent")
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted((ROOT / "src" / "d2tls").rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if walking.search(line)
    ]
    assert not offenders, "\n".join(offenders)


# --------------------------------------------------------------------------- the installed wheel


def _run(argv: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in HIDDEN}
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


class Installed:
    """The wheel, and the venv it is installed in."""

    def __init__(self, wheel: Path, venv: Path, cwd: Path) -> None:
        self.wheel = wheel
        self.venv = venv
        self.cwd = cwd

    def d2tls(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return _run([str(self.venv / "bin" / "d2tls"), *args], self.cwd, timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    assert not base.resolve().is_relative_to(ROOT), "the venv must be outside the checkout"
    source = base / "source"  # a clean copy: no stale build/ or egg-info of the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "src",
        source / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"),
    )
    dist = base / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    built = _run([*pip, "wheel", "--no-deps", "-w", str(dist), str(source)], base)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = dist.glob("d2tls-*.whl")
    venv = base / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)], base)
    assert made.returncode == 0, made.stderr
    install = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    done = _run([*install, "install", "-q", f"{wheel}[prove]"], base)
    assert done.returncode == 0, done.stdout + done.stderr
    cwd = base / "elsewhere"
    cwd.mkdir()
    return Installed(wheel, venv, cwd)


@pytest.mark.timeout(900)
def test_wheel_holds_the_spec_and_the_theories(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    missing = [name for name in DATA_FILES if name not in names]
    assert not missing, f"not in {installed.wheel.name}: {missing}"
    assert not [n for n in names if n.startswith(("spec/", "proofs/", "tests/", "docs/"))]


@pytest.mark.timeout(900)
def test_installed_package_uses_its_own_data(installed: Installed) -> None:
    python = str(installed.venv / "bin" / "python")
    code = (
        "import d2tls, d2tls.core.resources as r; "
        "print(d2tls.__file__); print(r.spec_dir()); print(r.proofs_dir())"
    )
    result = _run([python, "-c", code], installed.cwd)
    assert result.returncode == 0, result.stderr
    venv = installed.venv.resolve()
    for line in result.stdout.splitlines():
        assert Path(line).resolve().is_relative_to(venv), line


@pytest.mark.timeout(900)
def test_installed_help(installed: Installed) -> None:
    result = installed.d2tls("--help")
    assert result.returncode == 0, result.stderr
    for command in ("client", "server", "demo", "prove"):
        assert command in result.stdout


@pytest.mark.timeout(900)
def test_installed_demo_succeeds(installed: Installed) -> None:
    """The end-to-end demo (server, agent, device, resumption) from the installed wheel."""
    result = installed.d2tls("demo", "--json")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["server"] == "d2tls"
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(900)
def test_installed_prove_check_only(installed: Installed) -> None:
    """``d2tls prove --check-only`` (no Tamarin): Tree-sitter syntax and spec consistency."""
    result = installed.d2tls("prove", "--check-only")
    assert result.returncode == 0, result.stdout + result.stderr
    first_line = result.stdout.splitlines()[0]
    assert "syntax ok" in first_line
    assert "d2tls_dtls12.spthy" in first_line and "twinpeaks.spthy" in first_line
    assert "every security-relevant one covered" in result.stdout
