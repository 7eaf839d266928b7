"""The D2TLS device (paper §4.1-4.2): one sans-IO role, driven by the ``device`` machine of
``spec/d2tls.yaml``.

:class:`DeviceProtocol` is a :class:`~d2tls.core.sansio.SansIOProtocol`. It owns its DTLS engines
the way :class:`~d2tls.core.dtls.server.DTLSServer` owns its connections: the DTLS-PSK client of
its channel to the agent and the resume-only DTLS client of its end-to-end connection to the
server, all on the device's one address. A :class:`DelegationAttempt` (the machine) decides;
the role carries its :class:`Command`\\ s out on the engines, keeps the device's timeouts as
its own timer, and tells the application what happened with typed events
(``DeviceEvent``). :class:`~d2tls.net.device_host.Device` is its asyncio host on a real socket
(:class:`~d2tls.net.pump.Pump`); the simulator (:class:`d2tls.sim.Network`) hosts the same
object.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TypeAlias

from cryptography.x509.verification import Store

from d2tls.core.clock import Clock, utc_now, wall_time
from d2tls.core.delegation.chain_cache import DeviceChainMemo
from d2tls.core.delegation.channel_security import (
    CHANNEL_IDLE_TIMEOUT,
    CHANNEL_REKEY_DELEGATIONS,
    CHANNEL_REKEY_SECONDS,
    Channel,
    device_channel_suites,
)
from d2tls.core.delegation.messages import (
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
    chain_hash,
    decode_message,
    encode_message,
)
from d2tls.core.dtls.client import DTLSClient
from d2tls.core.dtls.config import ClientConfig, KeyLogCallback, TimerConfig
from d2tls.core.dtls.connection import Connection, Tracer
from d2tls.core.dtls.constants import AlertDescription, CipherSuite
from d2tls.core.dtls.events import (
    ApplicationDataReceived,
    ConnectionTerminated,
    HandshakeCompleted,
)
from d2tls.core.dtls.session import Session
from d2tls.core.errors import (
    DelegationFailed as DelegationFailed,  # re-exported: its home is d2tls.core.errors
)
from d2tls.core.errors import InvalidStateError, ProtocolError, SpecError
from d2tls.core.model.machine import Handlers, SpecMachine, expecting, ignoring
from d2tls.core.model.spec import load_spec
from d2tls.core.model.states import DeviceState
from d2tls.core.randomness import SYSTEM, Randomness
from d2tls.core.roles.signer import (
    DeviceSigner,
    SigningRefused,
    bound_transcript,
    check_server_key_exchange,
    check_transcript,
)
from d2tls.core.sansio import Address, Datagram
from d2tls.core.trace import tagged

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
#: Device states in which it waits for the agent (the channel timeout runs).
CHANNEL_STATES = frozenset(
    {
        DeviceState.CONNECTING_AGENT,
        DeviceState.AWAITING_SIGN_REQUEST,
        DeviceState.AWAITING_CONTEXT,
        DeviceState.AWAITING_WIPE,
    }
)
#: Why a resumption that never completed ended when the device's timeout ran out.
RESUMPTION_TIMED_OUT = "timed out (no record of the server authenticated)"


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
    #: Delegation channel protection, ``psk`` or ``ecdhe-psk`` (forward secrecy of handed-over
    #: contexts): d2tls.core.delegation.channel_security.
    channel: Channel = "psk"
    #: The DER SubjectPublicKeyInfo of the signer's key, presented as an RFC 7250 raw public
    #: key instead of ``certificate_chain`` (which is then empty): a TwinPeaks member key.
    raw_public_key: bytes | None = None
    #: Standing channel (spec/delegation.md §3.1): seconds the channel to the agent stays open
    #: without a delegation (0: close it after every delegation). No keep-alive is sent: the
    #: default stays below the 2-minute floor of a NAT's UDP mapping timer (RFC 4787 REQ-5).
    channel_idle_timeout: float = CHANNEL_IDLE_TIMEOUT
    #: Rekey interval: a fresh full channel handshake (new ECDHE for ``ecdhe-psk``) after this
    #: many delegations or seconds since the last full one (0: no limit). An abbreviated
    #: channel handshake keeps the master secret, so forward secrecy is per rekey interval.
    channel_rekey_delegations: int = CHANNEL_REKEY_DELEGATIONS
    channel_rekey_seconds: float = CHANNEL_REKEY_SECONDS
    #: Whether the agent holds ``certificate_chain`` (then requests carry only its hash,
    #: spec/delegation.md §5.2): shared by every delegation of this device.
    chain_memo: DeviceChainMemo = field(default_factory=DeviceChainMemo)


class Command(Enum):
    """What the machine asks its owner to do with the engines."""

    OPEN_CHANNEL = "open_channel"
    CLOSE_CHANNEL = "close_channel"
    RELEASE_CHANNEL = "release_channel"
    START_RESUMPTION = "start_resumption"
    CLOSE_CONNECTION = "close_connection"


class DelegationAttempt:
    r"""One attempt to obtain an end-to-end session: the ``device`` machine, without engines.

    It consumes delegation messages and local events and produces delegation messages
    (:attr:`outbox`) and :class:`Command`\ s that its owner, :class:`DeviceProtocol`, carries
    out on its DTLS engines.
    """

    ROLE = "device"

    def __init__(
        self,
        config: DeviceConfig,
        context: Session | None,
        first_request_id: int,
        channel_open: Callable[[], bool] = lambda: False,
    ) -> None:
        #: Whether a standing channel to the agent can carry the next delegation.
        self._standing = channel_open
        self.config = config
        self.context = context
        self.outbox: list[DelegationMessage] = []
        self.commands: deque[Command] = deque()
        self.error: str | None = None
        self.error_code = DelegationErrorCode.INTERNAL
        self.delegations = 0
        self.sign_requests_seen = 0
        self._next_request_id = first_request_id
        self._request: DelegationRequest | None = None
        self._refusal = ""
        self._signature = b""
        #: The bound-mode transcript to sign, rebuilt from a compact one if need be (§6).
        self._transcript: bytes | None = None
        #: The server's Certificate entries seen in the signed transcript (bound mode).
        self._server_certificates: tuple[bytes, ...] = ()
        #: The request_id of the message being answered, when it was readable (§6).
        self._offending_id: int | None = None
        self._table = self._handlers()
        self._driver: SpecMachine[DeviceState, DelegationMessage | None] = SpecMachine(
            load_spec("d2tls").role(self.ROLE), DeviceState, self._table
        )

    def _handlers(self) -> Handlers[DelegationMessage | None]:
        """The ``device`` machine's guards, actions and builders (spec/d2tls.yaml)."""
        return Handlers(
            guards={
                "channel_open": ignoring(self._channel_open),
                "sign_request_acceptable": expecting(SignRequest, self._sign_request_acceptable),
                "context_acceptable": expecting(SessionContext, self._context_acceptable),
                "may_delegate_again": ignoring(self._may_delegate_again),
            },
            actions={
                "open_channel": ignoring(self._open_channel),
                "reuse_channel": ignoring(self._reuse_channel),
                "release_channel": ignoring(self._release_channel),
                "prepare_request": ignoring(self._prepare_request),
                "sign": expecting(SignRequest, self._sign),
                "refuse_signing": ignoring(self._refuse_signing),
                "refuse_second_signature": ignoring(self._refuse_second_signature),
                "store_context": expecting(SessionContext, self._store_context),
                "refuse_context": ignoring(self._refuse_context),
                "close_channel": ignoring(self._close_channel),
                "start_resumption": ignoring(self._start_resumption),
                "report_agent_error": expecting(DelegationError, self._report_agent_error),
                "report_channel_failure": ignoring(self._report_channel_failure),
                "report_connected": ignoring(self._report_connected),
                "forget_context": ignoring(self._forget_context),
                "report_resumption_failure": ignoring(self._report_resumption_failure),
                "close_connection": ignoring(self._close_connection),
            },
            builders={
                "DelegationRequest": self._build_delegation_request,
                "SignResponse": self._build_sign_response,
                "DelegationError": self._build_delegation_error,
            },
            hold=self._hold,
            emit=self._emit_flight,
        )

    @property
    def state(self) -> DeviceState:
        """The current state (``spec/d2tls.yaml``, role ``device``)."""
        return self._driver.state

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

    @property
    def next_request_id(self) -> int:
        """The request_id the next delegation of this device will use."""
        return self._next_request_id

    def receive(self, message: DelegationMessage) -> DelegationMessage | None:
        """Feed one message from the agent; violations become DelegationError + failed.

        Returns the message if it was for the open request (and so was acted on).
        """
        if self._driver.is_final():
            return None
        request = self._request
        self._offending_id = message.request_id
        foreign = request is None or message.request_id != request.request_id
        # A DelegationError with another request_id (or 0) answers a message the agent could
        # not attribute (§6): it still ends the open delegation, and is never answered.
        if foreign and not (isinstance(message, DelegationError) and request is not None):
            self._abort(DelegationErrorCode.UNEXPECTED_MESSAGE, "message for an unknown request")
            return None
        if self._resend_full_chain(message):
            return message
        if isinstance(message, SignRequest):
            self.sign_requests_seen += 1
            if request is not None and request.certificate_chain:
                self.config.chain_memo.held = True  # the agent accepted the full chain
        try:
            self._driver.fire(f"recv_{MESSAGE_NAMES[type(message)]}", message)
        except ProtocolError as exc:
            self._abort(DelegationErrorCode.UNEXPECTED_MESSAGE, exc.reason)
        return message

    def _resend_full_chain(self, message: DelegationMessage) -> bool:
        """UNKNOWN_CHAIN for a request that named the chain by hash, before any SignRequest:
        send the same request once more with the full chain and a fresh request_id (§6)."""
        request = self._request
        if not (
            isinstance(message, DelegationError)
            and message.code is DelegationErrorCode.UNKNOWN_CHAIN
            and request is not None
            and request.certificate_chain_hash is not None
            and message.request_id == request.request_id
            and self.sign_requests_seen == 0
        ):
            return False
        self.config.chain_memo.held = False
        self._request = replace(
            request,
            request_id=self._next_request_id,
            certificate_chain=self.config.certificate_chain,
            certificate_chain_hash=None,
        )
        self._next_request_id += 1
        self.outbox.append(self._request)
        return True

    def receive_bytes(self, data: bytes) -> DelegationMessage | None:
        """Decode then ``receive``; malformed input aborts the delegation with MALFORMED."""
        try:
            message = decode_message(data)
        except DelegationProtocolError as exc:
            self._offending_id = exc.request_id
            self._abort(exc.code, exc.reason)
            return None
        return self.receive(message)

    def _abort(self, code: DelegationErrorCode, reason: str) -> None:
        self.error_code = code
        self.error = f"agent protocol violation: {reason}"
        self._fire("abort")

    def _fire(self, trigger: str) -> None:
        if not self._driver.is_final():
            self._driver.fire_local(trigger, None)

    @property
    def is_final(self) -> bool:
        return self._driver.is_final()

    # ------------------------------------------------------------------ guards
    def _sign_request_acceptable(self, message: SignRequest) -> bool:
        """The signing policy; bound mode checks the transcript (spec/delegation.md)."""
        request = self._request
        assert request is not None
        if request.mode is DelegationMode.BLIND:
            self._refusal = "strict mode needs bound mode" if self.config.strict else ""
            return len(message.digest) == 32 and not self.config.strict
        assert request.client_random is not None
        try:
            memo = self.config.chain_memo
            held = memo.server_certificate_for(request.server_name)
            transcript = bound_transcript(message, self.config.certificate_chain, request, held)
            checked = check_transcript(
                transcript,
                message.digest,
                request.client_random,
                self.config.certificate_chain if request.raw_public_key is None else (),
                request.server_name,
                self.config.server_pin,
                raw_public_key=request.raw_public_key,
            )
            if self.config.strict:
                self.config.signer.verifies += check_server_key_exchange(
                    transcript,
                    request.server_name,
                    server_pin=self.config.server_pin,
                    trust_store=self.config.server_trust_store,
                    now=utc_now(self.config.wall_clock),
                )
        except SigningRefused as exc:
            self._refusal = str(exc)
            return False
        self._transcript = transcript
        self._server_certificates = checked.server_certificates
        if memo.enabled:  # checked by rule 6 just now
            memo.server_certificate = (request.server_name, checked.server_certificate_body)
        return True

    def _context_acceptable(self, message: SessionContext) -> bool:
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

    def _may_delegate_again(self) -> bool:
        return self.delegations < self.config.max_delegations

    def _channel_open(self) -> bool:
        """A standing channel is established and within its rekey interval (§3.1)."""
        return self._standing()

    # ------------------------------------------------------------------ actions
    def _open_channel(self) -> None:
        self.delegations += 1
        self.commands.append(Command.OPEN_CHANNEL)

    def _reuse_channel(self) -> None:
        self.delegations += 1

    def _release_channel(self) -> None:
        self.commands.append(Command.RELEASE_CHANNEL)

    def _prepare_request(self) -> None:
        mode = self.config.mode
        chain = self.config.certificate_chain
        hashed = chain_hash(chain) if chain and self.config.chain_memo.use_hash() else None
        held = self.config.chain_memo.server_certificate_for(self.config.server_name)
        bound = mode is DelegationMode.BOUND
        self._request = DelegationRequest(
            request_id=self._next_request_id,
            server_host=self.config.server[0],
            server_port=self.config.server[1],
            server_name=self.config.server_name,
            cipher_suites=tuple(int(s) for s in self.config.cipher_suites),
            certificate_chain=() if hashed is not None else chain,
            mode=mode,
            client_random=self.config.randomness.random_bytes(32) if bound else None,
            raw_public_key=self.config.raw_public_key,
            certificate_chain_hash=hashed,
            server_certificate_hash=(
                hashlib.sha256(held).digest() if bound and held is not None else None
            ),
        )
        self._next_request_id += 1

    def _build_delegation_request(self) -> None:
        assert self._request is not None
        self.outbox.append(self._request)

    def _sign(self, message: SignRequest) -> None:
        request = self._request
        assert request is not None
        if request.mode is DelegationMode.BOUND:
            assert self._transcript is not None
            self._signature = self.config.signer.sign_transcript(self._transcript)
        else:
            self._signature = self.config.signer.sign_digest(message.digest)

    def _build_sign_response(self) -> None:
        assert self._request is not None
        self.outbox.append(SignResponse(self._request.request_id, self._signature))

    def _refuse_signing(self) -> None:
        self.error_code = DelegationErrorCode.SIGNING_REFUSED
        self.error = f"signing refused: {self._refusal}"
        self.commands.append(Command.CLOSE_CHANNEL)

    def _refuse_second_signature(self) -> None:
        self.error_code = DelegationErrorCode.SIGNING_REFUSED
        self.error = "signing refused: this request was already signed once"
        self.commands.append(Command.CLOSE_CHANNEL)

    def _store_context(self, message: SessionContext) -> None:
        self.context = Session(
            session_id=message.session_id,
            master_secret=bytearray(message.master_secret),
            cipher_suite=CipherSuite(message.cipher_suite),
            extended_master_secret=message.extended_master_secret,
            server_name=self.config.server_name,
            # The agent leaves out what the device already saw in the signed transcript
            # (spec/delegation.md §5.2, server_certificates).
            peer_certificates=message.server_certificates or self._server_certificates,
            created_at=self.config.wall_clock(),
            lifetime=float(message.lifetime),
        )

    def _refuse_context(self) -> None:
        self.error_code = DelegationErrorCode.UNSUPPORTED
        self.error = f"context refused: {self._refusal}"
        self.commands.append(Command.CLOSE_CHANNEL)

    def _close_channel(self) -> None:
        self.commands.append(Command.CLOSE_CHANNEL)

    def _start_resumption(self) -> None:
        self.commands.append(Command.START_RESUMPTION)

    def _report_agent_error(self, message: DelegationError) -> None:
        self.error = f"agent: {message.code.name.lower()}: {message.reason}"
        self.commands.append(Command.CLOSE_CHANNEL)

    def _report_channel_failure(self) -> None:
        self.commands.append(Command.CLOSE_CHANNEL)

    def _report_connected(self) -> None:
        pass

    def _forget_context(self) -> None:
        if self.context is not None:
            self.context.wipe()
        self.context = None

    def _report_resumption_failure(self) -> None:
        self.error = "the server refused the delegated session again"

    def _close_connection(self) -> None:
        self.commands.append(Command.CLOSE_CONNECTION)

    def _build_delegation_error(self) -> None:
        """The request_id of the message answered if readable (§6), else of the open request."""
        request_id = self._offending_id
        if request_id is None:
            request_id = self._request.request_id if self._request is not None else 0
        self.outbox.append(DelegationError(request_id, self.error_code, (self.error or "")[:256]))

    def _emit_flight(self, messages: tuple[str, ...]) -> None:
        for name in messages:
            self._table.builders[name]()

    def _hold(self, messages: tuple[str, ...]) -> None:
        raise SpecError(f"role {self.ROLE}: the device builds no message ahead of its flight")


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class MessageSent:
    """A delegation message left for the agent."""

    message: DelegationMessage


