"""Hostile input against the server's state before and after the cookie (issue 19).

RFC 6347 §4.2.1: no state before the cookie; RFC 6347 §4.2.3: fragments are held by what
arrived; half-open handshakes never displace established associations. The UDP tests use real
sockets on 127.0.0.1 (many source ports) and one a real ``d2tls server`` process.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import (
    CLIENT_ADDRESS,
    PSK_IDENTITY,
    PSK_KEY,
    SERVER_ADDRESS,
    LoadedPKI,
    Run,
    client_config,
    psk_client_config,
    psk_server_config,
    server_config,
)
from d2tls.core.dtls.client import DTLSClient
from d2tls.core.dtls.constants import (
    DTLS_1_2,
    MAX_SEQUENCE,
    AlertDescription,
    AlertLevel,
    ContentType,
    HandshakeType,
)
from d2tls.core.dtls.events import ConnectionTerminated
from d2tls.core.dtls.fragments import HandshakeFragment, encode_fragment, parse_handshake_fragments
from d2tls.core.dtls.messages import ClientHello
from d2tls.core.dtls.record import Record, encode_record, parse_datagram
from d2tls.core.dtls.server import (
    MAX_CLIENT_HELLO_LENGTH,
    MAX_PENDING_HELLO_BYTES,
    MAX_PENDING_HELLOS,
    PENDING_HELLO_TIMEOUT,
    DTLSServer,
)
from d2tls.net.udp import ClientEndpoint, ConnectionFailed, ServerEndpoint

MiB = 1 << 20


# --------------------------------------------------------------------------- helpers


def hello_fragment(
    body: bytes, *, length: int, offset: int, message_seq: int = 0, record_seq: int = 0
) -> bytes:
    """One datagram: an epoch-0 record carrying one ClientHello fragment."""
    fragment = HandshakeFragment(
        HandshakeType.CLIENT_HELLO, length, message_seq, offset, len(body), body
    )
    return encode_record(
        Record(ContentType.HANDSHAKE, DTLS_1_2, 0, record_seq, encode_fragment(fragment))
    )


def split_hello(datagram: bytes, pieces: int) -> list[bytes]:
    """Re-send a one-record ClientHello datagram as ``pieces`` fragments (RFC 6347 §4.2.3)."""
    ((record,), _) = parse_datagram(datagram)
    (whole,) = parse_handshake_fragments(record.fragment)
    size = -(-whole.length // pieces)
    return [
        hello_fragment(
            whole.body[off : off + size],
            length=whole.length,
            offset=off,
            message_seq=whole.message_seq,
            record_seq=record.sequence_number + i,
        )
        for i, off in enumerate(range(0, whole.length, size))
    ]


def with_message_seq(datagram: bytes, message_seq: int) -> bytes:
    """The datagram with its (first) handshake fragment's message_seq replaced."""
    data = bytearray(datagram)
    data[13 + 4 : 13 + 6] = message_seq.to_bytes(2, "big")
    return bytes(data)


def with_record_seq(datagram: bytes, record_seq: int) -> bytes:
    data = bytearray(datagram)
    data[5:11] = record_seq.to_bytes(6, "big")
    return bytes(data)


def alerts(datagram: bytes) -> list[tuple[int, int]]:
    records, _ = parse_datagram(datagram)
    return [(r.fragment[0], r.fragment[1]) for r in records if r.content_type == ContentType.ALERT]


def cookie_hello(
    server: DTLSServer, client: DTLSClient, peer: tuple[str, int], now: float
) -> bytes:
    """Run the cookie exchange; return the client's ClientHello that carries the cookie."""
    client.connect(now)
    ((hello, _),) = client.datagrams_to_send(now)
    server.receive_datagram(hello, peer, now)
    ((hvr, _),) = server.datagrams_to_send(now)
    client.receive_datagram(hvr, SERVER_ADDRESS, now)
    ((second, _),) = client.datagrams_to_send(now)
    return second


