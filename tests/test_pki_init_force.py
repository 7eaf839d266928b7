"""``d2tls pki init DIR`` on an existing PKI (issue 18, point 6).

Without ``--force`` it must refuse and change nothing; with ``--force`` it replaces the whole
PKI, so no device certificate or revocation list of the old CA is left behind.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from d2tls.core.pki.generate import PKIExistsError, existing_pki_files, init_pki


def pki_init(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "d2tls.cli", "pki", "init", str(directory), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_refuses_an_existing_pki_without_force(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    assert pki_init(directory, "--devices", "3").returncode == 0
    before = snapshot(directory)
    proc = pki_init(directory, "--devices", "1")
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"d2tls: error: {directory} already holds a PKI ("), proc.stderr
    assert "use --force to replace it" in proc.stderr
    assert proc.stdout == ""
    assert snapshot(directory) == before


def test_force_replaces_everything_and_removes_stale_devices(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    assert pki_init(directory, "--devices", "3").returncode == 0
    (directory / "revoked.json").write_text("{}")
    (directory / "notes.txt").write_text("mine")
    old_ca = (directory / "ca.pem").read_bytes()
    proc = pki_init(directory, "--devices", "1", "--force")
    assert proc.returncode == 0, proc.stderr
    assert (directory / "ca.pem").read_bytes() != old_ca
    names = {p.name for p in directory.iterdir()}
    assert "device-1.pem" in names and "device-1.key" in names
    assert not names & {"device-2.pem", "device-2.key", "device-3.pem", "device-3.key"}
    assert "revoked.json" not in names
    assert (directory / "notes.txt").read_text() == "mine"  # not a PKI file: kept
    assert len((directory / "psk.txt").read_text().splitlines()) == 1


@pytest.mark.parametrize("prepare", ["missing", "empty", "unrelated"])
def test_new_or_pki_free_directories_need_no_force(tmp_path: Path, prepare: str) -> None:
    directory = tmp_path / "pki"
    if prepare != "missing":
        directory.mkdir()
    if prepare == "unrelated":
        (directory / "README").write_text("x")
    assert pki_init(directory).returncode == 0
    assert (directory / "ca.pem").exists()


def test_library_refuses_only_when_asked(tmp_path: Path) -> None:
    init_pki(tmp_path, devices=2)
    with pytest.raises(PKIExistsError):
        init_pki(tmp_path, devices=1, replace=False)
    init_pki(tmp_path, devices=1)  # the library default replaces (and cleans up)
    assert [p.name for p in existing_pki_files(tmp_path) if p.name.startswith("device-")] == [
        "device-1.key",
        "device-1.pem",
    ]
