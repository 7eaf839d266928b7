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

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.verification import Store

from d2tls.clock import Clock, utc, wall_time
from d2tls.delegation.channel_security import Channel, agent_channel_suites
from d2tls.delegation.messages import (
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
from d2tls.delegation.policy import AgentPolicy
from d2tls.delegation.twinpeaks_identity import ServerKeys, twinpeaks_client_settings
from d2tls.dtls.client import DTLSClient
from d2tls.dtls.config import ClientConfig, KeyLogCallback, ServerConfig, TimerConfig
from d2tls.dtls.connection import Tracer
from d2tls.dtls.constants import ECDHE_SUITES, AlertDescription, CipherSuite
from d2tls.dtls.events import (
    ApplicationDataReceived,
    ConnectionTerminated,
    Event,
    HandshakeCompleted,
    SignatureRequested,
)
from d2tls.dtls.server import DTLSServer
from d2tls.dtls.session import Session
from d2tls.errors import ProtocolError
from d2tls.model.machine import MachineDriver
from d2tls.model.states import AgentState, ClientState
from d2tls.net.udp import ClientEndpoint, ConnectionFailed, ServerEndpoint
from d2tls.randomness import SYSTEM, Randomness
from d2tls.roles.device import CHANNEL_MTU
from d2tls.trace import tagged

Address = tuple[str, int]
MESSAGE_NAMES = {
    DelegationRequest: "DelegationRequest",
    SignRequest: "SignRequest",
    SignResponse: "SignResponse",
    SessionContext: "SessionContext",
    DelegationError: "DelegationError",
    Wiped: "Wiped",
}
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
    #: requires ECDHE-PSK (d2tls.delegation.channel_security).
    channel: Channel = "psk"
    #: TwinPeaks keys of servers, looked up by the host (spec/twinpeaks.md §9.5): a server
    #: with one is authenticated by that raw public key instead of a chain and OCSP.
    server_keys: ServerKeys | None = None


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
    """One delegation on behalf of one device (machine role ``agent``).

    IO is done by the owner through three callables: ``send`` (a delegation message to the
    device), ``start_handshake`` (open the agent's DTLS client to the server) and
    ``check_status`` (an OCSP query, answered with ``status_result``).
    """

    ROLE = "agent"

    def __init__(
        self,
        config: AgentConfig,
        send: Callable[[DelegationMessage], None],
        start_handshake: Callable[[DelegationRequest, DTLSClient], None],
        check_status: Callable[[x509.Certificate, AgentSession], None],
        identity: bytes | None = None,
        used_request_ids: set[int] | None = None,
    ) -> None:
        self.state = ""
        #: The channel's PSK identity, and the request_ids already used on the channel.
        self.identity = identity
        self._used_request_ids = used_request_ids if used_request_ids is not None else set()
        #: The request_id of the message being answered with an error, when it was readable.
        self._offending_id: int | None = None
        self.config = config
        self._send = send
        self._start_handshake = start_handshake
        self._check_status = check_status
        self.request: DelegationRequest | None = None
        self.client: DTLSClient | None = None
        self.session: Session | None = None
        self.error_code = DelegationErrorCode.INTERNAL
        self.error = ""
        self.log: list[dict[str, Any]] = []
        self.counted = False
        self._pending_signature: bytes | None = None
        self._current: DelegationMessage | None = None
        self._signature_request: SignatureRequested | None = None
        self._driver = MachineDriver(self.ROLE, self, spec_name="d2tls")

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
        self._current = message
        if isinstance(message, DelegationError):
            self.error = f"device: {message.code.name.lower()}: {message.reason}"
        try:
            self._driver.fire(f"recv_{MESSAGE_NAMES[type(message)]}")
        except ProtocolError as exc:
            self._abort(DelegationErrorCode.UNEXPECTED_MESSAGE, exc.reason)

    def on_engine_event(self, event: Event) -> None:
        """Events of the agent's DTLS client towards the server."""
        if isinstance(event, SignatureRequested):
            self._signature_request = event
            self._fire("signature_needed")
        elif isinstance(event, ConnectionTerminated) and event.error:
            self.error_code, self.error = describe_server_failure(event)
            self._fire("server_failed")
        elif isinstance(event, HandshakeCompleted):
            self._fire("server_handshake_done")
            if self.state == AgentState.HANDING_OVER:
                self._fire("context_sent")

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
            self._driver.fire_local(trigger)
        except ProtocolError as exc:  # the event is not expected now: a protocol violation
            if trigger != "abort":
                self._abort(DelegationErrorCode.INTERNAL, exc.reason)

    @property
    def is_final(self) -> bool:
        return self._driver.is_final()

    # ------------------------------------------------------------------ guards
    def request_acceptable(self) -> bool:
        """spec/delegation.md §6 and §9.1: a fresh request_id, then the agent's policy."""
        request = self._current
        assert isinstance(request, DelegationRequest)
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
        return True

    def session_resumable(self) -> bool:
        """RFC 5246 §7.4.1.3: an empty session ID means the server will not resume."""
        session = self.client.session if self.client is not None else None
        return session is not None and len(session.session_id) > 0

    def report_unresumable(self) -> None:
        self.error_code = DelegationErrorCode.UNSUPPORTED
        self.error = "the server gave no session ID: its sessions cannot be resumed"

    def ocsp_configured(self) -> bool:
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
    def start_server_handshake(self) -> None:
        request = self._current
        assert isinstance(request, DelegationRequest)
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
        self._start_handshake(request, client)

    def reject_request(self) -> None:
        request = self._current
        assert isinstance(request, DelegationRequest)
        self.request = request

    def start_status_check(self) -> None:
        assert self.client is not None
        chain = self.client.peer_certificates
        self._check_status(x509.load_der_x509_certificate(chain[0]), self)

    def build_SignRequest(self) -> None:
        request, asked = self.request, self._signature_request
        assert request is not None and asked is not None
        transcript = asked.transcript if request.mode is DelegationMode.BOUND else None
        self._send(SignRequest(request.request_id, asked.digest, transcript))

    def provide_signature(self) -> None:
        response = self._current
        assert isinstance(response, SignResponse) and self.client is not None
        self._pending_signature = response.signature

    def close_server_connection(self) -> None:
        assert self.client is not None
        self.session = self.client.session
        self.client.close()

    def build_SessionContext(self) -> None:
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
                # A raw public key (RFC 7250) is the one entry (spec/delegation.md §5.2).
                server_certificates=(raw,) if raw is not None else tuple(session.peer_certificates),
                lifetime=self.config.context_lifetime,
                ocsp_status=1 if self.ocsp_configured() else 0,
            )
        )

    def wipe_context(self) -> None:
        """Overwrite the agent's copy of the session (best effort, see module docstring)."""
        if self.session is not None:
            self.session.wipe()
        if self.client is not None and self.client.session is not None:
            self.client.session.wipe()
        self.session = None

    def build_Wiped(self) -> None:
        assert self.request is not None
        self._send(Wiped(self.request.request_id))

    def abort_server_handshake(self) -> None:
        if self.client is not None and not self.client.is_closed:
            self.client.close()

    def build_DelegationError(self) -> None:
        """The request_id of the message answered if it was readable (§6), else of the open
        request (an error of the agent's own), else 0."""
        request_id = self._offending_id
        if request_id is None:
            request_id = self.request.request_id if self.request is not None else NO_REQUEST_ID
        log.warning(
            "delegation %d refused or failed for %s: %s: %s",
            request_id,
            self._identity_text(),
            self.error_code.name.lower(),
            self.error,
        )
        self._send(DelegationError(request_id, self.error_code, self.error[:256]))

    def _identity_text(self) -> str:
        if self.identity is None:
            return "an unknown identity"
        return f"PSK identity {self.identity.decode('utf-8', 'replace')!r}"

    def emit_flight(self, messages: tuple[str, ...]) -> None:
        for name in messages:
            self._trace("sent", name)
            getattr(self, f"build_{name}")()

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


