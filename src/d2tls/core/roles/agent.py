"""The D2TLS security agent (paper §4.1), driven by the ``agent`` machine of ``spec/d2tls.yaml``.

The agent never has a device private key, structurally: ``AgentConfig`` has no field for one,
the delegation messages cannot carry one (spec/delegation.md), and the agent's DTLS client is
always built with ``private_key=None``, so the engine can only *ask* for a CertificateVerify
signature (``SignatureRequested``), which the agent forwards to the device.

Wiping: the session's master secret lives in ``bytearray`` objects that the agent and its
engine overwrite after the handover. Python cannot guarantee there is no other copy (immutable
``bytes`` made while deriving keys or encoding CBOR are freed, not zeroed), so the wipe removes
the agent's working copies but is not a guarantee against memory forensics.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeAlias

from cryptography import x509
from cryptography.x509.verification import Store

from d2tls.core.clock import Clock, wall_time
from d2tls.core.delegation.chain_cache import AgentChainCache
from d2tls.core.delegation.channel_security import Channel, agent_channel_suites
from d2tls.core.delegation.compact import client_certificate_body, compact_transcript
from d2tls.core.delegation.messages import (
    NO_REQUEST_ID,
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
from d2tls.core.delegation.policy import AgentPolicy
from d2tls.core.delegation.twinpeaks_identity import ServerKeys, twinpeaks_client_settings
from d2tls.core.dtls.client import DTLSClient
from d2tls.core.dtls.config import ClientConfig, KeyLogCallback, ServerConfig, TimerConfig
from d2tls.core.dtls.connection import Connection, Tracer
from d2tls.core.dtls.constants import ECDHE_SUITES, AlertDescription, CipherSuite
from d2tls.core.dtls.events import (
    ApplicationDataReceived,
    ConnectionTerminated,
    Event,
    HandshakeCompleted,
    SignatureRequested,
)
from d2tls.core.dtls.server import DTLSServer
from d2tls.core.dtls.session import Session
from d2tls.core.errors import ProtocolError, SpecError
from d2tls.core.model.machine import Handlers, SpecMachine, expecting, ignoring
from d2tls.core.model.spec import load_spec
from d2tls.core.model.states import AgentState, ClientState
from d2tls.core.randomness import SYSTEM, Randomness
from d2tls.core.roles.device import CHANNEL_MTU, MESSAGE_NAMES
from d2tls.core.sansio import Address, Datagram
from d2tls.core.trace import tagged

#: Context lifetime the agent announces when the server gives none (paper §6.5: 6-24 h).
DEFAULT_CONTEXT_LIFETIME = 6 * 3600
#: How many delegations one channel may carry; its used request_ids are remembered (§6).
MAX_REQUESTS_PER_CHANNEL = 4096
#: Alerts about a certificate (RFC 5246 §7.2.2): who sent one says whose certificate failed.
CERTIFICATE_ALERTS: frozenset[AlertDescription] = frozenset(
    {
        AlertDescription.BAD_CERTIFICATE,
        AlertDescription.UNSUPPORTED_CERTIFICATE,
        AlertDescription.CERTIFICATE_REVOKED,
        AlertDescription.CERTIFICATE_EXPIRED,
        AlertDescription.CERTIFICATE_UNKNOWN,
        AlertDescription.UNKNOWN_CA,
        AlertDescription.ACCESS_DENIED,
    }
)
log = logging.getLogger("d2tls.agent")
#: Builds the machine of one delegation: (config, the channel's PSK identity, the request_ids
#: already used on the channel) -> session.
SessionFactory = Callable[["AgentConfig", bytes | None, set[int]], "AgentSession"]


@dataclass
class AgentConfig:
    """Agent settings. There is deliberately no field for any device private key."""

    psk_keys: dict[bytes, bytes]
    trust_store: Store
    cipher_suites: tuple[CipherSuite, ...] = (
        CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,
        CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    )
    ocsp_url: str | None = None
    context_lifetime: int = DEFAULT_CONTEXT_LIFETIME
    mtu: int = 1400
    timers: TimerConfig | None = None
    keylog: KeyLogCallback | None = None
    tracer: Tracer | None = None
    handshake_timeout: float = 30.0
    #: Who may delegate, with which certificate, to which servers (spec/delegation.md §9.1).
    #: ``d2tls agent`` always sets one (default: serve nothing). None, for in-process tests
    #: and simulations only, serves any server for any identity of ``psk_keys``.
    policy: AgentPolicy | None = None
    #: Association limits of the agent's DTLS server (see ServerConfig).
    max_connections: int = 10_000
    max_half_open: int = 1_000
    #: Wall clock (certificate validity, sessions, trace stamps) and randomness of the agent's
    #: engines: docs/architecture.md, "Time and randomness".
    wall_clock: Clock = wall_time
    randomness: Randomness = SYSTEM
    #: Delegation channel protection: ``psk`` accepts plain PSK or ECDHE-PSK, ``ecdhe-psk``
    #: requires ECDHE-PSK (d2tls.core.delegation.channel_security).
    channel: Channel = "psk"
    #: TwinPeaks keys of servers, looked up by the host (spec/twinpeaks.md §9.5): a server
    #: with one is authenticated by that raw public key instead of a chain and OCSP.
    server_keys: ServerKeys | None = None
    #: Device chains by PSK identity, so that a device sends its chain once and then its
    #: certificate_chain_hash (spec/delegation.md §5.2); bounded
    #: (d2tls.core.delegation.chain_cache).
    chain_cache: AgentChainCache = field(default_factory=AgentChainCache)


@dataclass(frozen=True)
class StartHandshake:
    """Open the agent's DTLS client (already built, not yet connected) to the server."""

    request: DelegationRequest
    client: DTLSClient