def half_open(server: DTLSServer, peer: tuple[str, int], now: float) -> None:
    """A handshake that passes the cookie and then goes silent (a half-open association)."""
    client = DTLSClient(psk_client_config(), remote=SERVER_ADDRESS)
    server.receive_datagram(cookie_hello(server, client, peer, now), peer, now)
    server.datagrams_to_send(now)


def established(server: DTLSServer, peer: tuple[str, int], now: float) -> DTLSClient:
    """A PSK handshake with ``peer`` run to completion by hand."""
    client = DTLSClient(psk_client_config(), remote=SERVER_ADDRESS)
    server.receive_datagram(cookie_hello(server, client, peer, now), peer, now)
    for _ in range(10):
        for datagram, to in server.datagrams_to_send(now):
            if to == peer:
                client.receive_datagram(datagram, SERVER_ADDRESS, now)
        out = client.datagrams_to_send(now)
        if not out:
            break
        for datagram, _ in out:
            server.receive_datagram(datagram, peer, now)
    conn = server.connection(peer)
    assert client.is_established and conn is not None and conn.is_established
    server.datagrams_to_send(now)
    return client


# --------------------------------------------------------------------------- sans-IO


def test_client_hello_with_message_seq_65535_is_refused_with_illegal_parameter() -> None:
    """It used to end in ``internal error: ValueError: message_seq=65536 does not fit`` and no
    alert. RFC 6347 §4.2.2: a ClientHello's message_seq counts the HelloVerifyRequests the
    client answered; an absurd one is illegal_parameter, answered statelessly."""
    server = DTLSServer(psk_server_config())
    client = DTLSClient(psk_client_config(), remote=SERVER_ADDRESS)
    client.connect(0.0)
    ((hello, _),) = client.datagrams_to_send(0.0)
    server.receive_datagram(with_message_seq(hello, 65535), CLIENT_ADDRESS, 0.0)
    ((reply, _),) = server.datagrams_to_send(0.0)
    assert alerts(reply) == [(AlertLevel.FATAL, AlertDescription.ILLEGAL_PARAMETER)]
    assert server.connection_count == 0

    # With a valid cookie too: the cookie covers the hello's fields, not its message_seq.
    second = cookie_hello(
        server, DTLSClient(psk_client_config(), remote=SERVER_ADDRESS), CLIENT_ADDRESS, 1.0
    )
    server.receive_datagram(with_message_seq(second, 65535), CLIENT_ADDRESS, 1.0)
    ((reply, _),) = server.datagrams_to_send(1.0)
    assert alerts(reply) == [(AlertLevel.FATAL, AlertDescription.ILLEGAL_PARAMETER)]
    ends = [e for e in iter(server.next_event, None) if isinstance(e, ConnectionTerminated)]
    assert len(ends) == 2 and all(e.peer == CLIENT_ADDRESS for e in ends)
    end = ends[-1]
    assert "message_seq 65535" in end.reason and end.alert == AlertDescription.ILLEGAL_PARAMETER
    assert server.connection_count == 0 and server.counters().internal_errors == 0

    # A client that answered a few HelloVerifyRequests (message_seq 2) is still served.
    third = cookie_hello(
        server, DTLSClient(psk_client_config(), remote=SERVER_ADDRESS), ("198.51.100.8", 1), 2.0
    )
    server.receive_datagram(with_message_seq(third, 2), ("198.51.100.8", 1), 2.0)
    assert server.counters().half_open == 1


