"""Restart (issue 8): a ``d2tls server --session-store sqlite:///…`` process is killed and
restarted on the same port; the device still resumes the session its agent created, without
delegating again. With ``memory://`` the same restart forces a new delegation (the contrast).

Agent and device run in this process (real UDP on 127.0.0.1), the server as a subprocess.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import SERVER_NAME, LoadedPKI
from d2tls.core.pki.verify import load_psk_file
from d2tls.core.roles.agent import AgentConfig
from d2tls.core.roles.signer import DeviceSigner
from d2tls.core.store import write_key_file
from d2tls.lab.peers import free_udp_port
from d2tls.net.agent_host import Agent
from d2tls.net.device_host import Device, DeviceConfig


class ServerProcess:
    """``d2tls server`` as a subprocess, with its output in a log file."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.argv, self.log = argv, log
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as handle:
            self.popen = subprocess.Popen(
                self.argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if b"listening on" in self.log.read_bytes()[offset:]:
                return
            assert self.popen.poll() is None, self.log.read_text(errors="replace")
            time.sleep(0.02)
        raise AssertionError(f"server did not start: {self.log.read_text(errors='replace')}")

    def kill(self) -> None:
        """SIGKILL: a crash, nothing is flushed or closed cleanly."""
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=10)


def server_argv(pki: LoadedPKI, port: int, *store_args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "d2tls.cli",
        "server",
        "--listen",
        f"127.0.0.1:{port}",
        "--cert",
        str(pki.paths.server_cert),
        "--key",
        str(pki.paths.server_key),
        "--ca",
        str(pki.paths.ca_cert),
        "--require-client-cert",
        "--echo",
        *store_args,
    ]


def restart_scenario(pki: LoadedPKI, server: ServerProcess, port: int) -> list[Any]:
    """Connect (delegation), kill + restart the server, connect again; returns both reports."""

    async def scenario() -> list[Any]:
        agent = Agent(
            AgentConfig(psk_keys=load_psk_file(pki.paths.psk_file), trust_store=pki.store)
        )
        agent_address = await agent.start("127.0.0.1", 0)
        identity, psk = next(iter(load_psk_file(pki.paths.psk_file).items()))
        device = Device(
            DeviceConfig(
                agent=agent_address,
                psk_identity=identity,
                psk=psk,
                server=("127.0.0.1", port),
                server_name=SERVER_NAME,
                certificate_chain=pki.device.chain,
                signer=DeviceSigner(pki.device.key),
                timeout=10.0,
            )
        )
        try:
            first = await device.connect()
            first.send(b"before restart")
            assert await first.receive() == b"before restart"
            await first.close()
            await asyncio.to_thread(server.kill)
            await asyncio.to_thread(server.start)
            second = await device.connect()
            second.send(b"after restart")
            assert await second.receive() == b"after restart"
            await second.close()
            return [first, second]
        finally:
            agent.close()

    result: list[Any] = asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    return result


def test_sqlite_sessions_survive_a_server_restart(pki: LoadedPKI, tmp_path: Path) -> None:
    key_file = tmp_path / "store.key"
    write_key_file(key_file)
    database = tmp_path / "sessions.db"
    port = free_udp_port()
    server = ServerProcess(
        server_argv(
            pki,
            port,
            "--session-store",
            f"sqlite:///{database}",  # four slashes: an absolute path
            "--store-key-file",
            str(key_file),
        ),
        tmp_path / "server.log",
    )
    server.start()
    try:
        first, second = restart_scenario(pki, server, port)
    finally:
        server.stop()
    assert first.report.delegations == 1
    # The restarted server found the session in the SQLite file: no new delegation.
    assert second.report.delegations == 0
    assert second.report.resumed_from_cache
    assert second.session.session_id == first.session.session_id
    log = (tmp_path / "server.log").read_text()
    assert log.count("resumed=False") == 1, log  # only the agent's full handshake
    assert log.count("resumed=True") == 2, log  # before and after the restart
    assert database.exists()
    secret = bytes(first.session.master_secret)
    on_disk = b"".join(p.read_bytes() for p in tmp_path.glob("sessions.db*"))
    assert secret not in on_disk and secret.hex().encode() not in on_disk


def test_memory_sessions_are_lost_on_restart_and_the_device_delegates_again(
    pki: LoadedPKI, tmp_path: Path
) -> None:
    port = free_udp_port()
    server = ServerProcess(server_argv(pki, port), tmp_path / "server.log")
    server.start()
    try:
        first, second = restart_scenario(pki, server, port)
    finally:
        server.stop()
    assert first.report.delegations == 1
    assert second.report.delegations == 1  # refused resumption -> delegation (paper §4.2)
    assert second.session.session_id != first.session.session_id


def test_server_refuses_to_start_with_a_sqlite_store_and_no_key(
    pki: LoadedPKI, tmp_path: Path
) -> None:
    completed = subprocess.run(
        server_argv(pki, free_udp_port(), "--session-store", f"sqlite:///{tmp_path / 's.db'}"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode == 2
    assert "--store-key-file" in completed.stderr
