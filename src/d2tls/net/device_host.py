"""The D2TLS device's asyncio host: a :class:`~d2tls.core.roles.device.DeviceProtocol` on a
real UDP socket through :class:`~d2tls.net.pump.Pump`, and the standalone baseline (the device
running the full handshake itself) that the benchmarks compare it with."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field, replace
from typing import Any

from d2tls.core.dtls.client import DTLSClient
from d2tls.core.dtls.config import ClientConfig
from d2tls.core.dtls.connection import Tracer
from d2tls.core.dtls.session import Session
from d2tls.core.errors import (
    DelegationFailed as DelegationFailed,  # re-exported: its home is d2tls.core.errors
)
from d2tls.core.errors import EventTimeout
from d2tls.core.roles.device import (
    AttemptFailed,
    Connected,
    ConnectionClosed,
    DataReceived,
    DeviceConfig,
    DeviceEvent,
    DeviceProtocol,
    LinkStats,
)
from d2tls.core.sansio import Address
from d2tls.net.pump import Pump
from d2tls.net.udp import ClientEndpoint, ConnectionFailed


@dataclass
class DeviceReport:
    """Device cost of obtaining one session (D2TLS paper §6: what the device pays)."""

    mode: str
    delegations: int = 0
    resumed_from_cache: bool = False
    key_operations: dict[str, int] = field(
        default_factory=lambda: {"sign": 0, "verify": 0, "ecdh": 0, "keygen": 0}
    )
    cpu_ms: float = 0.0
    wall_ms: float = 0.0
    agent_link: LinkStats = field(default_factory=LinkStats)
    server_link: LinkStats = field(default_factory=LinkStats)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "delegations": self.delegations,
            "resumed_from_cache": self.resumed_from_cache,
            "key_operations": dict(self.key_operations),
            "public_key_operations": sum(self.key_operations.values()),
            "cpu_ms": round(self.cpu_ms, 3),
            "wall_ms": round(self.wall_ms, 3),
            "links": {
                "device-agent": self.agent_link.__dict__.copy(),
                "device-server": self.server_link.__dict__.copy(),
            },
        }


class DeviceConnection:
    """An end-to-end DTLS connection of the device with the server."""

    def __init__(
        self, pump: Pump[DeviceEvent], protocol: DeviceProtocol, report: DeviceReport
    ) -> None:
        self._pump = pump
        self._protocol = protocol
        self._key = protocol.key_of(protocol.connection)
        self.report = report
        assert protocol.context is not None
        self.session = protocol.context

    @property
    def local_address(self) -> Address | None:
        """The device's address for this connection (the socket of its resumption)."""
        return self._pump.child_address(self._key)

    def send(self, data: bytes) -> None:
        self._protocol.send(data)
        self._pump.poke()

    async def receive(self, timeout: float = 10.0) -> bytes:
        """The next application data; ConnectionFailed if the connection ended, TimeoutError
        (EventTimeout) after ``timeout`` seconds without any."""
        deadline = self._pump.now + timeout
        while True:
            try:
                event = await self._pump.next_event(max(0.0, deadline - self._pump.now))
            except EventTimeout:
                raise EventTimeout("no application data received in time") from None
            if isinstance(event, DataReceived):
                return event.data
            if isinstance(event, ConnectionClosed):
                raise ConnectionFailed(event.terminated)

    async def close(self) -> None:
        """Close the end-to-end connection; a standing channel to the agent stays open (its
        idle timeout closes it; :meth:`Device.close` closes everything at once)."""
        if self._protocol.channel_standing:
            self._protocol.close_connection(self._pump.now)
            self._pump.poke()  # the close_notify leaves ...
            self._pump.poke()  # ... and the connection's socket is released now
            await asyncio.sleep(0)
            return
        self._protocol.close(self._pump.now)
        await asyncio.sleep(0)
        self._pump.close()


async def _resolve(address: Address) -> Address:
    """An IP literal for ``address`` (the sans-IO role routes datagrams by address)."""
    infos = await asyncio.get_running_loop().getaddrinfo(*address, type=socket.SOCK_DGRAM)
    return str(infos[0][4][0]), int(infos[0][4][1])


