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
import weakref
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar, cast

from d2tls.core.errors import EventTimeout, TransportClosed
from d2tls.core.sansio import Address, HasChildEndpoints, HearsUnreachable, SansIOProtocol

E = TypeVar("E")


#: Largest datagram a socket reads (IPv4/IPv6 UDP payloads are at most 65,507/65,527 bytes).
MAX_DATAGRAM = 65_535
#: Datagrams read per wake-up of one socket before the event loop runs its other callbacks
#: (a flooded socket cannot starve the timers and the other sockets).
READS_PER_WAKEUP = 16


class _Socket:
    """One non-blocking UDP socket read by the event loop's reader callback (``child``: which
    of the pump's sockets). Datagrams are read into one reused buffer with ``recvfrom_into``
    and copied out at their size, instead of asyncio's datagram transport, which allocates
    256 KiB and runs a protocol callback per datagram. A send that would block drops the
    datagram, as the network may (DTLS retransmits, RFC 6347 §4.2.4)."""

    __slots__ = ("_child", "_closing", "_fd", "_loop", "_pump", "_sock")

    def __init__(self, pump: Pump[object], sock: socket.socket, child: int | None = None) -> None:
        self._pump = pump
        self._child = child
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = pump._loop
        self._closing = False
        self._loop.add_reader(self._fd, self._read_ready)

    def sockname(self) -> Address:
        name = self._sock.getsockname()
        return (str(name[0]), int(name[1]))

    def sendto(self, data: bytes, addr: Address | None = None) -> None:
        if self._closing:
            return
        try:
            if addr is None:
                self._sock.send(data)
            else:
                self._sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            pass  # the send buffer is full: dropped, as the network may drop it
        except OSError as exc:
            self._pump._error(exc, self._child)

    def _read_ready(self) -> None:
        pump = self._pump
        buffer, view = pump._read_buffer, pump._read_view
        for _ in range(READS_PER_WAKEUP):
            if self._closing:
                return
            try:
                size, addr = self._sock.recvfrom_into(buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                pump._error(exc, self._child)
                continue
            pump._received(bytes(view[:size]), (str(addr[0]), int(addr[1])), self._child)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        self._sock.close()


#: One read buffer per event loop: the loop runs one reader callback at a time, and every pump
#: on it copies a datagram out before it returns, so all of them can share it (a host with many
#: pumps, or a pump opened per connection, allocates no buffer per socket).
_LOOP_BUFFERS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, tuple[bytearray, memoryview]
] = weakref.WeakKeyDictionary()


def _loop_buffer(loop: asyncio.AbstractEventLoop, size: int) -> tuple[bytearray, memoryview]:
    """The read buffer of ``loop`` (made, or made anew when ``size`` changed)."""
    found = _LOOP_BUFFERS.get(loop)
    if found is None or len(found[0]) != size:
        buffer = bytearray(size)
        found = _LOOP_BUFFERS[loop] = (buffer, memoryview(buffer))
    return found


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
        self._transport: _Socket | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        self._events: deque[E] = deque()
        self._wakeup = asyncio.Event()
        self._closed = False
        self.local_address: Address = ("", 0)
        #: Sockets of the protocol's child endpoints (HasChildEndpoints), by key.
        self._children: dict[int, _Socket] = {}
        self._connected = False
        #: The read buffer of the pump's event loop (:func:`_loop_buffer`).
        self._read_buffer, self._read_view = _loop_buffer(loop, self.read_buffer_size)

    #: Size of the read buffer; a datagram longer than this is cut (the record layer then
    #: drops it as malformed). Benchmarks of memory set it lower.
    read_buffer_size: int = MAX_DATAGRAM

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
            transport = _Socket(cast(Pump[object], pump), sock)
        except BaseException:
            sock.close()
            raise
        pump._transport = transport
        pump._connected = remote_addr is not None
        pump.local_address = transport.sockname()
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
        return child.sockname()

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
            if transport is not None:
                transport.sendto(data, None if self._connected else addr)
        if self._parent is not None:
            self._drive_children(self._parent, now)
        deadline = self.protocol.next_timer()
        if deadline != self._deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = (
                self._loop.call_at(deadline, self._on_timer) if deadline is not None else None
            )
            self._deadline = deadline

    def _drive_children(self, protocol: HasChildEndpoints, now: float) -> None:
        """Bind a socket for each new child endpoint, close those gone, send from the rest."""
        wanted = protocol.child_endpoints()
        children = self._children
        for key in [k for k in children if k not in wanted]:
            children.pop(key).close()
        for key, peer in wanted.items():
            child = children.get(key)
            if child is None:
                child = children[key] = self._bind_child(key, peer)
            for data, _peer in protocol.child_datagrams_to_send(key, now):
                child.sendto(data)  # connected to the child's one peer

    def _bind_child(self, key: int, peer: Address) -> _Socket:
        """A socket of the child's own, bound beside the main one and connected to its peer."""
        sock = _bind((_child_host(self.local_address, peer), 0), peer)
        try:
            return _Socket(cast(Pump[object], self), sock, key)
        except BaseException:
            sock.close()
            raise

    def _on_timer(self) -> None:
        self._timer = None
        self._deadline = None
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
        for child in self._children.values():
            child.close()
        self._children.clear()
        self._wakeup.set()

    async def __aenter__(self) -> Pump[E]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