def test_hello_verify_request_is_never_larger_than_the_smallest_client_hello() -> None:
    """RFC 6347 §4.2.1: the HelloVerifyRequest must be small (no amplification). The smallest
    ClientHello the server answers (one suite, no extensions: 67 bytes) gets 60 bytes back."""
    server = DTLSServer(psk_server_config())
    body = ClientHello(DTLS_1_2, bytes(32), b"", b"", (0xC0A8,), (0,), ()).encode()
    datagram = encode_record(
        Record(
            ContentType.HANDSHAKE,
            DTLS_1_2,
            0,
            0,
            encode_fragment(
                HandshakeFragment(HandshakeType.CLIENT_HELLO, len(body), 0, 0, len(body), body)
            ),
        )
    )
    server.receive_datagram(datagram, CLIENT_ADDRESS, 0.0)
    ((reply, _),) = server.datagrams_to_send(0.0)
    ((record,), _) = parse_datagram(reply)
    (fragment,) = parse_handshake_fragments(record.fragment)
    assert fragment.msg_type == HandshakeType.HELLO_VERIFY_REQUEST
    assert (len(datagram), len(reply)) == (67, 60)


def test_client_hello_record_sequence_number_near_2_48_is_refused() -> None:
    """Our epoch-0 records continue from the ClientHello's record sequence number (RFC 6347
    §4.2.1); one near 2^48 would exhaust them (RFC 6347 §4.1: they never wrap)."""
    server = DTLSServer(psk_server_config())
    second = cookie_hello(
        server, DTLSClient(psk_client_config(), remote=SERVER_ADDRESS), CLIENT_ADDRESS, 0.0
    )
    server.receive_datagram(with_record_seq(second, MAX_SEQUENCE), CLIENT_ADDRESS, 0.0)
    ((reply, _),) = server.datagrams_to_send(0.0)
    assert alerts(reply) == [(AlertLevel.FATAL, AlertDescription.ILLEGAL_PARAMETER)]
    assert server.connection_count == 0 and server.counters().internal_errors == 0


def test_only_client_hello_fragments_are_held_before_the_cookie() -> None:
    """RFC 6347 §4.2.1: a stranger's fragment of any other message, or of a ClientHello
    longer than MAX_CLIENT_HELLO_LENGTH, is dropped; nothing is held for it."""
    server = DTLSServer(psk_server_config())
    finished = encode_record(
        Record(
            ContentType.HANDSHAKE,
            DTLS_1_2,
            0,
            0,
            encode_fragment(HandshakeFragment(HandshakeType.FINISHED, 5000, 3, 0, 10, bytes(10))),
        )
    )
    server.receive_datagram(finished, CLIENT_ADDRESS, 0.0)
    too_long = hello_fragment(bytes(100), length=MAX_CLIENT_HELLO_LENGTH + 1, offset=0)
    server.receive_datagram(too_long, CLIENT_ADDRESS, 0.0)
    stats = server.counters()
    assert (stats.pending_hellos, stats.pending_hello_bytes, stats.dropped_datagrams) == (0, 0, 2)
    assert server.datagrams_to_send(0.0) == [] and server.next_timer() is None


def test_partial_hellos_are_charged_by_bytes_received_bounded_and_purged_on_a_timer() -> None:
    """Memory by bytes received, never by the declared length; at most MAX_PENDING_HELLOS and
    MAX_PENDING_HELLO_BYTES (oldest dropped); expired after PENDING_HELLO_TIMEOUT."""
    server = DTLSServer(psk_server_config())
    server.receive_datagram(
        hello_fragment(bytes(10), length=MAX_CLIENT_HELLO_LENGTH, offset=100), CLIENT_ADDRESS, 0.0
    )
    stats = server.counters()
    assert stats.pending_hellos == 1 and stats.pending_hello_bytes < 1000
    assert server.next_timer() == PENDING_HELLO_TIMEOUT
    for i in range(2 * MAX_PENDING_HELLOS):
        server.receive_datagram(
            hello_fragment(os.urandom(900), length=MAX_CLIENT_HELLO_LENGTH, offset=i % 3000),
            ("203.0.113.5", 1000 + i),
            1.0,
        )
    stats = server.counters()
    assert stats.pending_hellos <= MAX_PENDING_HELLOS
    assert stats.pending_hello_bytes <= MAX_PENDING_HELLO_BYTES
    assert stats.dropped_hellos >= MAX_PENDING_HELLOS
    assert server.connection_count == 0 and server.datagrams_to_send(1.0) == []
    server.handle_timer(1.0 + PENDING_HELLO_TIMEOUT)
    assert server.counters().pending_hellos == 0 and server.counters().pending_hello_bytes == 0
    assert server.next_timer() is None


