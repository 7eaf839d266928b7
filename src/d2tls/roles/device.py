"""The D2TLS device (paper §4.1-4.2), driven by the ``device`` machine of ``spec/d2tls.yaml``.

``DeviceProtocol`` is sans-IO: it consumes delegation messages and local events and produces
delegation messages and *commands* (open/close the agent channel, start the resumption, close
the connection) that ``Device`` carries out with real UDP sockets.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from cryptography.x509.verification import Store

from d2tls.clock import Clock, utc_now, wall_time
from d2tls.delegation.messages import (
    DelegationError,
    DelegationErrorCode,
    DelegationMessage,
    DelegationMode,
    DelegationProtocolError,
    DelegationRequest,
    SessionContext,
    SignRequest,
    SignResponse,
    Wiped,
    decode_message,
    encode_message,
)
from d2tls.dtls.client import DTLSClient
from d2tls.dtls.config import ClientConfig, KeyLogCallback, TimerConfig
from d2tls.dtls.connection import Tracer
from d2tls.dtls.constants import AlertDescription, CipherSuite
from d2tls.dtls.session import Session
from d2tls.errors import (
    DelegationFailed as DelegationFailed,  # re-exported: its home is d2tls.errors
)
from d2tls.errors import ProtocolError
from d2tls.model.machine import MachineDriver
from d2tls.net.udp import ClientEndpoint, ConnectionFailed
from d2tls.randomness import SYSTEM, Randomness
from d2tls.roles.signer import (
    DeviceSigner,
    SigningRefused,
    check_bound_transcript,
    check_server_key_exchange,
)
from d2tls.trace import tagged

Address = tuple[str, int]
#: The channel carries each delegation message in one record (spec/delegation.md, Transport),
#: so its datagrams may exceed the path MTU and rely on IP fragmentation on the local link.
CHANNEL_MTU = 17 * 1024
MESSAGE_NAMES = {
    DelegationRequest: "DelegationRequest",
    SignRequest: "SignRequest",
    SignResponse: "SignResponse",
    SessionContext: "SessionContext",
    DelegationError: "DelegationError",
    Wiped: "Wiped",
}


@dataclass
class DeviceConfig:
    """What a device needs. The private key lives only inside ``signer``."""

    agent: Address
    psk_identity: bytes
    psk: bytes
    server: Address
    server_name: str
    certificate_chain: tuple[bytes, ...]
    signer: DeviceSigner
    mode: DelegationMode = DelegationMode.BOUND
    cipher_suites: tuple[CipherSuite, ...] = (CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,)
    require_extended_master_secret: bool = True
    mtu: int = 1400
    timers: TimerConfig = field(default_factory=TimerConfig)
    keylog: KeyLogCallback | None = None
    tracer: Tracer | None = None
    timeout: float = 30.0
    #: How many times a refused resumption may start a new delegation (paper §4.2).
    max_delegations: int = 2
    #: Bound mode: SHA-256 of the server's SubjectPublicKeyInfo (RFC 7469 §2.4); when set, the
    #: device signs only a transcript whose server certificate carries this key.
    server_pin: bytes | None = None
    #: Strict mode (bound mode only): also verify the ServerKeyExchange signature under the
    #: pinned key, else under a chain verified against ``server_trust_store``.
    strict: bool = False
    server_trust_store: Store | None = None
    #: Wall clock (context expiry) and randomness (bound-mode ClientHello random, request_ids,
    #: the engines' randoms): docs/architecture.md, "Time and randomness".
    wall_clock: Clock = wall_time
    randomness: Randomness = SYSTEM


class DeviceProtocol:
    """One attempt to obtain an end-to-end session (sans-IO)."""

    ROLE = "device"

    def __init__(
        self, config: DeviceConfig, context: Session | None, first_request_id: int
    ) -> None:
        self.state = ""
        self.config = config
        self.context = context
        self.outbox: list[DelegationMessage] = []
        self.commands: deque[str] = deque()
        self.error: str | None = None
        self.error_code = DelegationErrorCode.INTERNAL
        self.delegations = 0
        self.sign_requests_seen = 0
        self._next_request_id = first_request_id
        self._request: DelegationRequest | None = None
        self._current: DelegationMessage | None = None
        self._refusal = ""
        #: The request_id of the message being answered, when it was readable (§6).
        self._offending_id: int | None = None
        self._driver = MachineDriver(self.ROLE, self, spec_name="d2tls")

    # ------------------------------------------------------------------ inputs
    def start(self) -> None:
        """Reuse a cached, unexpired context, else delegate."""
        if self.context is not None and not self.context.expired(self.config.wall_clock()):
            self._fire("reuse_context")
        else:
            self.context = None
            self._fire("delegate")

    def channel_up(self) -> None:
        self._fire("channel_up")

    def channel_failed(self, reason: str) -> None:
        self.error = reason
        self._fire("channel_failed")

    def resumed(self) -> None:
        self._fire("resumed")

    def resumption_refused(self) -> None:
        self._fire("resumption_refused")

    def close(self) -> None:
        self._fire("close")

    def receive(self, message: DelegationMessage) -> None:
        """Feed one message from the agent; violations become DelegationError + failed."""
        if self._driver.is_final():
            return
        request = self._request
        self._offending_id = message.request_id
        foreign = request is None or message.request_id != request.request_id
        # A DelegationError with another request_id (or 0) answers a message the agent could
        # not attribute (§6): it still ends the open delegation, and is never answered.
        if foreign and not (isinstance(message, DelegationError) and request is not None):
            self._abort(DelegationErrorCode.UNEXPECTED_MESSAGE, "message for an unknown request")
            return
        self._current = message
        if isinstance(message, SignRequest):
            self.sign_requests_seen += 1
        try:
            self._driver.fire(f"recv_{MESSAGE_NAMES[type(message)]}")
        except ProtocolError as exc:
            self._abort(DelegationErrorCode.UNEXPECTED_MESSAGE, exc.reason)

    def receive_bytes(self, data: bytes) -> None:
        """Decode then ``receive``; malformed input aborts the delegation with MALFORMED."""
        try:
            message = decode_message(data)
        except DelegationProtocolError as exc:
            self._offending_id = exc.request_id
            self._abort(exc.code, exc.reason)
            return
        self.receive(message)

    def _abort(self, code: DelegationErrorCode, reason: str) -> None:
        self.error_code = code
        self.error = f"agent protocol violation: {reason}"
        self._fire("abort")

    def _fire(self, trigger: str) -> None:
        if not self._driver.is_final():
            self._driver.fire_local(trigger)

    @property
    def is_final(self) -> bool:
        return self._driver.is_final()

    # ------------------------------------------------------------------ guards
    def sign_request_acceptable(self) -> bool:
        """DESIGN.md §2 signing policy; bound mode checks the transcript (spec/delegation.md)."""
        message = self._current
        request = self._request
        assert isinstance(message, SignRequest) and request is not None
        if request.mode is DelegationMode.BLIND:
            self._refusal = "strict mode needs bound mode" if self.config.strict else ""
            return len(message.digest) == 32 and not self.config.strict
        if message.transcript is None:
            self._refusal = "bound mode needs the transcript"
            return False
        assert request.client_random is not None
        try:
            check_bound_transcript(
                message.transcript,
                message.digest,
                request.client_random,
                request.certificate_chain,
                request.server_name,
                self.config.server_pin,
            )
            if self.config.strict:
                check_server_key_exchange(
                    message.transcript,
                    request.server_name,
                    server_pin=self.config.server_pin,
                    trust_store=self.config.server_trust_store,
                    now=utc_now(self.config.wall_clock),
                )
        except SigningRefused as exc:
            self._refusal = str(exc)
            return False
        return True

    def context_acceptable(self) -> bool:
        message = self._current
        assert isinstance(message, SessionContext)
        if message.cipher_suite not in [int(s) for s in self.config.cipher_suites]:
            self._refusal = "context for a cipher suite the device did not offer"
            return False
        if self.config.require_extended_master_secret and not message.extended_master_secret:
            self._refusal = "context without the extended master secret (RFC 7627)"
            return False
        if message.lifetime <= 0:
            self._refusal = "context already expired"
            return False
        return True

    def may_delegate_again(self) -> bool:
        return self.delegations < self.config.max_delegations

    # ------------------------------------------------------------------ actions
    def open_channel(self) -> None:
        self.delegations += 1
        self.commands.append("open_channel")

    def prepare_request(self) -> None:
        mode = self.config.mode
        self._request = DelegationRequest(
            request_id=self._next_request_id,
            server_host=self.config.server[0],
            server_port=self.config.server[1],
            server_name=self.config.server_name,
            cipher_suites=tuple(int(s) for s in self.config.cipher_suites),
            certificate_chain=self.config.certificate_chain,
            mode=mode,
            client_random=(
                self.config.randomness.random_bytes(32) if mode is DelegationMode.BOUND else None
            ),
        )
        self._next_request_id += 1

    def build_DelegationRequest(self) -> None:
        assert self._request is not None
        self.outbox.append(self._request)

    def sign(self) -> None:
        message = self._current
        request = self._request
        assert isinstance(message, SignRequest) and request is not None
        if request.mode is DelegationMode.BOUND:
            assert message.transcript is not None
            self._signature = self.config.signer.sign_transcript(message.transcript)
        else:
            self._signature = self.config.signer.sign_digest(message.digest)

    def build_SignResponse(self) -> None:
        assert self._request is not None
        self.outbox.append(SignResponse(self._request.request_id, self._signature))

    def refuse_signing(self) -> None:
        self.error_code = DelegationErrorCode.SIGNING_REFUSED
        self.error = f"signing refused: {self._refusal}"
        self.commands.append("close_channel")

    def refuse_second_signature(self) -> None:
        self.error_code = DelegationErrorCode.SIGNING_REFUSED
        self.error = "signing refused: this request was already signed once"
        self.commands.append("close_channel")

    def store_context(self) -> None:
        message = self._current
        assert isinstance(message, SessionContext)
        self.context = Session(
            session_id=message.session_id,
            master_secret=bytearray(message.master_secret),
            cipher_suite=CipherSuite(message.cipher_suite),
            extended_master_secret=message.extended_master_secret,
            server_name=self.config.server_name,
            peer_certificates=message.server_certificates,
            created_at=self.config.wall_clock(),
            lifetime=float(message.lifetime),
        )

    def refuse_context(self) -> None:
        self.error_code = DelegationErrorCode.UNSUPPORTED
        self.error = f"context refused: {self._refusal}"
        self.commands.append("close_channel")

    def close_channel(self) -> None:
        self.commands.append("close_channel")

    def start_resumption(self) -> None:
        self.commands.append("start_resumption")

    def report_agent_error(self) -> None:
        message = self._current
        assert isinstance(message, DelegationError)
        self.error = f"agent: {message.code.name.lower()}: {message.reason}"
        self.commands.append("close_channel")

    def report_channel_failure(self) -> None:
        self.commands.append("close_channel")

    def report_connected(self) -> None:
        pass

    def forget_context(self) -> None:
        if self.context is not None:
            self.context.wipe()
        self.context = None

    def report_resumption_failure(self) -> None:
        self.error = "the server refused the delegated session again"

    def close_connection(self) -> None:
        self.commands.append("close_connection")

    def build_DelegationError(self) -> None:
        """The request_id of the message answered if readable (§6), else of the open request."""
        request_id = self._offending_id
        if request_id is None:
            request_id = self._request.request_id if self._request is not None else 0
        self.outbox.append(DelegationError(request_id, self.error_code, (self.error or "")[:256]))

    def emit_flight(self, messages: tuple[str, ...]) -> None:
        for name in messages:
            getattr(self, f"build_{name}")()


@dataclass
class LinkStats:
    """Traffic on one device link."""

    datagrams_sent: int = 0
    datagrams_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    round_trips: int = 0

    def add_engine(self, stats: dict[str, int]) -> None:
        self.datagrams_sent += stats["datagrams_sent"]
        self.datagrams_received += stats["datagrams_received"]
        self.bytes_sent += stats["bytes_sent"]
        self.bytes_received += stats["bytes_received"]
        self.round_trips += stats["round_trips"]


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

    def __init__(self, endpoint: ClientEndpoint, report: DeviceReport, session: Session) -> None:
        self.endpoint = endpoint
        self.report = report
        self.session = session

    def send(self, data: bytes) -> None:
        self.endpoint.send(data)

    async def receive(self, timeout: float = 10.0) -> bytes:
        return await self.endpoint.receive(timeout)

    async def close(self) -> None:
        await self.endpoint.close()


class Device:
    """A D2TLS device: obtains sessions through the agent and resumes them itself."""

    def __init__(self, config: DeviceConfig) -> None:
        self.config = config
        self.context: Session | None = None
        self._request_ids = int.from_bytes(config.randomness.random_bytes(3), "big") + 1

    async def connect(self) -> DeviceConnection:
        """Return an end-to-end connection, delegating the full handshake when needed."""
        report = DeviceReport(mode=self.config.mode.name.lower())
        cpu_start = time.process_time()
        wall_start = time.perf_counter()
        signs_before = self.config.signer.signatures
        protocol = DeviceProtocol(self.config, self.context, self._request_ids)
        channel: ClientEndpoint | None = None
        connection: ClientEndpoint | None = None
        try:
            protocol.start()
            while True:
                while protocol.commands:
                    command = protocol.commands.popleft()
                    if command == "open_channel":
                        channel = await self._open_channel(protocol, report)
                    elif command == "close_channel" and channel is not None:
                        self._flush(protocol, channel, report)  # a DelegationError goes first
                        report.agent_link.add_engine(channel.engine.stats)
                        await channel.close()
                        channel = None
                    elif command == "start_resumption":
                        connection = await self._resume(protocol, report)
                self._flush(protocol, channel, report)
                if protocol.state == "connected" or protocol.is_final:
                    break
                if channel is None:
                    raise DelegationFailed(f"no channel to the agent in state {protocol.state}")
                try:
                    data = await channel.receive(timeout=self.config.timeout)
                except (ConnectionFailed, TimeoutError) as exc:
                    protocol.channel_failed(f"agent channel: {exc}")
                    continue
                before = protocol._current
                protocol.receive_bytes(data)
                if protocol._current is not None and protocol._current is not before:
                    self._trace_message("received", protocol._current)
        finally:
            if channel is not None:
                report.agent_link.add_engine(channel.engine.stats)
                await channel.close()
            self._request_ids = protocol._next_request_id
        self.context = protocol.context
        report.delegations = protocol.delegations
        report.resumed_from_cache = protocol.delegations == 0
        report.key_operations["sign"] = self.config.signer.signatures - signs_before
        report.cpu_ms = (time.process_time() - cpu_start) * 1000
        report.wall_ms = (time.perf_counter() - wall_start) * 1000
        if protocol.state != "connected" or connection is None or self.context is None:
            raise DelegationFailed(protocol.error or f"delegation ended in state {protocol.state}")
        return DeviceConnection(connection, report, self.context)

    def _flush(
        self, protocol: DeviceProtocol, channel: ClientEndpoint | None, report: DeviceReport
    ) -> None:
        outbox, protocol.outbox = protocol.outbox, []
        for message in outbox:
            if channel is None or channel.engine.is_closed:
                continue
            self._trace_message("sent", message)  # stamped before it can be answered
            channel.send(encode_message(message))
            if isinstance(message, DelegationRequest | SignResponse):
                report.agent_link.round_trips += 1

    async def _open_channel(
        self, protocol: DeviceProtocol, report: DeviceReport
    ) -> ClientEndpoint | None:
        engine = DTLSClient(
            ClientConfig(
                cipher_suites=(CipherSuite.TLS_PSK_WITH_AES_128_CCM_8,),
                psk_identity=self.config.psk_identity,
                psk=self.config.psk,
                mtu=CHANNEL_MTU,
                timers=self.config.timers,
                require_extended_master_secret=True,
                wall_clock=self.config.wall_clock,
                randomness=self.config.randomness,
            ),
            tracer=self._trace_link("device-agent"),
        )
        endpoint = await ClientEndpoint.connect(self.config.agent[0], self.config.agent[1], engine)
        try:
            await endpoint.handshake(timeout=self.config.timeout)
        except (ConnectionFailed, TimeoutError) as exc:
            report.agent_link.add_engine(engine.stats)
            await endpoint.close()
            protocol.channel_failed(self._channel_failure(exc))
            return None
        protocol.channel_up()
        return endpoint

    async def _resume(
        self, protocol: DeviceProtocol, report: DeviceReport
    ) -> ClientEndpoint | None:
        context = protocol.context
        assert context is not None
        engine = DTLSClient(
            ClientConfig(
                cipher_suites=(context.cipher_suite,),
                server_name=self.config.server_name,
                session=context,
                resume_only=True,
                require_extended_master_secret=self.config.require_extended_master_secret,
                mtu=self.config.mtu,
                timers=self.config.timers,
                keylog=self.config.keylog,
                wall_clock=self.config.wall_clock,
                randomness=self.config.randomness,
            ),
            tracer=self._trace_link("device-server"),
        )
        endpoint = await ClientEndpoint.connect(
            self.config.server[0], self.config.server[1], engine
        )
        try:
            await endpoint.handshake(timeout=self.config.timeout)
        except (ConnectionFailed, TimeoutError):
            report.server_link.add_engine(engine.stats)
            await endpoint.close()
            protocol.resumption_refused()
            return None
        report.server_link.add_engine(engine.stats)
        protocol.resumed()
        return endpoint

    def _channel_failure(self, exc: Exception) -> str:
        """Name the cause of a failed channel handshake (RFC 4279 §2 alerts)."""
        host, port = self.config.agent
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        identity = self.config.psk_identity.decode("utf-8", "replace")
        if isinstance(exc, TimeoutError):
            return f"no answer from the agent at {where} after {self.config.timeout:g} s"
        assert isinstance(exc, ConnectionFailed)
        ended = exc.terminated
        if ended.by_peer and ended.alert is AlertDescription.DECRYPT_ERROR:
            return (
                f"the agent refused the PSK: the key for identity {identity!r} does not match "
                f"the agent's (alert decrypt_error from {where})"
            )
        if ended.by_peer and ended.alert is AlertDescription.UNKNOWN_PSK_IDENTITY:
            return (
                f"the agent refused the PSK: it does not know identity {identity!r} "
                f"(alert unknown_psk_identity from {where})"
            )
        return f"cannot open the channel to the agent at {where}: {exc}"

    def _trace_link(self, link: str) -> Tracer | None:
        return tagged(self.config.tracer, party="device", link=link)

    def _trace_message(self, direction: str, message: DelegationMessage) -> None:
        if self.config.tracer is not None:
            self.config.tracer(
                {
                    "event": f"message_{direction}",
                    "message": type(message).__name__,
                    "party": "device",
                    "link": "device-agent",
                    "layer": "delegation",
                }
            )


async def run_standalone(
    config: ClientConfig, server: Address, tracer: Tracer | None = None, timeout: float = 30.0
) -> tuple[DeviceConnection, DeviceReport]:
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
    return DeviceConnection(endpoint, report, done.session), report
