"""Time and randomness are injected into the protocol core (docs/architecture.md).

* no module of the core reads a clock or the system CSPRNG itself: only :mod:`d2tls.core.clock` and
  :mod:`d2tls.core.randomness` do (checked on the syntax tree, so strings and docs do not count);
* with a seeded :class:`~d2tls.core.randomness.SeededRandomness` and a fixed wall clock, two whole
  handshakes between our client and server, driven in process through the engines' five
  methods, send byte-identical datagrams (PSK, and ECDHE-ECDSA with RFC 6979 signatures);
* the defaults stay the system's: two default handshakes differ;
* certificate validity is checked at the injected wall-clock time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import (
    CLIENT_ADDRESS,
    SERVER_ADDRESS,
    LoadedPKI,
    client_config,
    psk_client_config,
    psk_server_config,
    server_config,
)
from d2tls.core.clock import FixedClock
from d2tls.core.dtls.client import DTLSClient
from d2tls.core.dtls.config import ClientConfig, ServerConfig
from d2tls.core.dtls.constants import AlertDescription
from d2tls.core.dtls.events import ConnectionTerminated, Event, HandshakeCompleted
from d2tls.core.dtls.server import DTLSServer
from d2tls.core.randomness import SYSTEM, SeededRandomness

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "d2tls" / "core"
#: The protocol core (sans-IO): it receives time and randomness, never reads them.
CORE = (
    "dtls",
    "roles",
    "delegation",
    "model",
    "pki",
    "store",
    "twinpeaks",
    "sansio.py",
    "errors.py",
    "trace.py",
    "resources.py",
)
#: The only modules allowed to read the system clock or generator.
ALLOWED = {PACKAGE / "clock.py", PACKAGE / "randomness.py"}

#: module -> attributes that read a clock or the system generator (None: every attribute).
FORBIDDEN_ATTRIBUTES: dict[str, frozenset[str] | None] = {
    "time": frozenset({"time", "time_ns", "monotonic", "monotonic_ns"}),
    "os": frozenset({"urandom", "getrandom"}),
    "secrets": None,
    "random": None,
    "datetime": frozenset({"now", "utcnow", "today"}),
    "date": frozenset({"today"}),
    "uuid": frozenset({"uuid1", "uuid4"}),
}
FORBIDDEN_FROM_IMPORTS = {
    "time": {"time", "time_ns", "monotonic", "monotonic_ns"},
    "os": {"urandom", "getrandom"},
    "secrets": None,
    "random": None,
}


def clock_or_rng_reads(source: str) -> list[tuple[int, str]]:
    """(line, text) of every direct read of a clock or of the system generator in ``source``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            if node.attr == "generate_private_key":
                found.append((node.lineno, f"….{node.attr}"))
            elif isinstance(node.value, ast.Name) and node.value.id in FORBIDDEN_ATTRIBUTES:
                names = FORBIDDEN_ATTRIBUTES[node.value.id]
                if names is None or node.attr in names:
                    found.append((node.lineno, f"{node.value.id}.{node.attr}"))
        elif isinstance(node, ast.ImportFrom) and node.module in FORBIDDEN_FROM_IMPORTS:
            names = FORBIDDEN_FROM_IMPORTS[node.module]
            for alias in node.names:
                if names is None or alias.name in names:
                    found.append((node.lineno, f"from {node.module} import {alias.name}"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in ("secrets", "random"):
                    found.append((node.lineno, f"import {alias.name}"))
    return found


def test_the_checker_finds_every_kind_of_read() -> None:
    source = "\n".join(
        [
            "import time, os, secrets",
            "from datetime import datetime",
            "from os import urandom",
            "from cryptography.hazmat.primitives.asymmetric import ec",
            "a = time.time()",
            "b = time.monotonic()",
            "c = os.urandom(32)",
            "d = secrets.token_bytes(32)",
            "e = datetime.now()",
            "f = ec.generate_private_key(ec.SECP256R1())",
            "g = 'os.urandom(32) in a string is fine'",
            "h = time.perf_counter()",
        ]
    )
    lines = sorted(line for line, _ in clock_or_rng_reads(source))
    assert lines == [1, 3, 5, 6, 7, 8, 9, 10]


def test_the_core_reads_no_clock_and_no_system_generator() -> None:
    offenders = []
    for package in CORE:
        paths = (
            [PACKAGE / package] if package.endswith(".py") else (PACKAGE / package).rglob("*.py")
        )
        for path in sorted(paths):
            assert path not in ALLOWED
            for line, text in clock_or_rng_reads(path.read_text(encoding="utf-8")):
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {text}")
    assert offenders == [], "use d2tls.core.clock / d2tls.core.randomness:\n" + "\n".join(offenders)
    # The two allowed modules are where the system sources are bound, and they are used.
    assert clock_or_rng_reads((PACKAGE / "clock.py").read_text(encoding="utf-8"))
    assert clock_or_rng_reads((PACKAGE / "randomness.py").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- determinism


def drain(engine: DTLSClient | DTLSServer) -> list[Event]:
    events = []
    while (event := engine.next_event()) is not None:
        events.append(event)
    return events


def handshake_datagrams(
    server_cfg: ServerConfig, client_cfg: ClientConfig
) -> tuple[list[tuple[str, bytes]], list[Event], list[Event]]:
    """Run one handshake in process through the five methods; every datagram, in order."""
    server = DTLSServer(server_cfg)
    client = DTLSClient(client_cfg, remote=SERVER_ADDRESS)
    now = 100.0
    client.connect(now)
    sent: list[tuple[str, bytes]] = []
    for _ in range(40):
        moved = False
        for datagram, _ in client.datagrams_to_send(now):
            sent.append(("client", datagram))
            server.receive_datagram(datagram, CLIENT_ADDRESS, now)
            moved = True
        for datagram, address in server.datagrams_to_send(now):
            assert address == CLIENT_ADDRESS
            sent.append(("server", datagram))
            client.receive_datagram(datagram, SERVER_ADDRESS, now)
            moved = True
        for engine in (client, server):
            deadline = engine.next_timer()
            if deadline is not None and deadline <= now:
                engine.handle_timer(now)
        if not moved:
            break
        now += 0.005
    return sent, drain(client), drain(server)


def completed(events: list[Event]) -> HandshakeCompleted:
    done = [e for e in events if isinstance(e, HandshakeCompleted)]
    assert len(done) == 1, events
    return done[0]


def seeded(seed: str, wall: float) -> dict[str, object]:
    return {"randomness": SeededRandomness(seed), "wall_clock": FixedClock(wall)}


WALL = 1_750_000_000.0


def test_a_seeded_psk_handshake_is_byte_identical() -> None:
    def run(client_seed: str = "client") -> list[tuple[str, bytes]]:
        sent, client_events, server_events = handshake_datagrams(
            psk_server_config(**seeded("server", WALL)),
            psk_client_config(**seeded(client_seed, WALL)),
        )
        assert completed(client_events).session.created_at == WALL
        assert completed(server_events).session.created_at == WALL
        return sent

    first, second = run(), run()
    # ClientHello, HelloVerifyRequest, ClientHello, server flight, client flight, server flight.
    assert len(first) >= 6
    assert first == second
    other = run("another client seed")
    assert len(other) == len(first) and other != first


def test_a_seeded_certificate_handshake_is_byte_identical(pki: LoadedPKI) -> None:
    wall = pki.server.leaf.not_valid_before_utc.timestamp() + 3600

    def run() -> list[tuple[str, bytes]]:
        sent, client_events, server_events = handshake_datagrams(
            server_config(pki, **seeded("server", wall)),
            client_config(pki, **seeded("client", wall)),
        )
        assert completed(client_events).session.peer_certificates == pki.server.chain
        assert completed(server_events).session.peer_certificates == pki.device.chain
        return sent

    first, second = run(), run()
    assert len(first) >= 6
    assert first == second


def test_the_default_randomness_is_the_system_generator(pki: LoadedPKI) -> None:
    assert client_config(pki).randomness is SYSTEM
    assert server_config(pki).randomness is SYSTEM
    first, _, _ = handshake_datagrams(psk_server_config(), psk_client_config())
    second, _, _ = handshake_datagrams(psk_server_config(), psk_client_config())
    assert first[0] != second[0]  # ClientHello randoms differ


def test_seeded_ecdsa_signs_deterministically_only_when_asked(pki: LoadedPKI) -> None:
    key = pki.device.key
    deterministic = SeededRandomness(1).ecdsa()
    assert key.sign(b"m", deterministic) == key.sign(b"m", SeededRandomness(2).ecdsa())
    randomized = SeededRandomness(1, deterministic_signing=False).ecdsa()
    assert key.sign(b"m", randomized) != key.sign(b"m", randomized)
    assert key.sign(b"m", SYSTEM.ecdsa()) != key.sign(b"m", SYSTEM.ecdsa())


@pytest.mark.parametrize("side", ["client", "server"])
def test_certificate_validity_is_checked_at_the_injected_wall_clock(
    pki: LoadedPKI, side: str
) -> None:
    leaf = (pki.server if side == "client" else pki.device).leaf
    late = {"wall_clock": FixedClock(leaf.not_valid_after_utc.timestamp() + 60)}
    server_cfg = server_config(pki, **(late if side == "server" else {}))
    client_cfg = client_config(pki, **(late if side == "client" else {}))
    _, client_events, server_events = handshake_datagrams(server_cfg, client_cfg)
    refuser = client_events if side == "client" else server_events
    ended = [e for e in refuser if isinstance(e, ConnectionTerminated)]
    assert len(ended) == 1 and not ended[0].by_peer
    assert ended[0].alert is AlertDescription.CERTIFICATE_EXPIRED