class Agent:
    """Serves many devices concurrently over DTLS 1.2 PSK on one UDP socket."""

    def __init__(self, config: AgentConfig, ocsp_issuer: x509.Certificate | None = None) -> None:
        self.config = config
        self._ocsp_issuer = ocsp_issuer
        self._sessions: dict[Address, AgentSession] = {}
        #: Per channel (peer address): request_ids already used (spec/delegation.md §6).
        self._used_request_ids: dict[Address, set[int]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server_endpoints: dict[int, ClientEndpoint] = {}
        self.completed = 0
        self.failed = 0
        self.endpoint: ServerEndpoint | None = None
        self.engine = DTLSServer(
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

    async def start(self, host: str, port: int) -> Address:
        if self.config.policy is None:
            log.warning("no delegation policy: any known device may target any server")
        else:
            for name in self.config.policy.unbound_identities():
                log.warning(
                    "PSK identity %r has no certificate binding: its delegations are %s",
                    name,
                    "allowed (--allow-unbound)" if self.config.policy.allow_unbound else "refused",
                )
        self.endpoint = await ServerEndpoint.listen(
            host, port, self.engine, on_event=self._on_channel_event
        )
        assert self.endpoint.address is not None
        return self.endpoint.address

    def close(self) -> None:
        for session in self._sessions.values():
            session.abort_server_handshake()
            session.wipe_context()
        if self.endpoint is not None:
            self.endpoint.close()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_channel_event(self, event: Event) -> None:
        peer = event.peer
        if peer is None:
            return
        if isinstance(event, ApplicationDataReceived):
            session = self._sessions.get(peer)
            if session is None or session.is_final:
                session = self._new_session(peer)
            session.receive_bytes(event.data)
            self._after(session)
        elif isinstance(event, HandshakeCompleted):
            # A new channel: its request_ids start afresh (an old association is gone).
            self._used_request_ids[peer] = set()
            identity = _text(event.session.psk_identity)
            log.info("channel from %s up (PSK identity %r)", _show(peer), identity)
        elif isinstance(event, ConnectionTerminated):
            self._used_request_ids.pop(peer, None)
            if event.error:
                self._log_channel_failure(peer, event)
            session = self._sessions.pop(peer, None)
            if session is not None and not session.is_final:
                session.channel_closed()

    def _log_channel_failure(self, peer: Address, event: ConnectionTerminated) -> None:
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

    def _new_session(self, peer: Address) -> AgentSession:
        def send(message: DelegationMessage) -> None:
            connection = self.engine.connection(peer)
            if connection is None or not connection.is_established:
                return
            try:
                data = encode_message(message)
            except ValueError as exc:  # e.g. a transcript that does not fit in 16 KiB
                data = encode_message(
                    DelegationError(
                        message.request_id, DelegationErrorCode.UNSUPPORTED, str(exc)[:256]
                    )
                )
            connection.send_application_data(data)

        def start_handshake(request: DelegationRequest, client: DTLSClient) -> None:
            self._spawn(self._run_server_handshake(session, request, client))

        def check_status(certificate: x509.Certificate, owner: AgentSession) -> None:
            self._spawn(self._check_status(certificate, owner))

        connection = self.engine.connection(peer)
        channel = connection.session if connection is not None else None
        identity = channel.psk_identity if channel is not None else None
        used = self._used_request_ids.setdefault(peer, set())
        session = AgentSession(
            self.config,
            send,
            start_handshake,
            check_status,
            identity=identity,
            used_request_ids=used,
        )
        self._sessions[peer] = session
        return session

    def _after(self, session: AgentSession) -> None:
        """Push channel output; hand a signature to the server connection when it arrived."""
        signature = session.take_signature()
        client = session.client
        waiting = client is not None and client.state == ClientState.WAIT_SIGNATURE
        if signature is not None and client is not None and waiting:
            client.provide_signature(signature, asyncio.get_running_loop().time())
            self._kick(session)
        if session.is_final and not session.counted:
            session.counted = True
            if session.state == AgentState.DONE:
                self.completed += 1
            else:
                self.failed += 1
        if self.endpoint is not None:
            self.endpoint.flush()

    def _kick(self, session: AgentSession) -> None:
        endpoint = self._server_endpoints.get(id(session))
        if endpoint is not None:
            endpoint.pump()

    async def _run_server_handshake(
        self, session: AgentSession, request: DelegationRequest, client: DTLSClient
    ) -> None:
        def forward(event: Event) -> None:
            session.on_engine_event(event)
            self._after(session)

        try:
            endpoint = await ClientEndpoint.connect(
                request.server_host, request.server_port, client, on_event=forward
            )
        except OSError as exc:
            session.error_code = DelegationErrorCode.SERVER_UNREACHABLE
            session.error = f"cannot reach the server: {exc}"
            session._fire("server_failed")
            self._after(session)
            return
        self._server_endpoints[id(session)] = endpoint
        try:
            await endpoint.handshake(timeout=self.config.handshake_timeout)
        except ConnectionFailed:
            pass  # already reported through forward()
        except TimeoutError:
            session.handshake_timed_out()
            self._after(session)
        await asyncio.sleep(0.05)  # let close_notify leave
        await endpoint.close()
        self._server_endpoints.pop(id(session), None)

    async def _check_status(self, certificate: x509.Certificate, session: AgentSession) -> None:
        from d2tls.pki.ocsp import OCSPError, OCSPStatus, check_ocsp

        assert self.config.ocsp_url is not None
        if self._ocsp_issuer is None:
            session.status_result(False, "no issuer certificate configured for OCSP")
        else:
            try:
                result = await check_ocsp(
                    certificate,
                    self._ocsp_issuer,
                    self.config.ocsp_url,
                    now=utc(self.config.wall_clock()),
                )
            except OCSPError as exc:
                session.status_result(False, f"OCSP check failed: {exc}")
            else:
                session.status_result(result.status is OCSPStatus.GOOD, result.status.name.lower())
        self._after(session)


def _show(peer: Address) -> str:
    return f"[{peer[0]}]:{peer[1]}" if ":" in peer[0] else f"{peer[0]}:{peer[1]}"


def _text(identity: bytes | None) -> str | None:
    return identity.decode("utf-8", "replace") if identity is not None else None
