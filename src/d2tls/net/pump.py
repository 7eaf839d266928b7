"""The one asyncio host of every role: a :class:`~d2tls.core.sansio.SansIOProtocol` on one UDP
socket.

The pump moves datagrams between the socket and the protocol, arms the single timer the
protocol asks for (``next_timer``), and queues the protocol's events for the application,
which awaits them with :meth:`Pump.next_event`. The application calls into the protocol
directly (``device.connect(now)``, ``client.send_application_data(...)``) and then
:meth:`Pump.poke`\\ s the pump so that what the call produced leaves and the timer is re-armed.
``now`` is the event loop's monotonic clock (:attr:`Pump.now`).

A role with child endpoints (:class:`~d2tls.core.sansio.HasChildEndpoints`: the device's engines,
the agent's handshakes with servers) gets one more socket per child, bound on the same host
(or the loopback of the child's peer's family), *connected* to the child's one peer, closed
when the role stops listing it. A host of a single-peer engine (a DTLS client) connects the
main socket too (``remote_addr``). The kernel reports ICMP port unreachable on connected
sockets only (``ConnectionRefusedError``): to the role as ``child_unreachable``/
``port_unreachable`` (:class:`~d2tls.core.sansio.HearsUnreachable`), or to ``on_unreachable``. An
unconnected socket is not asked for them (``IP_RECVERR`` would make a send fail, and its
datagram be lost, whenever any earlier peer's error is pending).
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar, cast

from d2tls.core.errors import EventTimeout, TransportClosed
from d2tls.core.sansio import Address, HasChildEndpoints, HearsUnreachable, SansIOProtocol

E = TypeVar("E")


class _Socket(asyncio.DatagramProtocol):
    """asyncio's side of a socket: hands everything to the pump (``child``: which one)."""

    def __init__(self, pump: Pump[object], child: int | None = None) -> None:
        self._pump = pump
        self._child = child

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self._pump._received(data, (str(addr[0]), cast(int, addr[1])), self._child)

    def error_received(self, exc: Exception) -> None:
        self._pump._error(exc, self._child)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._child is None:
            self._pump._lost()


def _child_host(main: Address, peer: Address) -> str:
    """The main socket's host for a peer of the same family, else that family's loopback."""
    if (":" in main[0]) == (":" in peer[0]):
        return main[0]
    return "::1" if ":" in peer[0] else "127.0.0.1"


