"""The user-space impairment relay (d2tls.net.relay): delay, loss, per-client upstreams."""

from __future__ import annotations

import socket
import statistics
import threading
import time
from collections.abc import Iterator

import pytest

from d2tls.net.relay import LinkProfile, Relay, count_records, relayed

Address = tuple[str, int]


@pytest.fixture
def echo() -> Iterator[Address]:
    """A UDP echo server on loopback (answers b'stop' by exiting)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                data, peer = sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            sock.sendto(data, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()
    done.set()
    thread.join(timeout=2)
    sock.close()


def _pings(address: Address, count: int) -> list[float]:
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(2)
    rtts = []
    try:
        for i in range(count):
            start = time.perf_counter()
            client.sendto(i.to_bytes(4, "big"), address)
            client.recv(64)
            rtts.append(time.perf_counter() - start)
    finally:
        client.close()
    return rtts


def test_configured_delay_is_applied_per_direction(echo: Address) -> None:
    up, down = LinkProfile(delay=0.010), LinkProfile(delay=0.020)
    with Relay(echo, up=up, down=down, seed=1) as relay:
        rtt = statistics.median(_pings(relay.address, 15))
        stats = relay.stats()
    assert 0.030 <= rtt <= 0.030 + 0.010, rtt
    up_delay = stats["up"]["delay_median_ms"]  # type: ignore[index]
    down_delay = stats["down"]["delay_median_ms"]  # type: ignore[index]
    assert 10.0 <= up_delay <= 12.0
    assert 20.0 <= down_delay <= 22.0


def test_without_relay_delay_the_round_trip_stays_small(echo: Address) -> None:
    with relayed(echo) as relay:
        rtt = statistics.median(_pings(relay.address, 20))
    assert rtt < 0.005


def _send_burst(relay: Relay, count: int) -> None:
    """Send ``count`` numbered datagrams, 50 at a time, each batch once the relay has read the
    previous one: the kernel's socket buffers must not drop anything (the relay's loss is the
    only loss under test), however slowly a loaded machine schedules the relay thread."""
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for i in range(count):
            client.sendto(i.to_bytes(4, "big"), relay.address)
            if i % 50 == 49:
                deadline = time.monotonic() + 10
                while relay.stats()["up"]["received"] <= i and time.monotonic() < deadline:  # type: ignore[index]
                    time.sleep(0.001)
    finally:
        client.close()


def _received_through_lossy_relay(seed: int, count: int = 1000) -> tuple[set[int], int]:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(0.3)
    got: set[int] = set()

    def read() -> None:  # read while sending, so that the sink's buffer never overflows
        while True:
            try:
                got.add(int.from_bytes(sink.recv(64), "big"))
            except (TimeoutError, OSError):
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        with Relay(sink.getsockname(), up=LinkProfile(loss=0.3), seed=seed) as relay:
            _send_burst(relay, count)
            reader.join(timeout=10)
            stats = relay.stats()["up"]
            assert stats["received"] == count  # type: ignore[index]
            dropped = int(stats["dropped"])  # type: ignore[index]
    finally:
        sink.close()
    return got, dropped


def test_loss_rate_and_seeded_pattern() -> None:
    got, dropped = _received_through_lossy_relay(seed=7)
    # Binomial(1000, 0.3): mean 300, sd 14.5; allow > 4 sd.
    assert 240 <= dropped <= 360
    assert len(got) == 1000 - dropped
    again, dropped_again = _received_through_lossy_relay(seed=7)
    assert again == got and dropped_again == dropped  # same seed, same datagrams lost
    other, _ = _received_through_lossy_relay(seed=8)
    assert other != got


def test_each_client_gets_its_own_upstream_address(echo: Address) -> None:
    seen: list[Address] = []
    target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target.bind(("127.0.0.1", 0))
    target.settimeout(1)
    try:
        with Relay(target.getsockname()) as relay:
            clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
            for client in clients:
                client.sendto(b"hi", relay.address)
                _, source = target.recvfrom(64)
                seen.append(source)
            for client in clients:
                client.close()
            assert relay.clients == 2
    finally:
        target.close()
    assert seen[0] != seen[1]


def test_record_bytes_are_counted_by_content_type() -> None:
    def record(kind: int, payload: bytes) -> bytes:
        return bytes([kind, 0xFE, 0xFD]) + bytes(8) + len(payload).to_bytes(2, "big") + payload

    counts: dict[str, int] = {}
    count_records(record(22, b"x" * 10) + record(23, b"y" * 5) + b"\x01", counts)
    assert counts == {"handshake": 23, "application_data": 18, "other": 1}


def test_profiles_are_validated() -> None:
    with pytest.raises(ValueError):
        LinkProfile(loss=1.5)
    with pytest.raises(ValueError):
        LinkProfile(delay=-1)
    up, down = LinkProfile.symmetric(0.1678)
    assert up.delay == down.delay == pytest.approx(0.0839)
