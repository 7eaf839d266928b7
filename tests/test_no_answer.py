"""A client or device with nothing answering: the failure names its cause, quickly.

Real UDP on 127.0.0.1: a bound socket that never replies (no answer from HOST:PORT after
N s), a closed port (ICMP port unreachable, reported at once instead of after the timeout),
and a peer that answers once and then goes silent. Every command runs as a subprocess.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import LoadedPKI
from d2tls.cli import HANDSHAKE_TIMEOUT, build_parser
from d2tls.lab.peers import free_udp_port

PSK = "dev:" + "11" * 16


def d2tls(*args: str, timeout: float = 60) -> tuple[int, str, str, float]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "d2tls.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started


@pytest.fixture
def silent() -> Iterator[int]:
    """The port of a bound UDP socket on 127.0.0.1 that never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def answers_once() -> Iterator[int]:
    """A UDP port that answers the first datagram with junk, then never again."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(30)

    def serve() -> None:
        try:
            _, peer = sock.recvfrom(4096)
            sock.sendto(b"\x16\xfe\xfd not a record", peer)
        except OSError:
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()
        thread.join(timeout=5)


def closed_port() -> int:
    """A UDP port on 127.0.0.1 where nothing listens (the kernel answers ICMP unreachable)."""
    return free_udp_port()


def device_argv(pki: LoadedPKI, *extra: str) -> list[str]:
    device = pki.paths.devices[0]
    return [
        "device",
        "--server-name",
        "localhost",
        "--cert",
        str(device.cert),
        "--key",
        str(device.key),
        *extra,
    ]


def test_default_timeout_is_10_s_for_client_and_device() -> None:
    parser = build_parser()
    assert HANDSHAKE_TIMEOUT == 10.0
    client = parser.parse_args(["client", "127.0.0.1:1"])
    device = parser.parse_args(
        ["device", "--server", "127.0.0.1:1", "--server-name", "x", "--cert", "c", "--key", "k"]
    )
    assert client.timeout == device.timeout == 10.0


@pytest.mark.parametrize("value", ["0", "-1", "x", "inf"])
def test_timeout_must_be_positive(value: str) -> None:
    status, _, err, _ = d2tls("client", "127.0.0.1:1", "--psk", PSK, "--timeout", value)
    assert status == 2 and "--timeout" in err and "Traceback" not in err, err


def test_client_no_answer_names_peer_and_wait(silent: int) -> None:
    status, out, err, took = d2tls(
        "client", f"127.0.0.1:{silent}", "--psk", PSK, "--timeout", "1.5"
    )
    assert status == 1, out + err
    assert err.strip() == f"failed: no answer from 127.0.0.1:{silent} after 1.5 s"
    assert took < 15


def test_client_closed_port_says_port_unreachable_at_once() -> None:
    port = closed_port()
    status, out, err, took = d2tls("client", f"127.0.0.1:{port}", "--psk", PSK, "--timeout", "30")
    assert status == 1, out + err
    assert f"port unreachable: 127.0.0.1:{port}" in err, err
    assert took < 15  # not the 30 s timeout: ICMP said nothing listens there


def test_client_peer_answered_then_silent(answers_once: int) -> None:
    port = answers_once
    status, out, err, _ = d2tls("client", f"127.0.0.1:{port}", "--psk", PSK, "--timeout", "1")
    assert status == 1, out + err
    assert f"handshake with 127.0.0.1:{port} not finished after 1 s" in err, err


def test_device_agent_not_answering(pki: LoadedPKI, silent: int) -> None:
    argv = device_argv(
        pki, "--agent", f"127.0.0.1:{silent}", "--psk", PSK, "--server", "127.0.0.1:9"
    )
    status, out, err, took = d2tls(*argv, "--timeout", "1")
    assert status == 1, out + err
    assert f"no answer from the agent at 127.0.0.1:{silent} after 1 s" in err, err
    assert took < 15


def test_device_agent_port_closed(pki: LoadedPKI) -> None:
    port = closed_port()
    argv = device_argv(pki, "--agent", f"127.0.0.1:{port}", "--psk", PSK, "--server", "127.0.0.1:9")
    status, out, err, took = d2tls(*argv, "--timeout", "30", "--json")
    assert status == 1, out + err
    assert f"port unreachable: 127.0.0.1:{port}" in out, out
    assert took < 15


@pytest.mark.parametrize("kind", ["silent", "closed"])
def test_standalone_device_server_not_answering(
    pki: LoadedPKI, silent: int, kind: str, tmp_path: Path
) -> None:
    port = silent if kind == "silent" else closed_port()
    argv = device_argv(pki, "--standalone", "--ca", str(pki.paths.ca_cert))
    status, out, err, _ = d2tls(*argv, "--server", f"127.0.0.1:{port}", "--timeout", "1")
    assert status == 1, out + err
    expected = (
        f"no answer from 127.0.0.1:{port} after 1 s"
        if kind == "silent"
        else (f"port unreachable: 127.0.0.1:{port}")
    )
    assert expected in err, err
    assert not err.rstrip().endswith(":")