class Device:
    """A D2TLS device on a real UDP socket: each :meth:`connect` runs a
    :class:`DeviceProtocol` on a :class:`~d2tls.net.pump.Pump` of its own."""

    def __init__(self, config: DeviceConfig) -> None:
        self.config = config
        self.context: Session | None = None
        self._request_ids = int.from_bytes(config.randomness.random_bytes(3), "big") + 1
        #: The role and its pump, kept while the channel to the agent stands (§3.1).
        self._protocol: DeviceProtocol | None = None
        self._pump: Pump[DeviceEvent] | None = None

    @property
    def protocol(self) -> DeviceProtocol | None:
        """The sans-IO role of the latest connection (its channel counters)."""
        return self._protocol

    def close(self) -> None:
        """Close the standing channel (close_notify) and the device's sockets."""
        protocol, pump = self._protocol, self._pump
        self._pump = None
        if protocol is not None and pump is not None:
            protocol.close(pump.now)
            pump.close()

    async def connect(self) -> DeviceConnection:
        """Return an end-to-end connection, delegating the full handshake when needed.

        One end-to-end connection at a time: a new connect() closes the previous one. The
        channel to the agent stands between connections (DeviceConfig.channel_idle_timeout).
        """
        report = DeviceReport(mode=self.config.mode.name.lower())
        cpu_start = time.process_time()
        wall_start = time.perf_counter()
        signs_before = self.config.signer.signatures
        verifies_before = self.config.signer.verifies
        pump = self._pump
        protocol = self._protocol
        if pump is not None and not pump.runs_on(asyncio.get_running_loop()):
            pump = self._pump = None  # another event loop: its channel cannot be driven here
            if protocol is not None:
                protocol.channel = None  # keeps channel_session: the next one is abbreviated
        if pump is None or protocol is None or protocol.channel is None:
            if pump is not None:
                pump.close()
            config = replace(self.config, agent=await _resolve(self.config.agent))
            protocol = DeviceProtocol(
                config,
                context=self.context,
                first_request_id=self._request_ids,
                server_address=await _resolve(self.config.server),
                message_events=False,  # connect() waits for the outcome only
            )
            if self._protocol is not None:  # keep the channel's session and counters
                protocol.adopt_channel_state(self._protocol)
            local = "::1" if ":" in config.agent[0] else "127.0.0.1"
            pump = await Pump.open(protocol, (local, 0))
            self._protocol, self._pump = protocol, pump
        else:
            protocol.context = self.context
        outcome: DeviceEvent | None = None
        try:
            protocol.connect(pump.now)
            pump.poke()
            while not isinstance(outcome, Connected | AttemptFailed):
                outcome = await pump.next_event()
        except BaseException:
            pump.close()
            self._pump = None
            raise
        finally:
            self.context = protocol.context
            self._request_ids = protocol.next_request_id
        report.delegations = protocol.delegations
        report.resumed_from_cache = protocol.delegations == 0
        report.agent_link, report.server_link = protocol.agent_link, protocol.server_link
        report.key_operations["sign"] = self.config.signer.signatures - signs_before
        report.key_operations["verify"] = self.config.signer.verifies - verifies_before
        report.cpu_ms = (time.process_time() - cpu_start) * 1000
        report.wall_ms = (time.perf_counter() - wall_start) * 1000
        if isinstance(outcome, AttemptFailed):
            if not protocol.channel_standing:
                pump.close()
                self._pump = None
            raise DelegationFailed(outcome.reason)
        return DeviceConnection(pump, protocol, report)


class StandaloneConnection:
    """The baseline's connection: a DTLS client on its own endpoint."""

    def __init__(self, endpoint: ClientEndpoint, report: DeviceReport, session: Session) -> None:
        self.endpoint = endpoint
        self.report = report
        self.session = session

    @property
    def local_address(self) -> Address | None:
        return self.endpoint.local_address

    def send(self, data: bytes) -> None:
        self.endpoint.send(data)

    async def receive(self, timeout: float = 10.0) -> bytes:
        return await self.endpoint.receive(timeout)

    async def close(self) -> None:
        await self.endpoint.close()


async def run_standalone(
    config: ClientConfig, server: Address, tracer: Tracer | None = None, timeout: float = 30.0
) -> tuple[StandaloneConnection, DeviceReport]:
    """The baseline: the device runs the full handshake itself (same engine)."""
    report = DeviceReport(mode="standalone")
    cpu_start = time.process_time()
    wall_start = time.perf_counter()
    engine = DTLSClient(config, tracer=tracer)
    endpoint = await ClientEndpoint.connect(server[0], server[1], engine)
    done = await endpoint.handshake(timeout=timeout)
    report.cpu_ms = (time.process_time() - cpu_start) * 1000
    report.wall_ms = (time.perf_counter() - wall_start) * 1000
    report.server_link.add_engine(engine.stats)
    for kind in report.key_operations:
        report.key_operations[kind] = engine.stats[kind]
    return StandaloneConnection(endpoint, report, done.session), report
