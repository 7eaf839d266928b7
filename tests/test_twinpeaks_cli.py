"""``d2tls twinpeaks`` for real: processes on loopback UDP, Knot DNS (d2tls.lab.dns).

The demo runs the whole hierarchy, its lookups and its connections and exits 0; a root key
server process and ``lookup`` against it with a real DNS server give a signed denial for a
name it has no child for; a root with a state directory, a member process, a resolver
service, ``lookup --resolver`` and ``connect`` work across a restart of the root; bad command
lines exit 2 with the cause; ``model diagram`` draws the TwinPeaks roles.
"""

from __future__ import annotations

import json
import signal
import stat
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
    first, served, wrong, recovered = report["connections"]
    assert first["ok"] and first["echo"] == "hello alice" and first["attempts"] == 1
    assert served["ok"] and any("resolver service" in line for line in served["timeline"])
    assert not wrong["ok"] and wrong["error_type"] == "WrongServerName"
    assert recovered["ok"] and recovered["outdated_key_recovered"]
    assert recovered["attempts"] == 2 and recovered["serial"] == 2 == updated["serial"]
    assert recovered["q"] == updated["q"]
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


@pytest.mark.parametrize("role", ["member", "key_server", "resolver", "client"])
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


# --------------------------------------------------------------------------- processes
class Process:
    """A long-running ``d2tls twinpeaks`` process; ready when its first line is printed."""

    def __init__(self, *argv: str) -> None:
        self.proc = subprocess.Popen(
            [*CLI, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            _, err = self.proc.communicate(timeout=15)
            raise AssertionError(f"{argv[0]} exited {self.proc.returncode}: {err}")
        self.first_line = line

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        assert self.proc.returncode == 130 and "Traceback" not in err, err
        return err


def cli_json(*argv: str) -> tuple[int, dict[str, object]]:
    done = subprocess.run([*CLI, *argv, "--json"], capture_output=True, text=True, timeout=60)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def test_processes_resolver_service_connect_and_key_server_restart(tmp_path: Path) -> None:
    """Real processes on loopback: a root key server keeping its state, a member serving DTLS
    with its TwinPeaks key, a resolver service, Knot DNS. ``lookup --resolver`` and ``connect
    --resolver`` succeed; after the root restarts from its state directory, ``connect --root``
    with the anchor written before the restart finds the member's key still valid."""
    root_port, member_port, resolver_port = free_port(), free_port(), free_port()
    state, anchor, params = tmp_path / "root-state", tmp_path / "root.cbor", tmp_path / "p.cbor"
    psk = "ab" * 16
    root_argv = [
        "keyserver",
        "--zone",
        ".",
        "--listen",
        f"127.0.0.1:{root_port}",
        "--child",
        f"alice:alice.example.test:{psk}",
        "--state-dir",
        str(state),
        "--anchor-out",
        str(anchor),
        "--params-out",
        str(params),
    ]
    running: list[Process] = []
    try:
        running.append(Process(*root_argv))
        running.append(
            Process(
                "member",
                "--name",
                "alice.example.test",
                "--listen",
                f"127.0.0.1:{member_port}",
                "--parent",
                f"127.0.0.1:{root_port}",
                "--parent-params",
                str(params),
                "--psk",
                f"alice:{psk}",
            )
        )
        assert "registered (serial 1)" in running[-1].first_line
        with dnslab.running(dnslab.demo_zones(), tmp_path / "knot") as knot:
            dns = f"127.0.0.1:{knot.port}"
            running.append(
                Process(
                    "resolver",
                    "--root",
                    str(anchor),
                    "--dns",
                    dns,
                    "--listen",
                    f"127.0.0.1:{resolver_port}",
                )
            )
            service = f"127.0.0.1:{resolver_port}"
            code, looked = cli_json(
                "lookup", "alice.example.test", "--resolver", service, "--dns", dns
            )
            assert code == 0 and looked["ok"] and looked["serial"] == 1, looked
            connect = ["connect", "alice.example.test", "--port", str(member_port), "--dns", dns]
            code, via_service = cli_json(*connect, "--resolver", service, "--send", "ping")
            assert code == 0 and via_service["connected"] and via_service["echo"] == "ping"
            # Restart the root from its state directory: same master key, own key, records.
            anchor_bytes = anchor.read_bytes()
            assert stat.S_IMODE((state / "keyserver.state").stat().st_mode) == 0o600
            running.pop(0).stop()
            running.insert(0, Process(*root_argv))
            assert "1 keys restored" in running[0].first_line
            assert anchor.read_bytes() == anchor_bytes
            code, again = cli_json(*connect, "--root", str(anchor), "--send", "after restart")
            assert code == 0 and again["q"] == looked["q"] and again["echo"] == "after restart"
            assert again["attempts"] == 1 and not again["outdated_key_recovered"]
        for process in running:
            process.stop()
        running.clear()
        # A corrupt state file stops the key server with the cause, no traceback.
        (state / "keyserver.state").write_bytes(b"\xa1\x00\x00")
        done = subprocess.run([*CLI, *root_argv], capture_output=True, text=True, timeout=30)
        assert done.returncode == 2 and "refusing to start" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    finally:
        for process in running:
            process.proc.kill()
            process.proc.communicate()
