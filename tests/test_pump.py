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
