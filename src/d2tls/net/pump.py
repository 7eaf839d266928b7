"""The one asyncio host of every role: a :class:`~d2tls.sansio.SansIOProtocol` on one UDP socket.

The pump moves datagrams between the socket and the protocol, arms the single timer the
protocol asks for (``next_timer``), and queues the protocol's events for the application,
which awaits them with :meth:`Pump.next_event`. The application calls into the protocol
directly (``device.connect(now)``, ``client.send_application_data(...)``) and then
:meth:`Pump.poke`\\ s the pump so that what the call produced leaves and the timer is re-armed.
``now`` is the event loop's monotonic clock (:attr:`Pump.now`).

ICMP port unreachable: the socket is not connected (a role may talk to several peers), so the
kernel reports it only with ``IP_RECVERR`` (Linux), and without the address it came from; a
protocol that wants it offers ``port_unreachable(now)`` (:class:`HearsUnreachable`).
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections import deque
from typing import Generic, Protocol, TypeVar, cast, runtime_checkable

from d2tls.errors import EventTimeout, TransportClosed
from d2tls.sansio import Address, SansIOProtocol

E = TypeVar("E")

#: Linux socket options that report ICMP errors on an unconnected UDP socket (ip(7), ipv6(7)).
_IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
_IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)


@runtime_checkable
class HearsUnreachable(Protocol):
    """A protocol that acts on ICMP port unreachable (e.g. fails a handshake at once)."""

    def port_unreachable(self, now: float) -> None:
        """The kernel reported ICMP port unreachable for a datagram this socket sent."""


class _Socket(asyncio.DatagramProtocol):
    """asyncio's side of the socket: hands everything to the pump."""

    def __init__(self, pump: Pump[object]) -> None:
        self._pump = pump

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self._pump._received(data, (str(addr[0]), cast(int, addr[1])))

    def error_received(self, exc: Exception) -> None:
        self._pump._error(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._pump._lost()


def _bind(local_addr: Address) -> socket.socket:
    family = socket.AF_INET6 if ":" in local_addr[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if sys.platform == "linux":
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
        sock.bind(local_addr)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Pump(Generic[E]):
    """Drives one sans-IO protocol on one UDP socket (open it with :meth:`open`)."""

    def __init__(self, protocol: SansIOProtocol[E], loop: asyncio.AbstractEventLoop) -> None:
        self.protocol = protocol
        self._loop = loop
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._events: deque[E] = deque()
        self._wakeup = asyncio.Event()
        self._closed = False
        self.local_address: Address = ("", 0)

    @classmethod
    async def open(cls, protocol: SansIOProtocol[E], local_addr: Address) -> Pump[E]:
        """Bind ``local_addr`` (port 0: any free port) and start driving ``protocol``."""
        loop = asyncio.get_running_loop()
        sock = _bind(local_addr)
        pump = cls(protocol, loop)
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Socket(cast(Pump[object], pump)), sock=sock
            )
        except BaseException:
            sock.close()
            raise
        pump._transport = transport
        name = transport.get_extra_info("sockname")
        pump.local_address = (str(name[0]), int(name[1]))
        pump.poke()
        return pump

    @property
    def now(self) -> float:
        """The monotonic time the pump gives the protocol (the event loop's clock)."""
        return self._loop.time()

    # ------------------------------------------------------------------ driving
    def poke(self) -> None:
        """Send what the protocol has to send, collect its events and re-arm its timer.

        Call it after every call the application made into the protocol.
        """
        if self._closed:
            return
        now = self._loop.time()
        transport = self._transport
        for data, addr in self.protocol.datagrams_to_send(now):
            if transport is not None and not transport.is_closing():
                transport.sendto(data, addr)
        woke = False
        while (event := self.protocol.next_event()) is not None:
            self._events.append(event)
            woke = True
        if woke:
            self._wakeup.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.protocol.next_timer()
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed:
            return
        self.protocol.handle_timer(self._loop.time())
        self.poke()

    def _received(self, data: bytes, addr: Address) -> None:
        if self._closed:
            return
        self.protocol.receive_datagram(data, addr, self._loop.time())
        self.poke()

    def _error(self, exc: Exception) -> None:
        if isinstance(exc, ConnectionRefusedError) and isinstance(self.protocol, HearsUnreachable):
            self.protocol.port_unreachable(self._loop.time())
            self.poke()

    def _lost(self) -> None:
        self._stop()

    # ------------------------------------------------------------------ the application's side
    async def next_event(self, timeout: float | None = None) -> E:
        """The protocol's next event; :class:`EventTimeout` after ``timeout`` seconds without
        one, :class:`TransportClosed` once the pump is closed and every event was taken."""
        deadline = None if timeout is None else self._loop.time() + timeout
        while not self._events:
            if self._closed:
                raise TransportClosed("the pump is closed")
            self._wakeup.clear()
            remaining = None if deadline is None else max(0.0, deadline - self._loop.time())
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                raise EventTimeout(f"no event within {timeout:g} s") from None
        return self._events.popleft()

    def close(self) -> None:
        """Send what is pending (e.g. a close_notify), then release the socket and the timer."""
        if self._closed:
            return
        self.poke()
        self._stop()
        if self._transport is not None:
            self._transport.close()

    def _stop(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wakeup.set()

    async def __aenter__(self) -> Pump[E]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
