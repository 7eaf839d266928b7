"""A DTLS client and a DTLS server engine as awaitables, on :class:`~d2tls.net.pump.Pump`.

All protocol logic lives in the engines and all socket and timer work in the pump; these
classes only turn events into awaitables (handshake done, data, closed) for the CLI, the
benchmarks and the tests.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from d2tls.core.dtls.client import DTLSClient
from d2tls.core.dtls.events import (
    ApplicationDataReceived,
    ConnectionTerminated,
    Event,
    HandshakeCompleted,
    SignatureRequested,
)
from d2tls.core.dtls.server import DTLSServer
from d2tls.core.errors import D2TLSError
from d2tls.net.pump import Pump

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


class ClientEndpoint:
    """One DTLS client connection on its own UDP socket, driven by a :class:`Pump`."""

    def __init__(
        self,
        engine: DTLSClient,
        signer: SignatureProvider | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.engine = engine
        self._signer = signer
        self._on_event = on_event
        self._loop = asyncio.get_running_loop()
        self._pump: Pump[Event] | None = None
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
        """Open a UDP socket towards ``host:port`` (a name is resolved first) and send the
        ClientHello.

        ``on_event`` sees every engine event first; a ``SignatureRequested`` is answered by
        ``signer`` if given, else left to ``on_event`` (which must call ``provide_signature``).
        """
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        remote: Address = (str(infos[0][4][0]), int(infos[0][4][1]))
        engine.remote = remote  # the endpoint decides where its engine talks to
        local_host = "::1" if ":" in remote[0] else "127.0.0.1"
        endpoint = cls(engine, signer, on_event)
        endpoint.remote_address = (host, port)
        endpoint._pump = await Pump.open(
            _Answered(engine, endpoint),
            (local_host, local_port),
            remote_addr=remote,
            on_event=endpoint._dispatch,
            on_unreachable=endpoint._unreachable,
        )
        endpoint.local_address = endpoint._pump.local_address
        engine.connect(endpoint._pump.now)
        endpoint.pump()
        return endpoint

    def _unreachable(self) -> None:
        """ICMP port unreachable ends the handshake: retransmissions cannot help."""
        if not self._handshake.done() and self.remote_address is not None:
            self._handshake.set_exception(PortUnreachable(*self.remote_address, self.answered))
            self._handshake.exception()  # mark retrieved

    def pump(self) -> None:
        """Send what the engine has to send and re-arm its timer (after a call into it)."""
        if self._pump is not None:
            self._pump.poke()

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
        await asyncio.sleep(0)
        if self._pump is not None:
            self._pump.close()


class ServerEndpoint:
    """A DTLS server on one UDP socket, driven by a :class:`Pump`; optional echo."""

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
        self._pump: Pump[Event] | None = None
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
        endpoint = cls(engine, echo=echo, on_event=on_event)
        endpoint._pump = await Pump.open(engine, (host, port), on_event=endpoint._dispatch)
        endpoint.address = endpoint._pump.local_address
        return endpoint

    def _dispatch(self, event: Event) -> None:
        if self._echo and isinstance(event, ApplicationDataReceived) and event.peer:
            conn = self.engine.connection(event.peer)
            if conn is not None and conn.is_established:
                conn.send_application_data(event.data)
        if self._on_event is not None:
            self._on_event(event)

    def flush(self) -> None:
        """Send pending datagrams and re-arm the timer (after a call into the engine)."""
        self.pump()

    def pump(self) -> None:
        """Send pending datagrams and re-arm the timer (after a call into the engine)."""
        if self._pump is not None:
            self._pump.poke()

    def close(self) -> None:
        """Send close_notify to every peer and close the socket."""
        self.engine.close_all()
        if self._pump is not None:
            self._pump.close()


class _Answered:
    """The client engine as the pump sees it, noting whether the peer ever answered."""

    def __init__(self, engine: DTLSClient, endpoint: ClientEndpoint) -> None:
        self._engine = engine
        self._endpoint = endpoint

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        self._endpoint.answered = True
        self._engine.receive_datagram(data, addr, now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        return self._engine.datagrams_to_send(now)

    def next_timer(self) -> float | None:
        return self._engine.next_timer()

    def handle_timer(self, now: float) -> None:
        self._engine.handle_timer(now)

    def next_event(self) -> Event | None:
        return self._engine.next_event()