@dataclass(frozen=True)
class CheckStatus:
    """Ask the OCSP responder about the server's certificate; answer with status_result."""

    certificate: x509.Certificate


Need: TypeAlias = StartHandshake | CheckStatus


def describe_server_failure(event: ConnectionTerminated) -> tuple[DelegationErrorCode, str]:
    """Which side refused what, from how the agent's handshake with the server ended.

    A certificate alert *sent by the agent* means the agent refused the server's certificate
    (SERVER_CERTIFICATE_INVALID); one *received from the server* means the server refused the
    device's certificate (HANDSHAKE_FAILED, naming the alert): RFC 5246 §7.2.2.
    """
    alert = event.alert
    name = alert.name.lower() if alert is not None else None
    if alert in CERTIFICATE_ALERTS and not event.by_peer:
        return (
            DelegationErrorCode.SERVER_CERTIFICATE_INVALID,
            f"the agent refused the server's certificate: {event.reason}",
        )
    if alert in CERTIFICATE_ALERTS:
        return (
            DelegationErrorCode.HANDSHAKE_FAILED,
            f"the server refused the device's certificate (alert {name} from the server)",
        )
    if event.by_peer:
        return (
            DelegationErrorCode.HANDSHAKE_FAILED,
            f"the server ended the handshake with alert {name}",
        )
    return DelegationErrorCode.HANDSHAKE_FAILED, f"handshake with the server failed: {event.reason}"


