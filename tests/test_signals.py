"""Every ``d2tls`` command stops cleanly on SIGINT (Ctrl-C) and SIGTERM.

Each command runs as a real subprocess in its own process group; once it is busy (listening,
waiting for an answer, or with its child processes running) the test sends the signal to
that process alone and checks: exit status 128 + signal (130 / 143), no traceback, and no
process left in its process group (the demo's OCSP responder, servers, agent, device, Redis
and third-party servers included).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import LoadedPKI
from d2tls.lab.peers import OutputCapture, free_udp_port

PSK = "dev:" + "11" * 16
SIGNALS = [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, process group) of ``pid`` from /proc, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie is gone for our purpose (its parent has not reaped it yet)
        return None
    return int(fields[1]), int(fields[2])


def _all_pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``."""
    out = []
    for pid in _all_pids():
        stat = _stat(pid)
        if stat is not None and stat[1] == pgid:
            out.append(pid)
    return out


def descendants(root: int) -> set[int]:
    """Live descendants of ``root``."""
    parents: dict[int, int] = {}
    for pid in _all_pids():
        stat = _stat(pid)
        if stat is not None:
            parents[pid] = stat[0]
    found: set[int] = set()
    frontier = {root}
    while frontier:
        children = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= children
        frontier = children
    return found


def stop_and_check(
    argv: list[str],
    sig: int,
    busy: Callable[[subprocess.Popen[bytes], OutputCapture], bool],
    *,
    busy_timeout: float = 60.0,
) -> str:
    """Start ``argv`` in its own group, wait until ``busy``, send ``sig``, check the exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "d2tls.cli", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    capture = OutputCapture(proc.stdout)
    children: set[int] = set()
    try:
        deadline = time.monotonic() + busy_timeout
        while not busy(proc, capture):
            assert proc.poll() is None, f"exited early ({proc.returncode}):\n{capture.text()}"
            assert time.monotonic() < deadline, f"never got busy:\n{capture.text()}"
            time.sleep(0.05)
        children = descendants(proc.pid)
        proc.send_signal(sig)
        status = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        capture.join()
    output = capture.text()
    assert "Traceback" not in output, output
    assert status == 128 + sig, f"exit status {status}:\n{output}"
    deadline = time.monotonic() + 10  # children reaped by their parent just before it exits
    while (left := group_members(proc.pid) + [p for p in children if _stat(p)]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    for pid in left:  # do not leak them into the rest of the suite
        os.kill(pid, signal.SIGKILL)
    assert not left, f"left running: {left}\n{output}"
    return output


def printed(text: str) -> Callable[[subprocess.Popen[bytes], OutputCapture], bool]:
    return lambda proc, capture: text.encode() in capture.data()


def has_children(n: int) -> Callable[[subprocess.Popen[bytes], OutputCapture], bool]:
    return lambda proc, capture: len(descendants(proc.pid)) >= n


@pytest.fixture
def silent() -> Iterator[socket.socket]:
    """A bound UDP socket on 127.0.0.1 that never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        yield sock


def received(sock: socket.socket) -> Callable[[subprocess.Popen[bytes], OutputCapture], bool]:
    """True once a datagram arrived at ``sock`` (the command is waiting for an answer)."""

    def check(proc: subprocess.Popen[bytes], capture: OutputCapture) -> bool:
        try:
            return bool(sock.recv(4096))
        except BlockingIOError:
            return False

    return check


@pytest.mark.parametrize("sig", SIGNALS)
def test_server(sig: int) -> None:
    argv = ["server", "--listen", "127.0.0.1:0", "--psk", PSK]
    stop_and_check(argv, sig, printed("listening on"))


@pytest.mark.parametrize("sig", SIGNALS)
def test_agent(sig: int, pki: LoadedPKI) -> None:
    argv = ["agent", "--listen", "127.0.0.1:0", "--psk-file", str(pki.paths.psk_file)]
    output = stop_and_check([*argv, "--ca", str(pki.paths.ca_cert)], sig, printed("listening"))
    assert "delegations completed" in output  # its summary, printed on the way out


@pytest.mark.parametrize("sig", SIGNALS)
def test_client_waiting_for_an_answer(sig: int, silent: socket.socket) -> None:
    port = silent.getsockname()[1]
    argv = ["client", f"127.0.0.1:{port}", "--psk", PSK, "--timeout", "60"]
    stop_and_check(argv, sig, received(silent))


@pytest.mark.parametrize("sig", SIGNALS)
def test_device_waiting_for_the_agent(sig: int, pki: LoadedPKI, silent: socket.socket) -> None:
    device = pki.paths.devices[0]
    argv = ["device", "--agent", f"127.0.0.1:{silent.getsockname()[1]}", "--psk", PSK]
    argv += ["--server", f"127.0.0.1:{free_udp_port()}", "--server-name", "localhost"]
    argv += ["--cert", str(device.cert), "--key", str(device.key), "--timeout", "60"]
    stop_and_check(argv, sig, received(silent))


@pytest.mark.parametrize("sig", SIGNALS)
def test_pki_ocsp(sig: int, pki: LoadedPKI) -> None:
    argv = ["pki", "ocsp", "--listen", "127.0.0.1:0", "--pki", str(pki.paths.directory)]
    stop_and_check(argv, sig, printed("listening"))


@pytest.mark.parametrize("sig", SIGNALS)
def test_demo_stops_its_processes(sig: int) -> None:
    """Stopped once the OCSP responder, the server and the agent run."""
    stop_and_check(["demo"], sig, has_children(3))


def test_demo_with_openssl_stops_s_server() -> None:
    if not _have("openssl"):
        pytest.fail("openssl is missing: scripts/setup.sh installs it")
    stop_and_check(["demo", "--server", "openssl"], signal.SIGTERM, has_children(3))


def test_fleet_demo_stops_redis_and_servers() -> None:
    """Redis, two servers and the agent (started in parallel) are stopped."""
    stop_and_check(["demo", "--fleet", "2"], signal.SIGINT, has_children(4))


def _have(tool: str) -> bool:
    return any(os.access(Path(d) / tool, os.X_OK) for d in os.environ["PATH"].split(os.pathsep))


def alive_for(seconds: float) -> Callable[[subprocess.Popen[bytes], OutputCapture], bool]:
    started = time.monotonic()
    return lambda proc, capture: time.monotonic() - started >= seconds


def test_conformance_probing_a_silent_server(pki: LoadedPKI, silent: socket.socket) -> None:
    paths = pki.paths
    argv = ["conformance", f"127.0.0.1:{silent.getsockname()[1]}", "--ca", str(paths.ca_cert)]
    argv += ["--cert", str(paths.devices[0].cert), "--key", str(paths.devices[0].key)]
    stop_and_check(argv, signal.SIGINT, received(silent))


def test_bench_record() -> None:
    stop_and_check(["bench", "record", "--runs", "100000"], signal.SIGTERM, alive_for(2))
