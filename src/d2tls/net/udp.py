"""Thin asyncio UDP transports around the sans-IO engines.

All protocol logic lives in the engines; these classes only move datagrams, arm the single
timer the engine asks for, and turn events into awaitables.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

from d2tls.dtls.client import DTLSClient
from d2tls.dtls.events import (
    ApplicationDataReceived,
    ConnectionTerminated,
    Event,
    HandshakeCompleted,
    SignatureRequested,
)
from d2tls.dtls.server import DTLSServer
from d2tls.errors import D2TLSError

Address = tuple[str, int]
#: Supplies a CertificateVerify signature for an external-signer client (D2TLS agent).
SignatureProvider = Callable[[SignatureRequested], Awaitable[bytes]]


class ConnectionFailed(D2TLSError):
    """The DTLS connection ended with an error; ``terminated`` says how."""

    def __init__(self, terminated: ConnectionTerminated) -> None:
        alert = terminated.alert.name.lower() if terminated.alert is not None else None
        who = "peer" if terminated.by_peer else "local"
        super().__init__(f"{terminated.reason} (alert {alert}, {who})")
        self.terminated = terminated


class PortUnreachable(ConnectionFailed):
    """ICMP port unreachable during the handshake: nothing listens at the peer's port.

    On a connected UDP socket the kernel reports it as ``ConnectionRefusedError``; waiting
    for retransmissions (RFC 6347 §4.2.4) cannot help, so the handshake fails at once.
    """

    def __init__(self, host: str, port: int, answered: bool) -> None:
        what = "stopped answering" if answered else "nothing listens there"
        reason = f"port unreachable: {host}:{port} ({what}; ICMP port unreachable)"
        super().__init__(ConnectionTerminated(reason=reason, alert=None, by_peer=False, error=True))
        self.args = (reason,)


class NoAnswer(TimeoutError, D2TLSError):
    """The peer never answered within the handshake timeout."""


class HandshakeTimeout(TimeoutError, D2TLSError):
    """The peer answered but the handshake did not finish within the timeout."""


class ClientEndpoint(asyncio.DatagramProtocol):
    """One DTLS client connection over a connected UDP socket."""

    def __init__(
        self,
        engine: DTLSClient,
        signer: SignatureProvider | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.engine = engine
        self._signer = signer
        self._on_event = on_event
        self._transport: asyncio.DatagramTransport | None = None
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._handshake: asyncio.Future[HandshakeCompleted] = self._loop.create_future()
        self._closed: asyncio.Future[ConnectionTerminated] = self._loop.create_future()
        self._data: asyncio.Queue[bytes] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.local_address: Address | None = None
        self.remote_address: Address | None = None
        #: Whether any datagram came back from the peer (tells "no answer" from "stalled").
        self.answered = False

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        engine: DTLSClient,
        *,
        signer: SignatureProvider | None = None,
        on_event: Callable[[Event], None] | None = None,
        local_port: int = 0,
    ) -> ClientEndpoint:
        """Open a UDP socket to ``host:port`` and send the ClientHello.

        ``on_event`` sees every engine event first; a ``SignatureRequested`` is answered by
        ``signer`` if given, else left to ``on_event`` (which must call ``provide_signature``).
        """
        loop = asyncio.get_running_loop()
        local_host = "::1" if ":" in host else "127.0.0.1"
        _, protocol = await loop.create_datagram_endpoint(
            lambda: cls(engine, signer, on_event),
            remote_addr=(host, port),
            local_addr=(local_host, local_port),
        )
        protocol.remote_address = (host, port)
        protocol.engine.connect(protocol._loop.time())
        protocol.pump()
        return protocol

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        sockname = self._transport.get_extra_info("sockname")
        self.local_address = (sockname[0], sockname[1]) if sockname else None

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.answered = True
        self.engine.receive_datagram(data, self._loop.time())
        self.pump()

    def error_received(self, exc: Exception) -> None:
        """ICMP errors: port unreachable ends the handshake; others are left to the timers."""
        if (
            isinstance(exc, ConnectionRefusedError)
            and not self._handshake.done()
            and self.remote_address is not None
        ):
            self._handshake.set_exception(PortUnreachable(*self.remote_address, self.answered))
            self._handshake.exception()  # mark retrieved
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()

    # engine plumbing
    def pump(self) -> None:
        """Deliver events, send pending datagrams and re-arm the timer."""
        now = self._loop.time()
        while (event := self.engine.next_event()) is not None:
            self._dispatch(event)
        if self._transport is not None and not self._transport.is_closing():
            for datagram in self.engine.datagrams_to_send(now):
                self._transport.sendto(datagram)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.engine.next_timer()
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.engine.handle_timer(self._loop.time())
        self.pump()

    def _dispatch(self, event: Event) -> None:
        if self._on_event is not None:
            self._on_event(event)
        if isinstance(event, HandshakeCompleted) and not self._handshake.done():
            self._handshake.set_result(event)
        elif isinstance(event, ApplicationDataReceived):
            self._data.put_nowait(event.data)
        elif isinstance(event, SignatureRequested) and (self._signer or not self._on_event):
            task = self._loop.create_task(self._sign(event))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif isinstance(event, ConnectionTerminated):
            if not self._handshake.done():
                self._handshake.set_exception(ConnectionFailed(event))
                self._handshake.exception()  # mark retrieved
            if not self._closed.done():
                self._closed.set_result(event)

    async def _sign(self, request: SignatureRequested) -> None:
        if self._signer is None:
            self.engine.close()
            self.pump()
            return
        try:
            signature = await self._signer(request)
        except Exception:
            self.engine.close()
        else:
            if not self.engine.is_closed:
                self.engine.provide_signature(signature, self._loop.time())
        self.pump()

    # public API
    async def handshake(self, timeout: float = 30.0) -> HandshakeCompleted:
        """Wait for the handshake; raises ConnectionFailed (PortUnreachable included) or a
        TimeoutError that names the peer (NoAnswer, HandshakeTimeout)."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._handshake), timeout)
        except TimeoutError:
            host, port = self.remote_address or ("?", 0)
            peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            if not self.answered:
                raise NoAnswer(f"no answer from {peer} after {timeout:g} s") from None
            raise HandshakeTimeout(
                f"handshake with {peer} not finished after {timeout:g} s "
                "(the peer answered, then went silent)"
            ) from None

    def send(self, data: bytes) -> None:
        """Send application data."""
        self.engine.send_application_data(data)
        self.pump()

    async def receive(self, timeout: float = 10.0) -> bytes:
        """Wait for the next application data (raises ConnectionFailed if the peer ended)."""
        getter: asyncio.Future[Any] = asyncio.ensure_future(self._data.get())
        closed: asyncio.Future[Any] = self._closed
        done, _ = await asyncio.wait(
            {getter, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if getter in done:
            data: bytes = getter.result()
            return data
        getter.cancel()
        if self._closed.done():
            raise ConnectionFailed(self._closed.result())
        raise TimeoutError("no application data received in time")

    async def close(self) -> None:
        """Send close_notify and release the socket."""
        self.engine.close()
        self.pump()
        await asyncio.sleep(0)
        if self._transport is not None:
            self._transport.close()


class ServerEndpoint(asyncio.DatagramProtocol):
    """A DTLS server on one UDP socket; optional echo of application data."""

    def __init__(
        self,
        engine: DTLSServer,
        *,
        echo: bool = False,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.engine = engine
        self._echo = echo
        self._on_event = on_event
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.address: Address | None = None

    @classmethod
    async def listen(
        cls,
        host: str,
        port: int,
        engine: DTLSServer,
        *,
        echo: bool = False,
        on_event: Callable[[Event], None] | None = None,
    ) -> ServerEndpoint:
        """Bind ``host:port`` (use port 0 for any free port)."""
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_datagram_endpoint(
            lambda: cls(engine, echo=echo, on_event=on_event), local_addr=(host, port)
        )
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        sockname = self._transport.get_extra_info("sockname")
        self.address = (sockname[0], sockname[1])

    def datagram_received(self, data: bytes, addr: Address) -> None:
        peer = (addr[0], addr[1])
        self.engine.receive_datagram(data, peer, self._loop.time())
        self.pump()

    def error_received(self, exc: Exception) -> None:
        pass

    def flush(self) -> None:
        """Deliver events, send pending datagrams and re-arm the timer."""
        self.pump()

    def pump(self) -> None:
        """Deliver events, send pending datagrams and re-arm the timer."""
        now = self._loop.time()
        while (event := self.engine.next_event()) is not None:
            if self._echo and isinstance(event, ApplicationDataReceived) and event.peer:
                conn = self.engine.connection(event.peer)
                if conn is not None and conn.is_established:
                    conn.send_application_data(event.data)
            if self._on_event is not None:
                self._on_event(event)
        if self._transport is not None and not self._transport.is_closing():
            for datagram, peer in self.engine.datagrams_to_send(now):
                self._transport.sendto(datagram, peer)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.engine.next_timer()
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.engine.handle_timer(self._loop.time())
        self.pump()

    def close(self) -> None:
        """Send close_notify to every peer and close the socket."""
        self.engine.close_all()
        self.pump()
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._transport.close()