def test_a_fragmented_client_hello_completes_the_handshake(pki: LoadedPKI) -> None:
    """RFC 6347 §4.2.3: both ClientHellos arrive in fragments, out of order; the first gets a
    HelloVerifyRequest with no state kept, the second creates the association."""
    server = DTLSServer(server_config(pki))
    run = Run(server.config, client_config(pki), server=server)
    client = run.client
    client.connect(0.0)
    ((hello, _),) = client.datagrams_to_send(0.0)
    pieces = split_hello(hello, 3)
    for piece in reversed(pieces):
        server.receive_datagram(piece, CLIENT_ADDRESS, 0.0)
    ((hvr, _),) = server.datagrams_to_send(0.0)
    assert server.connection_count == 0 and server.counters().pending_hellos == 0
    client.receive_datagram(hvr, SERVER_ADDRESS, 0.0)
    ((second, _),) = client.datagrams_to_send(0.0)
    for piece in split_hello(second, 4):
        server.receive_datagram(piece, CLIENT_ADDRESS, 0.0)
    assert server.counters().half_open == 1
    run.sim.flush()
    run.run(lambda: run.both_established() or run.any_terminated())
    assert run.both_established()


def test_half_open_handshakes_never_evict_an_established_association() -> None:
    """Half-open associations are evicted oldest first; an established one survives a flood
    of twice the limit and still exchanges data."""
    server = DTLSServer(psk_server_config(max_half_open=4, max_connections=8))
    device = established(server, ("198.51.100.1", 1), 0.0)
    for i in range(16):
        half_open(server, ("203.0.113.7", 2000 + i), 1.0 + i / 100)
    stats = server.counters()
    assert (stats.established, stats.half_open) == (1, 4)
    assert stats.evicted_half_open == 12 and stats.evicted_idle == 0
    assert {p for p in server._half_open} == {("203.0.113.7", 2012 + i) for i in range(4)}
    device.send_application_data(b"still here")
    ((datagram, _),) = device.datagrams_to_send(2.0)
    server.receive_datagram(datagram, ("198.51.100.1", 1), 2.0)
    assert [getattr(e, "data", None) for e in iter(server.next_event, None)][-1] == b"still here"


def test_a_full_table_refuses_new_handshakes_and_evicts_only_idle_associations() -> None:
    """With every slot established, a new handshake gets a fatal internal_error alert (RFC 5246
    §7.2.2) and no state; after idle_timeout the idlest association is closed with close_notify
    to make room."""
    server = DTLSServer(psk_server_config(max_half_open=2, max_connections=2, idle_timeout=60.0))
    first = established(server, ("198.51.100.1", 1), 0.0)
    established(server, ("198.51.100.2", 2), 10.0)
    newcomer = ("203.0.113.9", 9)
    hello = cookie_hello(
        server, DTLSClient(psk_client_config(), remote=SERVER_ADDRESS), newcomer, 20.0
    )
    server.receive_datagram(hello, newcomer, 20.0)
    ((reply, to),) = server.datagrams_to_send(20.0)
    assert to == newcomer and alerts(reply) == [(AlertLevel.FATAL, AlertDescription.INTERNAL_ERROR)]
    stats = server.counters()
    assert (stats.established, stats.half_open, stats.refused_handshakes) == (2, 0, 1)

    # 60 s after its last datagram the first association is idle: it makes room.
    hello = cookie_hello(
        server, DTLSClient(psk_client_config(), remote=SERVER_ADDRESS), newcomer, 61.0
    )
    server.receive_datagram(hello, newcomer, 61.0)
    replies = server.datagrams_to_send(61.0)
    (notify,) = [d for d, to in replies if to == ("198.51.100.1", 1)]
    first.receive_datagram(notify, SERVER_ADDRESS, 61.0)
    assert first.is_closed
    assert any(
        isinstance(e, ConnectionTerminated) and e.by_peer for e in iter(first.next_event, None)
    )
    stats = server.counters()
    assert (stats.established, stats.half_open, stats.evicted_idle) == (1, 1, 1)
    assert server.connection(("198.51.100.2", 2)) is not None