class AgentSession:
    r"""One delegation on behalf of one device (machine role ``agent``), without IO.

    It produces delegation messages for the device (:attr:`outbox`) and ``Need`` items
    (start the handshake with the server, check the server certificate's status) that its
    owner, :class:`AgentProtocol`, carries out; the owner feeds back the events of the
    agent's DTLS client (:meth:`on_engine_event`), the status (:meth:`status_result`) and the
    end of the channel (:meth:`channel_closed`).
    """

    ROLE = "agent"

    def __init__(
        self,
        config: AgentConfig,
        identity: bytes | None = None,
        used_request_ids: set[int] | None = None,
    ) -> None:
        #: The channel's PSK identity, and the request_ids already used on the channel.
        self.identity = identity
        self._used_request_ids = used_request_ids if used_request_ids is not None else set()
        #: The request_id of the message being answered with an error, when it was readable.
        self._offending_id: int | None = None
        self.config = config
        #: Delegation messages for the device, and what the owner must do, in order.
        self.outbox: list[DelegationMessage] = []
        self.needs: deque[Need] = deque()
        self.request: DelegationRequest | None = None
        self.client: DTLSClient | None = None
        self.session: Session | None = None
        self.error_code = DelegationErrorCode.INTERNAL
        self.error = ""
        self.log: list[dict[str, Any]] = []
        self.counted = False
        self._pending_signature: bytes | None = None
        #: The request as accepted: with the chain the certificate_chain_hash named (§6).
        self._resolved: DelegationRequest | None = None
        self._signature_request: SignatureRequested | None = None
        #: The device refused to sign the server's handshake (spec/delegation.md §6).
        self._signing_refused = False
        self._table = self._handlers()
        self._driver: SpecMachine[AgentState, DelegationMessage | None] = SpecMachine(
            load_spec("d2tls").role(self.ROLE), AgentState, self._table
        )

    def _handlers(self) -> Handlers[DelegationMessage | None]:
        """The ``agent`` machine's guards, actions and builders (spec/d2tls.yaml)."""
        return Handlers(
            guards={
                "request_acceptable": expecting(DelegationRequest, self._request_acceptable),
                "session_resumable": ignoring(self._session_resumable),
                "ocsp_configured": ignoring(self._ocsp_configured),
            },
            actions={
                "start_server_handshake": expecting(
                    DelegationRequest, lambda r: self._start_server_handshake(self._resolved or r)
                ),
                "reject_request": expecting(
                    DelegationRequest, lambda r: self._reject_request(self._resolved or r)
                ),
                "start_status_check": ignoring(self._start_status_check),
                "provide_signature": expecting(SignResponse, self._provide_signature),
                "close_server_connection": ignoring(self._close_server_connection),
                "report_unresumable": ignoring(self._report_unresumable),
                "wipe_context": ignoring(self._wipe_context),
                "abort_server_handshake": ignoring(self._abort_server_handshake),
            },
            builders={
                "SignRequest": self._build_sign_request,
                "SessionContext": self._build_session_context,
                "Wiped": self._build_wiped,
                "DelegationError": self._build_delegation_error,
            },
            hold=self._hold,
            emit=self._emit_flight,
        )

    @property
    def state(self) -> AgentState:
        """The current state (``spec/d2tls.yaml``, role ``agent``)."""
        return self._driver.state

    # ------------------------------------------------------------------ inputs
    def receive_bytes(self, data: bytes) -> None:
        try:
            message = decode_message(data)
        except DelegationProtocolError as exc:
            self._offending_id = NO_REQUEST_ID if exc.request_id is None else exc.request_id
            self._abort(exc.code, exc.reason)
            return
        self.receive(message)

    def receive(self, message: DelegationMessage) -> None:
        if self._driver.is_final():
            return
        self._trace("received", type(message).__name__)
        self._offending_id = message.request_id
        if self.request is not None and message.request_id != self.request.request_id:
            self._abort(DelegationErrorCode.UNEXPECTED_MESSAGE, "message for an unknown request")
            return
        if isinstance(message, DelegationError):
            self.error = f"device: {message.code.name.lower()}: {message.reason}"
            self._signing_refused = message.code is DelegationErrorCode.SIGNING_REFUSED
        try:
            self._driver.fire(f"recv_{MESSAGE_NAMES[type(message)]}", message)
        except ProtocolError as exc:
            self._abort(DelegationErrorCode.UNEXPECTED_MESSAGE, exc.reason)

    def on_engine_event(self, event: Event) -> None:
        """Events of the agent's DTLS client towards the server."""
        if isinstance(event, SignatureRequested):
            self._signature_request = event
            self._fire("signature_needed")
        elif isinstance(event, ConnectionTerminated) and event.error and not self.is_final:
            self.error_code, self.error = describe_server_failure(event)
            self._fire("server_failed")
        elif isinstance(event, HandshakeCompleted):
            self._fire("server_handshake_done")
            if self.state == AgentState.HANDING_OVER:
                self._fire("context_sent")

    def server_unreachable(self, reason: str) -> None:
        """The server's address could not be used (no such name, ICMP port unreachable)."""
        self.error_code = DelegationErrorCode.SERVER_UNREACHABLE
        self.error = f"cannot reach the server: {reason}"
        self._fire("server_failed")

    def handshake_timed_out(self) -> None:
        self.error_code = DelegationErrorCode.TIMEOUT
        self.error = "the handshake with the server timed out"
        self._fire("server_failed")

    def status_result(self, good: bool, reason: str) -> None:
        if not good:
            self.error_code = DelegationErrorCode.SERVER_CERTIFICATE_REVOKED
            self.error = f"server certificate status: {reason}"
        self._fire("status_good" if good else "status_bad")

    def channel_closed(self) -> None:
        if not self._driver.is_final():
            self.error = self.error or "the channel to the device closed"
        self._fire("channel_closed")

    def _abort(self, code: DelegationErrorCode, reason: str) -> None:
        self.error_code = code
        self.error = reason
        self._fire("abort")

    def _fire(self, trigger: str) -> None:
        if self._driver.is_final():
            return
        try:
            self._driver.fire_local(trigger, None)
        except ProtocolError as exc:  # the event is not expected now: a protocol violation
            if trigger != "abort":
                self._abort(DelegationErrorCode.INTERNAL, exc.reason)

    def abandon(self) -> None:
        """The agent shuts down: close the handshake with the server and wipe the session
        (whatever the state; the machine is not consulted)."""
        self._abort_server_handshake()
        self._wipe_context()

    @property
    def is_final(self) -> bool:
        return self._driver.is_final()

    # ------------------------------------------------------------------ guards
    def _request_acceptable(self, request: DelegationRequest) -> bool:
        """spec/delegation.md §6 and §9.1: a fresh request_id, then the agent's policy."""
        request_id = request.request_id
        if request_id in self._used_request_ids:
            self.error_code = DelegationErrorCode.UNEXPECTED_MESSAGE
            self.error = f"request_id {request_id} was already used on this channel"
            return False
        if len(self._used_request_ids) >= MAX_REQUESTS_PER_CHANNEL:
            self.error_code = DelegationErrorCode.BUSY
            self.error = (
                f"this channel carried {MAX_REQUESTS_PER_CHANNEL} delegations: open a new one"
            )
            return False
        self._used_request_ids.add(request_id)
        if request.certificate_chain_hash is not None:
            chain = (
                self.config.chain_cache.get(self.identity, request.certificate_chain_hash)
                if self.identity is not None
                else None
            )
            if chain is None:
                self.error_code = DelegationErrorCode.UNKNOWN_CHAIN
                self.error = "no certificate chain with this certificate_chain_hash: send it"
                return False
            # From here on exactly as if the chain had been sent: the policy checks it.
            request = replace(request, certificate_chain=chain, certificate_chain_hash=None)
            self._resolved = request
        policy = self.config.policy
        refusal = policy.refusal(self.identity, request) if policy is not None else None
        if refusal is not None:
            self.error_code, self.error = DelegationErrorCode.UNSUPPORTED, f"refused: {refusal}"
            return False
        if not any(
            s in [int(c) for c in self._usable_suites(request)] for s in request.cipher_suites
        ):
            self.error_code, self.error = DelegationErrorCode.UNSUPPORTED, "no usable cipher suite"
            return False
        if request.mode is DelegationMode.BOUND and request.client_random is None:
            self.error_code, self.error = DelegationErrorCode.MALFORMED, "bound mode needs a random"
            return False
        if request.certificate_chain and self.identity is not None:
            self.config.chain_cache.put(self.identity, request.certificate_chain)
        return True

    def _session_resumable(self) -> bool:
        """RFC 5246 §7.4.1.3: an empty session ID means the server will not resume."""
        session = self.client.session if self.client is not None else None
        return session is not None and len(session.session_id) > 0

    def _report_unresumable(self) -> None:
        self.error_code = DelegationErrorCode.UNSUPPORTED
        self.error = "the server gave no session ID: its sessions cannot be resumed"

    def _ocsp_configured(self) -> bool:
        """OCSP is for a certificate: not for a TwinPeaks raw key (spec/twinpeaks.md §9.5)."""
        raw = self.client is not None and self.client.peer_raw_public_key is not None
        return self.config.ocsp_url is not None and not raw

    def _usable_suites(self, request: DelegationRequest) -> tuple[CipherSuite, ...]:
        return tuple(
            s
            for s in self.config.cipher_suites
            if int(s) in request.cipher_suites and s in ECDHE_SUITES
        )

    # ------------------------------------------------------------------ actions
    def _start_server_handshake(self, request: DelegationRequest) -> None:
        self.request = request
        keys = self.config.server_keys
        resolved = keys(request.server_name) if keys is not None else None
        client = DTLSClient(
            ClientConfig(
                cipher_suites=self._usable_suites(request),
                trust_store=self.config.trust_store,
                server_name=request.server_name,
                certificate_chain=request.certificate_chain,
                client_raw_public_key=request.raw_public_key,  # RFC 7250, e.g. TwinPeaks
                private_key=None,  # structural: the agent can only ask the device to sign
                client_random=request.client_random,
                mtu=self.config.mtu,
                timers=self.config.timers or TimerConfig(),
                keylog=self.config.keylog,
                wall_clock=self.config.wall_clock,
                randomness=self.config.randomness,
                **twinpeaks_client_settings(request.server_name, resolved),
            ),
            tracer=tagged(self.config.tracer, party="agent", link="agent-server"),
        )
        self.client = client
        self.needs.append(StartHandshake(request, client))

    def _reject_request(self, request: DelegationRequest) -> None:
        self.request = request

    def _start_status_check(self) -> None:
        assert self.client is not None
        chain = self.client.peer_certificates
        self.needs.append(CheckStatus(x509.load_der_x509_certificate(chain[0])))

    def _build_sign_request(self) -> None:
        request, asked = self.request, self._signature_request
        assert request is not None and asked is not None
        if request.mode is not DelegationMode.BOUND:
            self._send(SignRequest(request.request_id, asked.digest))
            return
        # The compact form leaves out the device's own Certificate (spec/delegation.md §6).
        mine = client_certificate_body(request.certificate_chain, request.raw_public_key)
        compact = compact_transcript(asked.transcript, mine, request.server_certificate_hash)
        if compact is None:
            self._send(SignRequest(request.request_id, asked.digest, asked.transcript))
        else:
            self._send(SignRequest(request.request_id, asked.digest, compact_transcript=compact))

    def _provide_signature(self, response: SignResponse) -> None:
        assert self.client is not None
        self._pending_signature = response.signature

    def _close_server_connection(self) -> None:
        assert self.client is not None
        self.session = self.client.session
        self.client.close()

    def _build_session_context(self) -> None:
        request, session = self.request, self.session
        assert request is not None and session is not None
        raw = self.client.peer_raw_public_key if self.client is not None else None
        self._send(
            SessionContext(
                request_id=request.request_id,
                session_id=session.session_id,
                master_secret=bytes(session.master_secret),
                cipher_suite=int(session.cipher_suite),
                extended_master_secret=session.extended_master_secret,
                server_certificates=self._server_certificates_for_device(raw),
                lifetime=self.config.context_lifetime,
                ocsp_status=1 if self._ocsp_configured() else 0,
            )
        )

    def _server_certificates_for_device(self, raw: bytes | None) -> tuple[bytes, ...]:
        """spec/delegation.md §5.2: none in bound mode (the device saw them in the transcript
        it signed); in blind mode only a TwinPeaks server's raw key (RFC 7250, 91 bytes, which
        the device reports), never a chain the device would not verify."""
        request = self.request
        assert request is not None
        if request.mode is DelegationMode.BOUND or raw is None:
            return ()
        return (raw,)

    def _wipe_context(self) -> None:
        """Overwrite the agent's copy of the session (best effort, see module docstring)."""
        if self.session is not None:
            self.session.wipe()
        if self.client is not None and self.client.session is not None:
            self.client.session.wipe()
        self.session = None

    def _build_wiped(self) -> None:
        assert self.request is not None
        self._send(Wiped(self.request.request_id))

    def _abort_server_handshake(self) -> None:
        if self.client is not None and not self.client.is_closed:
            if self._signing_refused:
                # The server's certificate verified, but the device's policy refused it:
                # access_denied (RFC 5246 §7.2.2), not a silent close_notify.
                log.warning(
                    "delegation for %s: %s; handshake with the server ended (access_denied)",
                    self._identity_text(),
                    self.error,
                )
                self.client.abort(AlertDescription.ACCESS_DENIED, self.error)
            else:
                self.client.close()

    def _build_delegation_error(self) -> None:
        """The request_id of the message answered if it was readable (§6), else of the open
        request (an error of the agent's own), else 0."""
        request_id = self._offending_id
        if request_id is None:
            request_id = self.request.request_id if self.request is not None else NO_REQUEST_ID
        # UNKNOWN_CHAIN is routine (the device resends its chain): not worth a warning.
        level = (
            logging.INFO
            if self.error_code is DelegationErrorCode.UNKNOWN_CHAIN
            else logging.WARNING
        )
        log.log(
            level,
            "delegation %d refused or failed for %s: %s: %s",
            request_id,
            self._identity_text(),
            self.error_code.name.lower(),
            self.error,
        )
        self._send(DelegationError(request_id, self.error_code, self.error[:256]))

    def _send(self, message: DelegationMessage) -> None:
        self.outbox.append(message)

    def _identity_text(self) -> str:
        if self.identity is None:
            return "an unknown identity"
        return f"PSK identity {self.identity.decode('utf-8', 'replace')!r}"

    def _emit_flight(self, messages: tuple[str, ...]) -> None:
        for name in messages:
            self._trace("sent", name)
            self._table.builders[name]()

    def _hold(self, messages: tuple[str, ...]) -> None:
        raise SpecError(f"role {self.ROLE}: the agent builds no message ahead of its flight")

    def _trace(self, direction: str, message: str) -> None:
        entry = {
            "event": f"message_{direction}",
            "message": message,
            "party": "agent",
            "link": "agent-device",
            "layer": "delegation",
            "wall": self.config.wall_clock(),
        }
        self.log.append(entry)
        if self.config.tracer is not None:
            self.config.tracer(entry)

    def take_signature(self) -> bytes | None:
        """The device's signature, once, for the owner to hand to the DTLS client."""
        signature, self._pending_signature = self._pending_signature, None
        return signature


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class StatusCheckRequested:
    """Ask the OCSP responder about ``certificate``; answer with
    :meth:`AgentProtocol.status_checked` (``ticket``)."""

    ticket: int
    certificate: x509.Certificate