def _bind(local_addr: Address, remote: Address | None = None) -> socket.socket:
    """A non-blocking UDP socket bound to ``local_addr``, connected to ``remote`` if given."""
    family = socket.AF_INET6 if ":" in local_addr[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind(local_addr)
        if remote is not None:
            sock.connect(remote)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Pump(Generic[E]):
    """Drives one sans-IO protocol on one UDP socket (open it with :meth:`open`)."""

    def __init__(
        self,
        protocol: SansIOProtocol[E],
        loop: asyncio.AbstractEventLoop,
        on_event: Callable[[E], None] | None = None,
        on_unreachable: Callable[[], None] | None = None,
    ) -> None:
        self.protocol = protocol
        #: The optional interfaces, checked once: a runtime-checkable Protocol isinstance
        #: costs tens of microseconds, and poke() runs for every datagram.
        self._parent: HasChildEndpoints | None = (
            protocol if isinstance(protocol, HasChildEndpoints) else None
        )
        self._hears: HearsUnreachable | None = (
            protocol if isinstance(protocol, HearsUnreachable) else None
        )
        self._loop = loop
        self._on_event = on_event
        self._on_unreachable = on_unreachable
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._events: deque[E] = deque()
        self._wakeup = asyncio.Event()
        self._closed = False
        self.local_address: Address = ("", 0)
        #: Sockets of the protocol's child endpoints (HasChildEndpoints), by key.
        self._children: dict[int, asyncio.DatagramTransport] = {}
        self._binding: dict[int, asyncio.Task[None]] = {}
        self._connected = False

    @classmethod
    async def open(
        cls,
        protocol: SansIOProtocol[E],
        local_addr: Address,
        *,
        remote_addr: Address | None = None,
        on_event: Callable[[E], None] | None = None,
        on_unreachable: Callable[[], None] | None = None,
    ) -> Pump[E]:
        """Bind ``local_addr`` (port 0: any free port) and start driving ``protocol``.

        ``remote_addr``: the protocol's one peer (a DTLS client); the socket is connected to
        it. ``on_event``: a host that reacts to events at once (a server's echo) gets each one
        there instead of through :meth:`next_event`. ``on_unreachable``: a host wrapping a
        plain engine hears ICMP port unreachable there (connected sockets only).
        """
        loop = asyncio.get_running_loop()
        sock = _bind(local_addr, remote_addr)
        pump = cls(protocol, loop, on_event, on_unreachable)
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Socket(cast(Pump[object], pump)), sock=sock
            )
        except BaseException:
            sock.close()
            raise
        pump._transport = transport
        pump._connected = remote_addr is not None
        name = transport.get_extra_info("sockname")
        pump.local_address = (str(name[0]), int(name[1]))
        pump.poke()
        return pump

    @property
    def now(self) -> float:
        """The monotonic time the pump gives the protocol (the event loop's clock)."""
        return self._loop.time()

    def runs_on(self, loop: asyncio.AbstractEventLoop) -> bool:
        """The pump is open and driven by ``loop``."""
        return not self._closed and self._loop is loop

    def child_address(self, key: int | None) -> Address | None:
        """The local address of child endpoint ``key``'s socket, once bound."""
        child = self._children.get(key) if key is not None else None
        if child is None:
            return None
        name = child.get_extra_info("sockname")
        return (str(name[0]), int(name[1]))

    # ------------------------------------------------------------------ driving
    def poke(self) -> None:
        """Send what the protocol has to send, collect its events and re-arm its timer.

        Call it after every call the application made into the protocol.
        """
        if self._closed:
            return
        woke = False
        while (event := self.protocol.next_event()) is not None:
            if self._on_event is not None:
                self._on_event(event)  # may make the protocol send: sent below
            else:
                self._events.append(event)
                woke = True
        if woke:
            self._wakeup.set()
        now = self._loop.time()
        transport = self._transport
        for data, addr in self.protocol.datagrams_to_send(now):
            if transport is not None and not transport.is_closing():
                transport.sendto(data, None if self._connected else addr)
        if self._parent is not None:
            self._drive_children(self._parent, now)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.protocol.next_timer()
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _drive_children(self, protocol: HasChildEndpoints, now: float) -> None:
        """Bind a socket for each new child endpoint, close those gone, send from the rest."""
        wanted = protocol.child_endpoints()
        for key in [k for k in self._children if k not in wanted]:
            self._children.pop(key).close()
        for key in [k for k in self._binding if k not in wanted]:
            self._binding.pop(key).cancel()
        for key, peer in wanted.items():
            child = self._children.get(key)
            if child is not None:
                for data, _peer in protocol.child_datagrams_to_send(key, now):
                    if not child.is_closing():
                        child.sendto(data)  # connected to the child's one peer
            elif key not in self._binding:
                host = _child_host(self.local_address, peer)
                self._binding[key] = self._loop.create_task(self._bind_child(key, host, peer))

    async def _bind_child(self, key: int, host: str, peer: Address) -> None:
        sock = _bind((host, 0), peer)
        try:
            transport, _ = await self._loop.create_datagram_endpoint(
                lambda: _Socket(cast(Pump[object], self), key), sock=sock
            )
        except BaseException:
            sock.close()
            raise
        finally:
            self._binding.pop(key, None)
        if self._closed:
            transport.close()
            return
        self._children[key] = transport
        self.poke()

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed:
            return
        self.protocol.handle_timer(self._loop.time())
        self.poke()

    def _received(self, data: bytes, addr: Address, child: int | None) -> None:
        if self._closed:
            return
        now = self._loop.time()
        if child is None:
            self.protocol.receive_datagram(data, addr, now)
        elif self._parent is not None:
            self._parent.child_receive_datagram(child, data, addr, now)
        self.poke()

    def _error(self, exc: Exception, child: int | None) -> None:
        if self._closed or not isinstance(exc, ConnectionRefusedError):
            return
        now = self._loop.time()
        if child is None and self._on_unreachable is not None:
            self._on_unreachable()
        if child is None and self._hears is not None:
            self._hears.port_unreachable(now)
        elif child is not None and self._parent is not None:
            self._parent.child_unreachable(child, now)
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
        for task in self._binding.values():
            task.cancel()
        self._binding.clear()
        for child in self._children.values():
            child.close()
        self._children.clear()
        self._wakeup.set()

    async def __aenter__(self) -> Pump[E]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