# --------------------------------------------------------------------------- real UDP


def _flood(port: int, ports: int, per_port: int) -> int:
    """Partial ClientHello fragments from ``ports`` source ports, ``per_port`` each, of
    different messages that never complete: half declare the largest accepted length, half
    60,000 bytes (each of those once cost a 60 KB buffer); then a 64 KiB gapped ClientHello."""
    sent = 0
    for i in range(ports):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            for k in range(per_port):
                datagram = hello_fragment(
                    os.urandom(80),
                    length=MAX_CLIENT_HELLO_LENGTH if k % 2 else 60_000,
                    offset=200 * k + 100,
                    message_seq=k % 8,
                    record_seq=k,
                )
                sock.sendto(datagram, ("127.0.0.1", port))
                sent += 1
        if i % 25 == 0:
            time.sleep(0.002)  # let the server keep up: the flood must be processed, not lost
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        for offset in range(0, 65536 - 1000, 2000):
            sock.sendto(
                hello_fragment(os.urandom(1000), length=65536, offset=offset, record_seq=offset),
                ("127.0.0.1", port),
            )
            sent += 1
    return sent


async def _psk_handshake(port: int) -> None:
    client = await ClientEndpoint.connect("127.0.0.1", port, DTLSClient(psk_client_config()))
    try:
        await client.handshake(timeout=20.0)
        client.send(b"ping")
        assert await client.receive(timeout=10.0) == b"ping"
    finally:
        await client.close()


def test_udp_partial_hello_flood_holds_bounded_state_and_a_handshake_completes() -> None:
    """10,000 partial ClientHello fragments from 1,000 source ports and a 64 KiB gapped
    ClientHello over real UDP: the pending state stays within its bounds (counter API), no
    association is created, and a legitimate handshake completes afterwards."""

    async def scenario() -> None:
        server = DTLSServer(psk_server_config())
        endpoint = await ServerEndpoint.listen("127.0.0.1", 0, server, echo=True)
        assert endpoint.address is not None
        port = endpoint.address[1]
        loop = asyncio.get_running_loop()
        peak = 0
        done = loop.run_in_executor(None, _flood, port, 1000, 10)
        while not done.done():
            await asyncio.sleep(0.01)
            peak = max(peak, server.counters().pending_hello_bytes)
        sent = await done
        await asyncio.sleep(0.2)
        stats = server.counters()
        assert sent >= 10_000
        assert stats.pending_hellos <= MAX_PENDING_HELLOS
        assert max(peak, stats.pending_hello_bytes) <= MAX_PENDING_HELLO_BYTES
        # The flood did arrive: ClientHello fragments were held, the 60,000-byte ones dropped.
        assert stats.pending_hellos >= 100 and stats.dropped_datagrams >= 1000
        assert (stats.half_open, stats.established, stats.internal_errors) == (0, 0, 0)
        await _psk_handshake(port)
        assert server.counters().established == 1
        endpoint.close()

    asyncio.run(scenario())


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def server_process() -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A real ``d2tls server`` (PSK, echo) on a free loopback port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "d2tls.cli",
            "server",
            "--listen",
            f"127.0.0.1:{port}",
            "--psk",
            f"{PSK_IDENTITY.decode()}:{PSK_KEY.hex()}",
            "--echo",
            "--quiet",
            "--max-half-open",
            "64",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process, port
    finally:
        process.terminate()
        process.communicate(timeout=10)