@dataclass(frozen=True)
class ServerLookupRequested:
    """Resolve the server name a device asked for; answer with
    :meth:`AgentProtocol.server_resolved` (``ticket``)."""

    ticket: int
    host: str
    port: int


@dataclass(frozen=True)
class DelegationEnded:
    """A delegation ended: handed over and wiped (``ok``), or failed."""

    peer: Address
    session: AgentSession
    ok: bool
    #: Not a failure: the device named a chain the agent does not hold (UNKNOWN_CHAIN, a
    #: chain-cache miss); it sends the full chain in its next request (spec/delegation.md §5.2).
    chain_miss: bool = False


AgentEvent: TypeAlias = StatusCheckRequested | ServerLookupRequested | DelegationEnded


@dataclass
class _Child:
    """One handshake of the agent with a server, on a child endpoint of its own."""

    session: AgentSession
    client: DTLSClient
    deadline: float | None = None
    connected: bool = False


def _ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- the role


class AgentProtocol:
    """The security agent as one sans-IO role.

    It owns the DTLS-PSK server of the devices' channels (its own address) and, per
    delegation, the DTLS client of its handshake with the server, each on a child endpoint
    (:class:`~d2tls.core.sansio.HasChildEndpoints`) so that every delegation is its own
    association at the server. Each delegation is an :class:`AgentSession` (the machine);
    ``session_factory`` builds them (the attacker models substitute a compromised one).
    The host answers :class:`StatusCheckRequested` and :class:`ServerLookupRequested`.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        session_factory: SessionFactory | None = None,
        keep_history: bool = False,
    ) -> None:
        self.config = config
        self._factory: SessionFactory = session_factory or AgentSession
        self.server = DTLSServer(
            ServerConfig(
                cipher_suites=agent_channel_suites(config.channel),
                psk_keys=dict(config.psk_keys),
                mtu=CHANNEL_MTU,
                timers=config.timers or TimerConfig(),
                max_connections=config.max_connections,
                max_half_open=config.max_half_open,
                wall_clock=config.wall_clock,
                randomness=config.randomness,
            )
        )
        #: The current delegation on each channel (by the device's address).
        self.sessions: dict[Address, AgentSession] = {}
        #: With ``keep_history``: every delegation, in order (simulations and tests).
        self.history: list[AgentSession] = []
        self._keep_history = keep_history
        #: Per channel identity (PSK identity, channel session ID): request_ids already used
        #: (spec/delegation.md §3.1, §6). An abbreviated channel handshake (the device resuming
        #: its standing channel from another port) continues the set of the session it
        #: resumes; a full one starts a new set. Oldest entries go beyond max_connections.
        self._used_request_ids: dict[tuple[bytes, bytes], set[int]] = {}
        #: The channel identity of each live channel (by the device's address).
        self._channel_of: dict[Address, tuple[bytes, bytes]] = {}
        self._children: dict[int, _Child] = {}
        self._child_of: dict[int, int] = {}  # id(session) -> child key
        self._peer_of: dict[int, Address] = {}  # id(session) -> channel peer
        self._tickets: dict[int, AgentSession] = {}
        self._keys = itertools.count(1)
        self._events: deque[AgentEvent] = deque()
        self.completed = 0
        self.failed = 0
        #: UNKNOWN_CHAIN answers: chain-cache misses, counted apart from failures.
        self.chain_misses = 0

    # ------------------------------------------------------------------ the host's answers
    def status_checked(self, ticket: int, good: bool, reason: str, now: float) -> None:
        """The answer to :class:`StatusCheckRequested` ``ticket``."""
        session = self._tickets.pop(ticket, None)
        if session is not None:
            session.status_result(good, reason)
            self._after(session, now)

    def server_resolved(
        self, ticket: int, address: Address | None, reason: str, now: float
    ) -> None:
        """The answer to :class:`ServerLookupRequested` ``ticket`` (None: ``reason``)."""
        session = self._tickets.pop(ticket, None)
        key = self._child_of.get(id(session)) if session is not None else None
        child = self._children.get(key) if key is not None else None
        if session is None or child is None:
            return
        if address is None:
            session.server_unreachable(reason)
        else:
            self._connect(child, address, now)
        self._after(session, now)

    def close(self, now: float) -> None:
        """Abort every delegation (wiping its secrets) and close every channel."""
        for session in list(self.sessions.values()):
            session.abandon()
        self.server.close_all()

    # ------------------------------------------------------------------ SansIOProtocol
    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        self.server.receive_datagram(data, addr, now)
        self._channel_events(now)

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        return self.server.datagrams_to_send(now)

    def next_timer(self) -> float | None:
        timers = [t for t in (self.server.next_timer(),) if t is not None]
        for child in self._children.values():
            if (deadline := child.client.next_timer()) is not None:
                timers.append(deadline)
            if child.deadline is not None:
                timers.append(child.deadline)
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        deadline = self.server.next_timer()
        if deadline is not None and deadline <= now:
            self.server.handle_timer(now)
        self._channel_events(now)
        for child in list(self._children.values()):
            deadline = child.client.next_timer()
            if deadline is not None and deadline <= now:
                child.client.handle_timer(now)
            if child.deadline is not None and now >= child.deadline:
                child.deadline = None
                if not child.session.is_final:
                    child.session.handshake_timed_out()
            self._client_events(child, now)

    def next_event(self) -> AgentEvent | None:
        return self._events.popleft() if self._events else None

    # ------------------------------------------------------------------ HasChildEndpoints
    def child_endpoints(self) -> dict[int, Address]:
        return {
            key: child.client.remote
            for key, child in self._children.items()
            if child.client.remote is not None
        }

    def child_receive_datagram(self, key: int, data: bytes, addr: Address, now: float) -> None:
        child = self._children.get(key)
        if child is not None:
            child.client.receive_datagram(data, addr, now)
            self._client_events(child, now)

    def child_datagrams_to_send(self, key: int, now: float) -> list[Datagram]:
        child = self._children.get(key)
        if child is None:
            return []
        out = child.client.datagrams_to_send(now)
        if child.client.is_closed:  # its last alert leaves now: the endpoint is done
            self._children.pop(key)
            self._child_of.pop(id(child.session), None)
        return out

    def child_unreachable(self, key: int, now: float) -> None:
        child = self._children.get(key)
        if child is not None and not child.session.is_final and not child.client.is_established:
            child.deadline = None
            child.session.server_unreachable("port unreachable (ICMP)")
            self._after(child.session, now)

    def connections(self) -> list[tuple[Connection, Address, int | None]]:
        """The channels and the handshakes with servers (for the simulator's observers)."""
        out: list[tuple[Connection, Address, int | None]] = [
            (c, c.peer, None) for c in self.server.connections() if c.peer is not None
        ]
        for key, child in self._children.items():
            if child.client.remote is not None:
                out.append((child.client, child.client.remote, key))
        return out

    # ------------------------------------------------------------------ inside
    def _channel_events(self, now: float) -> None:
        while (event := self.server.next_event()) is not None:
            peer = event.peer
            if peer is None:
                continue
            if isinstance(event, ApplicationDataReceived):
                session = self.sessions.get(peer)
                if session is None or session.is_final:
                    session = self._new_session(peer)
                session.receive_bytes(event.data)
                self._after(session, now)
            elif isinstance(event, HandshakeCompleted):
                channel_id = (event.session.psk_identity or b"", bytes(event.session.session_id))
                self._channel_of[peer] = channel_id
                if not event.resumed or channel_id not in self._used_request_ids:
                    # A full handshake is a new channel: its request_ids start afresh.
                    self._used_request_ids.pop(channel_id, None)
                    self._used_request_ids[channel_id] = set()
                    while len(self._used_request_ids) > self.config.max_connections:
                        del self._used_request_ids[next(iter(self._used_request_ids))]
                identity = _text(event.session.psk_identity)
                log.info(
                    "channel from %s up (PSK identity %r, %s)",
                    _show(peer),
                    identity,
                    "resumed" if event.resumed else "full handshake",
                )
            elif isinstance(event, ConnectionTerminated):
                self._channel_of.pop(peer, None)
                if event.error:
                    _log_channel_failure(peer, event)
                old = self.sessions.pop(peer, None)
                if old is not None and not old.is_final:
                    old.channel_closed()
                    self._after(old, now)

    def _new_session(self, peer: Address) -> AgentSession:
        connection = self.server.connection(peer)
        channel = connection.session if connection is not None else None
        identity = channel.psk_identity if channel is not None else None
        channel_id = self._channel_of.get(peer)
        used = (
            self._used_request_ids.setdefault(channel_id, set())
            if channel_id is not None
            else set()
        )
        session = self._factory(self.config, identity, used)
        self.sessions[peer] = session
        self._peer_of[id(session)] = peer
        if self._keep_history:
            self.history.append(session)
        return session

    def _client_events(self, child: _Child, now: float) -> None:
        session = child.session
        while (event := child.client.next_event()) is not None:
            if isinstance(event, HandshakeCompleted | ConnectionTerminated):
                child.deadline = None
            session.on_engine_event(event)
            self._after(session, now)

    def _after(self, session: AgentSession, now: float) -> None:
        """Carry out what the session asks, hand a signature to its client, send its
        messages, and count it once it ended."""
        while session.needs:
            need = session.needs.popleft()
            if isinstance(need, StartHandshake):
                self._start_handshake(session, need, now)
            else:
                ticket = next(self._keys)
                self._tickets[ticket] = session
                self._events.append(StatusCheckRequested(ticket, need.certificate))
        signature = session.take_signature()
        client = session.client
        if (
            signature is not None
            and client is not None
            and client.state == ClientState.WAIT_SIGNATURE
        ):
            client.provide_signature(signature, now)
            key = self._child_of.get(id(session))
            if key is not None and key in self._children:
                self._client_events(self._children[key], now)
        peer = self._peer_of.get(id(session))
        outbox, session.outbox = session.outbox, []
        for message in outbox:
            if peer is not None:
                self._send(peer, message)
        if session.is_final and not session.counted:
            session.counted = True
            ok = session.state == AgentState.DONE
            miss = not ok and session.error_code is DelegationErrorCode.UNKNOWN_CHAIN
            if ok:
                self.completed += 1
            elif miss:
                self.chain_misses += 1
            else:
                self.failed += 1
            if peer is not None:
                self._events.append(DelegationEnded(peer, session, ok, chain_miss=miss))

    def _send(self, peer: Address, message: DelegationMessage) -> None:
        connection = self.server.connection(peer)
        if connection is None or not connection.is_established:
            return
        try:
            data = encode_message(message)
        except ValueError as exc:  # e.g. a transcript that does not fit in 16 KiB
            data = encode_message(
                DelegationError(message.request_id, DelegationErrorCode.UNSUPPORTED, str(exc)[:256])
            )
        connection.send_application_data(data)

    def _start_handshake(self, session: AgentSession, need: StartHandshake, now: float) -> None:
        key = next(self._keys)
        child = _Child(session, need.client)
        self._children[key] = child
        self._child_of[id(session)] = key
        host, port = need.request.server_host, need.request.server_port
        if _ip_literal(host):
            self._connect(child, (host, port), now)
        else:
            ticket = next(self._keys)
            self._tickets[ticket] = session
            self._events.append(ServerLookupRequested(ticket, host, port))

    def _connect(self, child: _Child, address: Address, now: float) -> None:
        if child.connected:
            return
        child.connected = True
        child.client.remote = address
        child.client.connect(now)
        child.deadline = now + self.config.handshake_timeout
        self._client_events(child, now)


def _log_channel_failure(peer: Address, event: ConnectionTerminated) -> None:
    alert = event.alert.name.lower() if event.alert is not None else "none"
    hint = ""
    if event.alert is AlertDescription.DECRYPT_ERROR and not event.by_peer:
        hint = " (the device's PSK key does not match the agent's PSK file)"
    elif event.alert is AlertDescription.UNKNOWN_PSK_IDENTITY and not event.by_peer:
        hint = " (the device's PSK identity is not in the agent's PSK file)"
    log.warning(
        "channel from %s failed: %s (alert %s, %s)%s",
        _show(peer),
        event.reason,
        alert,
        "sent by the device" if event.by_peer else "sent by the agent",
        hint,
    )


def _show(peer: Address) -> str:
    return f"[{peer[0]}]:{peer[1]}" if ":" in peer[0] else f"{peer[0]}:{peer[1]}"


def _text(identity: bytes | None) -> str | None:
    return identity.decode("utf-8", "replace") if identity is not None else None
