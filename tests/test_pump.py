"""The generic asyncio pump (d2tls.net.pump) on real loopback UDP sockets."""

from __future__ import annotations

import asyncio
from collections import deque

import pytest

from d2tls.core.dtls.client import DTLSClient
from d2tls.core.dtls.config import ClientConfig, ServerConfig
from d2tls.core.dtls.constants import CipherSuite
from d2tls.core.dtls.events import Event, HandshakeCompleted
from d2tls.core.dtls.server import DTLSServer
from d2tls.core.errors import EventTimeout, TransportClosed
from d2tls.core.sansio import Address, Datagram, SansIOProtocol
from d2tls.net.pump import Pump
from d2tls.net.udp import ClientEndpoint

PSK_ID, PSK = b"pump-test", bytes(range(16))
PSK_SUITE = CipherSuite.TLS_PSK_WITH_AES_128_CCM_8


class Echo:
    """A minimal sans-IO protocol: echoes each datagram once, reports it, ticks on a timer."""

    def __init__(self, tick: float | None = None) -> None:
        self.out: list[Datagram] = []
        self.events: deque[tuple[str, bytes, Address]] = deque()
        self.tick_at = tick
        self.ticks = 0

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        self.events.append(("received", data, addr))
        if not data.startswith(b"echo:"):
            self.out.append((b"echo:" + data, addr))

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        out, self.out = self.out, []
        return out

    def next_timer(self) -> float | None:
        return self.tick_at

    def handle_timer(self, now: float) -> None:
        if self.tick_at is not None and now >= self.tick_at:
            self.tick_at = None
            self.ticks += 1
            self.events.append(("tick", b"", ("", 0)))

    def next_event(self) -> tuple[str, bytes, Address] | None:
        return self.events.popleft() if self.events else None


def test_a_protocol_is_a_sansio_protocol() -> None:
    assert isinstance(Echo(), SansIOProtocol)


async def _exchange() -> None:
    echo = Echo()
    async with (
        await Pump.open(echo, ("127.0.0.1", 0)) as a,
        await Pump.open(Echo(), ("127.0.0.1", 0)) as b,
    ):
        assert a.local_address[1] != 0
        echo.out.append((b"hello", b.local_address))
        a.poke()
        kind, data, addr = await b.next_event(timeout=5)
        assert (kind, data, addr) == ("received", b"hello", a.local_address)
        kind, data, addr = await a.next_event(timeout=5)
        assert (kind, data, addr) == ("received", b"echo:hello", b.local_address)
        with pytest.raises(EventTimeout):
            await a.next_event(timeout=0.05)
        echo.tick_at = a.now + 0.01
        a.poke()
        assert (await a.next_event(timeout=5))[0] == "tick"
        assert echo.ticks == 1
    with pytest.raises(TransportClosed):
        await a.next_event(timeout=1)


def test_pump_moves_datagrams_events_and_timers() -> None:
    asyncio.run(_exchange())


async def _dtls_server_behind_pump() -> HandshakeCompleted:
    server = DTLSServer(
        ServerConfig(
            cipher_suites=(CipherSuite.TLS_PSK_WITH_AES_128_CCM_8,), psk_keys={PSK_ID: PSK}
        )
    )
    async with await Pump.open(server, ("127.0.0.1", 0)) as pump:
        client = DTLSClient(
            ClientConfig(
                cipher_suites=(CipherSuite.TLS_PSK_WITH_AES_128_CCM_8,),
                psk_identity=PSK_ID,
                psk=PSK,
            )
        )
        endpoint = await ClientEndpoint.connect(*pump.local_address, client)
        await endpoint.handshake(timeout=10)
        while True:
            event: Event = await pump.next_event(timeout=10)
            if isinstance(event, HandshakeCompleted):
                await endpoint.close()
                return event


def test_pump_drives_a_dtls_server() -> None:
    done = asyncio.run(_dtls_server_behind_pump())
    assert done.session.psk_identity == PSK_ID


async def _flood_yields() -> tuple[int, int]:
    """100 datagrams queued on the pump's socket at once; the first one received schedules
    another callback: how many datagrams had been taken when it ran?"""
    import socket

    loop = asyncio.get_running_loop()
    seen: list[int] = []

    class Counting(Echo):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
            self.count += 1
            if self.count == 1:
                loop.call_soon(lambda: seen.append(self.count))

    counting = Counting()
    pump = await Pump.open(counting, ("127.0.0.1", 0))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for i in range(100):
            sender.sendto(b"echo:%03d" % i, pump.local_address)  # no await: all queued
        for _ in range(200):
            if counting.count == 100:
                break
            await asyncio.sleep(0.005)
        return seen[0], counting.count
    finally:
        sender.close()
        pump.close()


def test_a_flooded_socket_does_not_starve_the_event_loop() -> None:
    """RFC 6347 §4.1.2.7 lets a receiver drop what it cannot handle, but a burst must not keep
    the loop from its timers and other sockets: the pump reads a bounded batch per wake-up."""
    when_other_ran, received = asyncio.run(_flood_yields())
    assert received == 100
    assert when_other_ran < 100


async def _child_socket_now() -> tuple[Address | None, int]:
    class Parent(Echo):
        def __init__(self) -> None:
            super().__init__()
            self.children: dict[int, Address] = {}
            self.child_out: list[bytes] = []

        def child_endpoints(self) -> dict[int, Address]:
            return self.children

        def child_datagrams_to_send(self, key: int, now: float) -> list[Datagram]:
            out, self.child_out = self.child_out, []
            return [(data, self.children[key]) for data in out]

        def child_receive_datagram(self, key: int, data: bytes, addr: Address, now: float) -> None:
            self.events.append(("child", data, addr))

        def child_unreachable(self, key: int, now: float) -> None:
            self.events.append(("unreachable", b"", ("", key)))

    peer = Echo()
    peer_pump = await Pump.open(peer, ("127.0.0.1", 0))
    parent = Parent()
    pump = await Pump.open(parent, ("127.0.0.1", 0))
    try:
        parent.children[7] = peer_pump.local_address
        parent.child_out.append(b"hello")
        pump.poke()
        bound = pump.child_address(7)  # bound in poke itself, no loop iteration
        kind, data, _ = await pump.next_event(timeout=5)
        assert (kind, data) == ("child", b"echo:hello")
        del parent.children[7]
        pump.poke()
        return bound, len(pump._children)
    finally:
        pump.close()
        peer_pump.close()


def test_a_child_endpoint_gets_its_socket_at_once_and_loses_it_when_dropped() -> None:
    bound, left = asyncio.run(_child_socket_now())
    assert bound is not None and bound[0] == "127.0.0.1" and bound[1] > 0
    assert left == 0


async def _buffers_of_two_pumps() -> tuple[bool, int]:
    first = await Pump.open(Echo(), ("127.0.0.1", 0))
    second = await Pump.open(Echo(), ("127.0.0.1", 0))
    try:
        return first._read_buffer is second._read_buffer, len(first._read_buffer)
    finally:
        first.close()
        second.close()


def test_pumps_of_one_loop_share_one_read_buffer_and_loops_do_not() -> None:
    """The loop runs one reader callback at a time and each copies its datagram out, so one
    buffer per loop serves all its pumps; another loop (another thread) gets its own."""
    shared, size = asyncio.run(_buffers_of_two_pumps())
    assert shared and size == Pump.read_buffer_size

    async def buffer_of_one() -> bytearray:
        pump = await Pump.open(Echo(), ("127.0.0.1", 0))
        pump.close()
        return pump._read_buffer

    assert asyncio.run(buffer_of_one()) is not asyncio.run(buffer_of_one())
