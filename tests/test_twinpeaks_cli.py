"""``d2tls twinpeaks`` for real: processes on loopback UDP, Knot DNS (d2tls.lab.dns).

The demo runs the whole hierarchy and exits 0; a root key server process and ``lookup``
against it with a real DNS server give a signed denial for a name it has no child for; bad
command lines exit 2 with the cause; ``model diagram`` draws the TwinPeaks roles.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from d2tls.lab import dns as dnslab
from d2tls.lab.dns import free_port

CLI = [sys.executable, "-m", "d2tls.cli", "twinpeaks"]


def test_demo_runs_and_reports_every_step() -> None:
    done = subprocess.run([*CLI, "demo", "--json"], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    cold, cached, updated = report["lookups"]
    assert not cold["from_cache"] and cached["from_cache"] and cold["q"] == cached["q"]
    assert updated["serial"] == 2 and updated["q"] != cold["q"]
    assert sum("key request" in line for line in cold["timeline"]) == 3
    assert all(a["as_expected"] for a in report["attacks"])
    assert {a["verdict"] for a in report["attacks"]} == {"prevented", "detected", "impersonation"}


def test_root_process_and_lookup_with_real_dns(tmp_path: Path) -> None:
    port = free_port()
    anchor = tmp_path / "root.cbor"
    server = subprocess.Popen(
        [
            *CLI,
            "keyserver",
            "--zone",
            ".",
            "--listen",
            f"127.0.0.1:{port}",
            "--anchor-out",
            str(anchor),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not anchor.exists() and time.monotonic() < deadline:
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            time.sleep(0.05)
        with dnslab.running(dnslab.demo_zones(), tmp_path / "knot") as knot:
            done = subprocess.run(
                [
                    *CLI,
                    "lookup",
                    "alice.example.test",
                    "--root",
                    str(anchor),
                    "--dns",
                    f"127.0.0.1:{knot.port}",
                    "--json",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
        out = json.loads(done.stdout)
        assert done.returncode == 1 and out["ok"] is False
        assert out["error_type"] == "KeyDenied" and "unknown name" in out["error"]
        assert any("DNS alice.example.test -> 127.0.0.1" in line for line in out["timeline"])
    finally:
        server.send_signal(signal.SIGINT)
        try:
            _, err = server.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert server.returncode == 130, err  # clean exit on Ctrl-C, no traceback
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv, cause",
    [
        (["keyserver", "--zone", ".", "--listen", "10.0.0.1:53"], "127.0.0.1:PORT"),
        (
            ["keyserver", "--zone", "test", "--listen", "127.0.0.1:1", "--parent", "127.0.0.1:2"],
            "come together",
        ),
        (["lookup", "x.test", "--root", "/nonexistent", "--dns", "127.0.0.1:53"], "nonexistent"),
    ],
)
def test_bad_command_lines_exit_2_with_the_cause(argv: list[str], cause: str) -> None:
    done = subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and cause in done.stderr and "Traceback" not in done.stderr


def test_hostile_anchor_file_is_a_typed_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.cbor"
    bad.write_bytes(b"\x81\x41\x00")
    done = subprocess.run(
        [*CLI, "lookup", "x.test", "--root", str(bad), "--dns", "127.0.0.1:53"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (
        done.returncode == 2 and "d2tls: error:" in done.stderr and "Traceback" not in done.stderr
    )


@pytest.mark.parametrize("role", ["member", "key_server", "resolver"])
def test_model_diagram_draws_the_twinpeaks_roles(tmp_path: Path, role: str) -> None:
    out = tmp_path / f"{role}.dot"
    done = subprocess.run(
        [sys.executable, "-m", "d2tls.cli", "model", "diagram", role, "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert out.read_text().startswith(f'digraph "{role}"')