def test_d2tls_server_rss_stays_bounded_under_a_partial_hello_flood(
    server_process: tuple[subprocess.Popen[str], int],
) -> None:
    """The same flood from 2,000 source ports against a real ``d2tls server``: its RSS grows
    by less than 16 MiB (it grew by 210 MiB before the pre-cookie buffer was bounded) and it
    still completes a handshake."""
    process, port = server_process
    deadline = time.monotonic() + 30
    while True:  # the first handshake also proves the server is up and warms it
        try:
            asyncio.run(_psk_handshake(port))
            break
        except (TimeoutError, OSError, ConnectionFailed):  # not listening yet
            assert process.poll() is None and time.monotonic() < deadline, process.stderr
    before = _rss(process.pid)
    assert _flood(port, 2000, 5) >= 10_000
    asyncio.run(_psk_handshake(port))  # processed after the flood: the flood was consumed
    growth = _rss(process.pid) - before
    assert growth < 16 * MiB, f"RSS grew by {growth / MiB:.1f} MiB"
    assert process.poll() is None


def _half_open_over_udp(port: int, count: int) -> int:
    """``count`` handshakes from distinct source ports that pass the cookie and go silent."""
    opened = 0
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(5.0)
            client = DTLSClient(psk_client_config(), remote=SERVER_ADDRESS)
            client.connect(0.0)
            for datagram, _ in client.datagrams_to_send(0.0):
                sock.sendto(datagram, ("127.0.0.1", port))
            hvr, _ = sock.recvfrom(4096)
            client.receive_datagram(hvr, SERVER_ADDRESS, 0.0)
            for datagram, _ in client.datagrams_to_send(0.0):
                sock.sendto(datagram, ("127.0.0.1", port))
            flight, _ = sock.recvfrom(4096)  # the ServerHello flight: the handshake is half-open
            assert parse_datagram(flight)[0][0].content_type == ContentType.HANDSHAKE
            opened += 1
    finally:
        for sock in sockets:
            sock.close()
    return opened


def test_udp_half_open_flood_beyond_the_limit_leaves_an_established_connection_echoing() -> None:
    """Twice max_half_open handshakes left half-open over real UDP: the oldest half-open ones
    are evicted, the established association is untouched and still echoes."""

    async def scenario() -> None:
        server = DTLSServer(psk_server_config(max_half_open=8, max_connections=16))
        endpoint = await ServerEndpoint.listen("127.0.0.1", 0, server, echo=True)
        assert endpoint.address is not None
        port = endpoint.address[1]
        device = await ClientEndpoint.connect("127.0.0.1", port, DTLSClient(psk_client_config()))
        await device.handshake(timeout=20.0)
        loop = asyncio.get_running_loop()
        opened = await loop.run_in_executor(None, _half_open_over_udp, port, 16)
        stats = server.counters()
        assert opened == 16
        assert (stats.established, stats.half_open, stats.evicted_half_open) == (1, 8, 8)
        device.send(b"still here")
        assert await device.receive(timeout=10.0) == b"still here"
        await device.close()
        endpoint.close()

    asyncio.run(scenario())


def test_cli_exposes_the_association_limits() -> None:
    """``--max-connections`` and ``--max-half-open`` on ``d2tls server`` and ``d2tls agent``."""
    from d2tls.cli import build_parser, build_server_config

    parser = build_parser()
    args = parser.parse_args(
        [
            "server",
            "--listen",
            "127.0.0.1:0",
            "--psk",
            f"a:{PSK_KEY.hex()}",
            "--max-connections",
            "7",
            "--max-half-open",
            "3",
        ]
    )
    config = build_server_config(args)
    assert (config.max_connections, config.max_half_open) == (7, 3)
    agent = parser.parse_args(
        ["agent", "--listen", "127.0.0.1:0", "--psk-file", "f", "--ca", "c", "--max-half-open", "5"]
    )
    assert (agent.max_connections, agent.max_half_open) == (10_000, 5)
    with pytest.raises(SystemExit):
        parser.parse_args(["server", "--listen", "127.0.0.1:0", "--max-half-open", "0"])