@dataclass(frozen=True)
class MessageReceived:
    """A delegation message from the agent, for the open request, was acted on."""

    message: DelegationMessage


@dataclass(frozen=True)
class Connected:
    """The attempt ended with an end-to-end session with the server."""

    session: Session
    delegations: int


@dataclass(frozen=True)
class AttemptFailed:
    """The attempt ended without a session; ``reason`` says why."""

    reason: str


@dataclass(frozen=True)
class ResumptionFailed:
    """A resumption with the server did not complete (the device may delegate again)."""

    reason: str


@dataclass(frozen=True)
class DataReceived:
    """Application data from the server on the end-to-end connection."""

    data: bytes


@dataclass(frozen=True)
class ConnectionClosed:
    """The end-to-end connection ended (``terminated`` says how)."""

    terminated: ConnectionTerminated


DeviceEvent: TypeAlias = (
    MessageSent
    | MessageReceived
    | Connected
    | AttemptFailed
    | ResumptionFailed
    | DataReceived
    | ConnectionClosed
)


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


def _where(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def describe_end(ended: ConnectionTerminated) -> str:
    """How a connection ended, for messages: reason, alert and who sent it."""
    alert = ended.alert.name.lower() if ended.alert is not None else None
    return f"{ended.reason} (alert {alert}, {'peer' if ended.by_peer else 'local'})"


# --------------------------------------------------------------------------- the role


class DeviceProtocol:
    """The device as one sans-IO role (see the module docstring).

    The application calls :meth:`connect` (one attempt: reuse the cached context or
    delegate), then :meth:`send` and :meth:`close` on the end-to-end connection; the host
    calls the five methods of :class:`~d2tls.core.sansio.SansIOProtocol` and, since every engine
    talks from a socket of its own, those of :class:`~d2tls.core.sansio.HasChildEndpoints`.
    """

    def __init__(
        self,
        config: DeviceConfig,
        *,
        context: Session | None = None,
        first_request_id: int | None = None,
        server_address: Address | None = None,
        message_events: bool = True,
    ) -> None:
        """``server_address``: where the device resumes, ``config.server`` resolved to an IP
        literal by the host (``config.server`` itself is what the DelegationRequest names).
        ``message_events``: report every delegation message (:class:`MessageSent`,
        :class:`MessageReceived`); a host that waits only for the outcome turns them off, and
        is then not woken for each one."""
        self.config = config
        self._message_events = message_events
        #: The cached context (the session to resume), kept across attempts.
        self.context = context
        self.server_address = server_address or config.server
        if first_request_id is None:
            first_request_id = int.from_bytes(config.randomness.random_bytes(3), "big") + 1
        self._request_ids = first_request_id
        self.attempt: DelegationAttempt | None = None
        self.attempts = 0
        #: The DTLS-PSK client of the channel to the agent, while it is open.
        self.channel: DTLSClient | None = None
        #: The resume-only DTLS client of the end-to-end connection to the server.
        self.connection: DTLSClient | None = None
        #: Traffic of the current attempt on each link (DeviceReport).
        self.agent_link = LinkStats()
        self._server_done = LinkStats()
        #: Every engine with a child endpoint (socket) of its own, by key, until it is closed,
        #: replaced and its last datagrams left.
        self._engines: dict[int, DTLSClient] = {}
        #: child_endpoints() of _engines, replaced (never changed in place) when they change.
        self._endpoints: dict[int, Address] = {}
        self._keys = itertools.count(1)
        self._events: deque[DeviceEvent] = deque()
        self._deadline: float | None = None
        self._reported = False
        #: Standing channel (spec/delegation.md §3.1): the channel's session (for an
        #: abbreviated handshake once the channel closed), when its keys were last made by a
        #: full handshake, how many delegations it carried since, when it closes if idle, and
        #: its stats already counted in an earlier attempt's agent_link.
        self.channel_session: Session | None = None
        self.channel_full_handshakes = 0
        self.channel_abbreviated_handshakes = 0
        self._keyed_at = 0.0
        self._keyed_delegations = 0
        self._idle_deadline: float | None = None
        self._channel_base: dict[str, int] | None = None
        self._now = 0.0

    # ------------------------------------------------------------------ the application's calls
    @property
    def state(self) -> str:
        """The machine's state, ``idle`` before the first attempt."""
        return self.attempt.state if self.attempt is not None else "idle"

    @property
    def connected(self) -> bool:
        return self.state == DeviceState.CONNECTED

    @property
    def finished(self) -> bool:
        """The current attempt ended (connected, or final)."""
        attempt = self.attempt
        return attempt is not None and (self.connected or attempt.is_final)

    @property
    def delegations(self) -> int:
        return self.attempt.delegations if self.attempt is not None else 0

    @property
    def next_request_id(self) -> int:
        return self._request_ids

    @property
    def server_link(self) -> LinkStats:
        """The traffic with the server in this attempt (refused resumptions, and the current
        connection as it stands; read at :class:`Connected` it is the handshake with its
        final flight)."""
        link = replace(self._server_done)
        if self.connection is not None:
            link.add_engine(self.connection.stats)
        return link

    def connect(self, now: float) -> None:
        """Start one attempt: resume the cached context if unexpired, else delegate."""
        if self.attempt is not None and not self.finished:
            raise InvalidStateError(f"an attempt is running (state {self.state})")
        if self.connection is not None:
            self._retire(self.connection)
        self.connection = None
        if self.channel is not None and not self.channel.is_established:
            self._drop_channel()  # a half-open or closed channel is not kept
        self._idle_deadline = None
        self.attempts += 1
        self.agent_link, self._server_done = LinkStats(), LinkStats()
        self._channel_base = dict(self.channel.stats) if self.channel is not None else None
        self._reported = False
        self._now = now
        self.attempt = DelegationAttempt(
            self.config, self.context, self._request_ids, self._channel_standing
        )
        self.attempt.start()
        self._run(now, progressed=True)

    def send(self, data: bytes) -> None:
        """Application data to the server on the end-to-end connection."""
        if self.connection is None or not self.connected:
            raise InvalidStateError(f"no end-to-end connection (state {self.state})")
        self.connection.send_application_data(data)

    def close(self, now: float) -> None:
        """Close the end-to-end connection (close_notify) and the channel, if open."""
        if self.connection is not None:
            self._retire(self.connection)
        if self.channel is not None:
            self._drop_channel()
        self._deadline = self._idle_deadline = None

    def close_connection(self, now: float) -> None:
        """Close the end-to-end connection only; a standing channel stays until idle.

        The connection is done with: its close_notify leaves with its endpoint's next
        datagrams, then the endpoint goes (its traffic stays counted in :attr:`server_link`).
        """
        connection, self.connection = self.connection, None
        if connection is not None:
            self._server_done.add_engine(connection.stats)
            self._retire(connection)
        self._deadline = None

    @property
    def channel_standing(self) -> bool:
        """The channel to the agent is established and kept between delegations."""
        return self.channel is not None and self.channel.is_established

    def _channel_standing(self) -> bool:
        """The guard ``channel_open``: established, and the rekey interval not reached."""
        return self.channel_standing and not self._rekey_due(self._now)

    def _rekey_due(self, now: float) -> bool:
        config = self.config
        by_count = 0 < config.channel_rekey_delegations <= self._keyed_delegations
        by_time = 0 < config.channel_rekey_seconds <= now - self._keyed_at
        return by_count or by_time

    def _drop_channel(self) -> None:
        """Close the channel engine (close_notify) and count its last traffic."""
        channel, self.channel = self.channel, None
        if channel is None:
            return
        self._account_channel(channel)
        self._channel_base = None
        self._retire(channel)

    def _account_channel(self, channel: DTLSClient) -> None:
        """Add the channel's traffic since the attempt began to this attempt's agent_link."""
        stats = dict(channel.stats)
        base = self._channel_base or {}
        self.agent_link.add_engine({k: v - base.get(k, 0) for k, v in stats.items()})
        self._channel_base = stats

    # ------------------------------------------------------------------ SansIOProtocol
    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Nothing talks to the device's own address: each engine has a child endpoint."""

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        return []

    def next_timer(self) -> float | None:
        earliest: float | None = None
        for engine in (self.channel, self.connection):
            deadline = engine.next_timer() if engine is not None else None
            if deadline is not None and (earliest is None or deadline < earliest):
                earliest = deadline
        for deadline in (self._deadline, self._idle_deadline):
            if deadline is not None and (earliest is None or deadline < earliest):
                earliest = deadline
        return earliest

    def handle_timer(self, now: float) -> None:
        for engine in (self.channel, self.connection):
            deadline = engine.next_timer() if engine is not None else None
            if engine is not None and deadline is not None and deadline <= now:
                engine.handle_timer(now)
        progressed = False
        if self._deadline is not None and now >= self._deadline:
            self._deadline = None
            progressed = self._timed_out()
        if self._idle_deadline is not None and now >= self._idle_deadline:
            self._idle_deadline = None
            if self.channel is not None and not self._busy():
                self._drop_channel()  # idle timeout (§3.1): close_notify to the agent
        self._run(now, progressed)

    def _busy(self) -> bool:
        """A delegation is using the channel."""
        attempt = self.attempt
        return attempt is not None and not attempt.is_final and attempt.state in CHANNEL_STATES

    def next_event(self) -> DeviceEvent | None:
        return self._events.popleft() if self._events else None

    # ------------------------------------------------------------------ HasChildEndpoints
    def child_endpoints(self) -> dict[int, Address]:
        """One endpoint per engine: every channel and every resumption comes from a fresh
        port, so that no association the agent or the server still keeps for an earlier
        attempt takes its datagrams (a server keys associations by address)."""
        return self._endpoints

    def _engines_changed(self) -> None:
        self._endpoints = {
            key: e.remote for key, e in self._engines.items() if e.remote is not None
        }

    def child_receive_datagram(self, key: int, data: bytes, addr: Address, now: float) -> None:
        engine = self._engines.get(key)
        if engine is not None and engine in (self.channel, self.connection):
            engine.receive_datagram(data, addr, now)
            self._run(now)

    def child_datagrams_to_send(self, key: int, now: float) -> list[Datagram]:
        engine = self._engines.get(key)
        if engine is None:
            return []
        out = engine.datagrams_to_send(now)
        if engine is not self.channel and engine is not self.connection and engine.is_closed:
            del self._engines[key]  # its last alert leaves now: the endpoint is done
            self._engines_changed()
        return out

    def child_unreachable(self, key: int, now: float) -> None:
        """ICMP port unreachable: nothing listens where this engine's handshake goes."""
        attempt = self.attempt
        engine = self._engines.get(key)
        if engine is not None and engine is self.channel and not self._busy():
            self._drop_channel()  # the agent of the standing channel is gone (§3.1)
            self._idle_deadline = None
            self.channel_session = None
            return
        if attempt is None or attempt.is_final or engine is None:
            return
        if engine is self.channel and attempt.state in CHANNEL_STATES - {
            DeviceState.CONNECTING_AGENT
        }:
            self._drop_channel()
            self.channel_session = None
            attempt.channel_failed(
                f"agent channel: port unreachable: {_where(self.config.agent)} "
                "(the agent is gone; ICMP port unreachable)"
            )
        elif engine is self.channel and attempt.state == DeviceState.CONNECTING_AGENT:
            channel, self.channel = engine, None
            self.agent_link.add_engine(channel.stats)
            what = (
                "stopped answering"
                if channel.stats["datagrams_received"]
                else ("nothing listens there")
            )
            host, port = self.config.agent
            attempt.channel_failed(
                f"cannot open the channel to the agent at {_where(self.config.agent)}: "
                f"port unreachable: {host}:{port} ({what}; ICMP port unreachable)"
            )
            self._retire(channel)
        elif engine is self.connection and attempt.state == DeviceState.RESUMING:
            self._resumption_failed(engine, "port unreachable")
        else:
            return
        self._run(now, progressed=True)

    def key_of(self, engine: DTLSClient | None) -> int | None:
        """The child endpoint key of ``engine`` (the host's socket for it)."""
        for key, candidate in self._engines.items():
            if candidate is engine:
                return key
        return None

    def connections(self) -> list[tuple[Connection, Address, int | None]]:
        """The live engines and their peers (for the simulator's observers)."""
        return [(e, e.remote, key) for key, e in self._engines.items() if e.remote is not None]

    # ------------------------------------------------------------------ inside
    def _run(self, now: float, progressed: bool = False) -> None:
        """Feed the engines' events to the machine and carry out what it asks, until quiet."""
        self._now = now
        attempt = self.attempt
        if attempt is None:
            return
        for _ in range(1_000):
            moved = self._channel_events(attempt)
            moved |= self._connection_events(attempt)
            moved |= self._execute(attempt, now)
            if not moved:
                break
            progressed = True
        if progressed:
            waiting = not attempt.is_final and (
                attempt.state in CHANNEL_STATES or attempt.state == DeviceState.RESUMING
            )
            self._deadline = now + self.config.timeout if waiting else None
        self._request_ids = attempt.next_request_id
        self._report_end(attempt)
        if self.channel is not None and not self._busy():
            if self._idle_deadline is None and self.channel.is_established:
                self._idle_deadline = now + self.config.channel_idle_timeout
        else:
            self._idle_deadline = None

    def _report_end(self, attempt: DelegationAttempt) -> None:
        if self._reported or not (self.connected or attempt.is_final):
            return
        self._reported = True
        self.context = attempt.context
        if self.channel is not None:
            self._account_channel(self.channel)
        if self.connected and attempt.context is not None:
            self._events.append(Connected(attempt.context, attempt.delegations))
        else:
            reason = attempt.error or f"delegation ended in state {attempt.state}"
            self._events.append(AttemptFailed(reason))

    def _channel_events(self, attempt: DelegationAttempt) -> bool:
        channel = self.channel
        if channel is None:
            return False
        moved = False
        while (event := channel.next_event()) is not None:
            if channel is not self.channel:
                continue
            if isinstance(event, ConnectionTerminated) and not self._busy():
                self._drop_channel()  # the agent closed the standing channel
                self._idle_deadline = None
                continue
            if attempt.is_final:
                continue
            if (
                isinstance(event, HandshakeCompleted)
                and attempt.state == DeviceState.CONNECTING_AGENT
            ):
                self._channel_keyed(event)
                attempt.channel_up()
            elif isinstance(event, ApplicationDataReceived):
                message = attempt.receive_bytes(event.data)
                if message is not None:
                    self._trace_message("received", message)
                    if self._message_events:
                        self._events.append(MessageReceived(message))
            elif isinstance(event, ConnectionTerminated) and attempt.state in CHANNEL_STATES:
                self._drop_channel()
                if event.by_peer or attempt.state != DeviceState.CONNECTING_AGENT:
                    self.channel_session = None  # the agent may have forgotten it
                if attempt.state == DeviceState.CONNECTING_AGENT:
                    attempt.channel_failed(self._channel_failure(event))
                else:
                    attempt.channel_failed(f"agent channel: {describe_end(event)}")
            else:
                continue
            moved = True
        return moved

    def _connection_events(self, attempt: DelegationAttempt) -> bool:
        connection = self.connection
        if connection is None:
            return False
        moved = False
        while (event := connection.next_event()) is not None:
            if isinstance(event, ApplicationDataReceived):
                self._events.append(DataReceived(event.data))
            elif connection is not self.connection:
                continue
            elif attempt.state == DeviceState.RESUMING and isinstance(event, HandshakeCompleted):
                attempt.resumed()
                moved = True
            elif attempt.state == DeviceState.RESUMING and isinstance(event, ConnectionTerminated):
                self._resumption_failed(connection, event.reason)
                moved = True
            elif isinstance(event, ConnectionTerminated):
                self._events.append(ConnectionClosed(event))
        return moved

    def _resumption_failed(self, connection: DTLSClient, reason: str) -> None:
        assert self.attempt is not None
        self._server_done.add_engine(connection.stats)
        self._events.append(ResumptionFailed(reason))
        self._retire(connection)
        self.connection = None
        self.attempt.resumption_refused()

    def _timed_out(self) -> bool:
        """The device waited ``config.timeout`` for the agent or the server."""
        attempt = self.attempt
        if attempt is None or attempt.is_final:
            return False
        if attempt.state == DeviceState.CONNECTING_AGENT:
            attempt.channel_failed(
                f"no answer from the agent at {_where(self.config.agent)} "
                f"after {self.config.timeout:g} s"
            )
        elif attempt.state in CHANNEL_STATES:
            attempt.channel_failed("agent channel: no application data received in time")
        elif attempt.state == DeviceState.RESUMING and self.connection is not None:
            self._resumption_failed(self.connection, RESUMPTION_TIMED_OUT)
        else:
            return False
        return True

    def _execute(self, attempt: DelegationAttempt, now: float) -> bool:
        moved = False
        while attempt.outbox or attempt.commands:
            moved = True
            outbox, attempt.outbox = attempt.outbox, []
            for message in outbox:  # a DelegationError goes before the channel closes
                self._send_message(message)
            while attempt.commands:
                command = attempt.commands.popleft()
                if command is Command.OPEN_CHANNEL:
                    self._open_channel(now)
                elif command is Command.CLOSE_CHANNEL and self.channel is not None:
                    self._drop_channel()
                elif command is Command.RELEASE_CHANNEL and self.channel is not None:
                    self._keyed_delegations += 1
                    if self.config.channel_idle_timeout <= 0 or self._rekey_due(now):
                        self._drop_channel()
                elif command is Command.START_RESUMPTION:
                    self._start_resumption(attempt, now)
                elif command is Command.CLOSE_CONNECTION and self.connection is not None:
                    self._retire(self.connection)
        return moved

    def _send_message(self, message: DelegationMessage) -> None:
        channel = self.channel
        if channel is None or not channel.is_established:
            return
        self._trace_message("sent", message)  # stamped before it can be answered
        if self._message_events:
            self._events.append(MessageSent(message))
        channel.send_application_data(encode_message(message))
        if isinstance(message, DelegationRequest | SignResponse):
            self.agent_link.round_trips += 1

    def _retire(self, engine: DTLSClient) -> None:
        """Close ``engine``; its close_notify leaves with its endpoint's next datagrams."""
        if not engine.is_closed:
            engine.close()

    def _adopt(self, engine: DTLSClient, now: float) -> DTLSClient:
        """Give ``engine`` a child endpoint of its own and start its handshake."""
        self._engines[next(self._keys)] = engine
        self._engines_changed()
        engine.connect(now)
        return engine

    def adopt_channel_state(self, earlier: DeviceProtocol) -> None:
        """Carry a closed channel's session (for an abbreviated handshake), its rekey
        interval and its counters over from ``earlier`` (a new pump after an idle close)."""
        self.channel_session = earlier.channel_session
        self.channel_full_handshakes = earlier.channel_full_handshakes
        self.channel_abbreviated_handshakes = earlier.channel_abbreviated_handshakes
        self._keyed_at = earlier._keyed_at
        self._keyed_delegations = earlier._keyed_delegations

    def _channel_keyed(self, done: HandshakeCompleted) -> None:
        """The channel handshake completed: full (new keys, new rekey interval) or
        abbreviated (the keys of the standing channel's session)."""
        self.channel_session = done.session
        if done.resumed:
            self.channel_abbreviated_handshakes += 1
        else:
            self.channel_full_handshakes += 1
            self._keyed_at = self._now
            self._keyed_delegations = 0

    def _open_channel(self, now: float) -> None:
        if self.channel is not None:
            self._drop_channel()
        session = self.channel_session
        if session is not None and (
            self._rekey_due(now) or session.expired(self.config.wall_clock())
        ):
            session = self.channel_session = None  # rekey: a full handshake, fresh keys
        self.channel = DTLSClient(
            ClientConfig(
                cipher_suites=device_channel_suites(self.config.channel),
                psk_identity=self.config.psk_identity,
                psk=self.config.psk,
                session=session,
                mtu=CHANNEL_MTU,
                timers=self.config.timers,
                require_extended_master_secret=True,
                wall_clock=self.config.wall_clock,
                randomness=self.config.randomness,
            ),
            tracer=self._trace_link("device-agent"),
            remote=self.config.agent,
        )
        self._adopt(self.channel, now)

    def _start_resumption(self, attempt: DelegationAttempt, now: float) -> None:
        context = attempt.context
        assert context is not None
        if self.connection is not None:
            self._retire(self.connection)
        self.connection = DTLSClient(
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
            remote=self.server_address,
        )
        self._adopt(self.connection, now)

    def _channel_failure(self, ended: ConnectionTerminated) -> str:
        """Name the cause of a failed channel handshake (RFC 4279 §2 alerts)."""
        where = _where(self.config.agent)
        identity = self.config.psk_identity.decode("utf-8", "replace")
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
        return f"cannot open the channel to the agent at {where}: {describe_end(ended)}"

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
