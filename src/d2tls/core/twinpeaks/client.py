"""The TwinPeaks relying client: lookup, then the key confirmation handshake (sans-IO).

Sections 2.4.1, 2.4.4 and 2.4.5 of the dissertation (spec/twinpeaks.md §9.4, §11.5): a client
that wants a secure connection to the name N

1. learns N's address from the DNS and N's key from the key-server hierarchy, with its own
   :class:`~d2tls.core.twinpeaks.resolver.Resolver` (a child engine) or through a local resolver
   service (a ``tp-key-request`` to it, answered with the key server's record unchanged);
2. runs a DTLS 1.2 handshake (:class:`~d2tls.core.dtls.client.DTLSClient`, a child engine) with N's
   address in which the server authenticates with that key as an RFC 7250 raw public key and
   the ClientHello carries the TwinPeaks extension (name, address, h(key || params)): the
   server proves possession of the private key (the key confirmation exchange of §8.5);
3. on the server's "outdated public key" refusal (certificate_unknown, §9.3) invalidates the
   cached key, looks N up again and retries once, by itself; a second refusal is final.

:class:`TwinPeaksClient` is the ``client`` machine of ``spec/twinpeaks.yaml`` with the five
calls of :mod:`d2tls.core.sansio` on one socket: datagrams that start with a CBOR map header are
key-service messages (for the own resolver, or from the resolver service), those from N's
address are DTLS. The DNS is the host's: a :class:`~d2tls.core.twinpeaks.resolver.DnsQuery` event
is answered with :meth:`TwinPeaksClient.dns_answer` or :meth:`TwinPeaksClient.dns_failure`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from typing import Final, TypeAlias

from d2tls.core.clock import Clock, wall_time
from d2tls.core.dtls.client import DTLSClient
from d2tls.core.dtls.config import ClientConfig
from d2tls.core.dtls.events import ApplicationDataReceived, ConnectionTerminated, HandshakeCompleted
from d2tls.core.dtls.twinpeaks import (
    OutdatedPublicKey,
    ResolvedKey,
    TwinPeaksRefusal,
    refusal_error,
)
from d2tls.core.errors import D2TLSError, TwinPeaksConnectFailed, UnexpectedMessage
from d2tls.core.model.machine import Handlers, SpecMachine, expecting, ignoring
from d2tls.core.model.spec import load_spec
from d2tls.core.model.states import TwinPeaksClientState
from d2tls.core.randomness import SYSTEM, Randomness
from d2tls.core.sansio import Address, Datagram
from d2tls.core.twinpeaks import clpkc
from d2tls.core.twinpeaks.errors import (
    AddressMismatch,
    KeyDenied,
    LookupFailed,
    LookupTimeout,
    StaleRecord,
    TwinPeaksError,
)
from d2tls.core.twinpeaks.identity import IPAddress, normalize_name, parse_address
from d2tls.core.twinpeaks.keyserver import is_service_message
from d2tls.core.twinpeaks.messages import (
    MAX_CLOCK_SKEW,
    Invalidate,
    KeyRecord,
    KeyRequest,
    KeyResponse,
    RecordType,
    Status,
    StatusCode,
    decode_message,
    new_request_id,
)
from d2tls.core.twinpeaks.resolver import (
    DnsQuery,
    LookupCompleted,
    Resolver,
    ResolverConfig,
)
from d2tls.core.twinpeaks.resolver import LookupFailed as ResolverLookupFailed

RETRANSMIT_INTERVAL: Final = 1.0
MAX_SENDS: Final = 3
#: Retries after an outdated public key (dissertation 2.4.4: look up again, once).
OUTDATED_KEY_RETRIES: Final = 1


@dataclass
class TwinPeaksClientConfig:
    """A relying client: its own resolver (``resolver``: a configuration, or a
    :class:`Resolver` kept across connections with its cache) or a local resolver service
    (``resolver_service``), exactly one; ``dtls`` is the base of the handshake's
    configuration (cipher suites, timers), to which the looked-up key is added."""

    resolver: ResolverConfig | Resolver | None = None
    resolver_service: Address | None = None
    dtls: ClientConfig = field(default_factory=ClientConfig)
    wall_clock: Clock = wall_time
    randomness: Randomness = SYSTEM
    retransmit_interval: float = RETRANSMIT_INTERVAL
    max_sends: int = MAX_SENDS
    retries: int = OUTDATED_KEY_RETRIES

    def __post_init__(self) -> None:
        if (self.resolver is None) == (self.resolver_service is None):
            raise TwinPeaksError("a client needs either its own resolver or a resolver service")
        if not 0 <= self.retries <= 3:
            raise TwinPeaksError("between 0 and 3 retries after an outdated key")


# --------------------------------------------------------------------------- events
@dataclass(frozen=True)
class KeyResolved:
    """The name's key, validated (by the own resolver, or checked from the service's record)."""

    name: str
    address: IPAddress
    record: KeyRecord
    from_cache: bool
    attempt: int


@dataclass(frozen=True)
class KeyInvalidated:
    """The server refused the key as outdated: the cached key was dropped, a lookup follows."""

    name: str
    address: IPAddress
    error: OutdatedPublicKey


@dataclass(frozen=True)
class Connected:
    """The handshake completed: the server at ``peer`` holds the private key of ``key``."""

    name: str
    peer: Address
    key: ResolvedKey
    serial: int
    attempts: int
    timeline: tuple[str, ...]


@dataclass(frozen=True)
class DataReceived:
    data: bytes


@dataclass(frozen=True)
class ClientFailed:
    """No connection: the lookup failed, the server refused (``WrongServerName``,
    ``WrongServerAddress``, a second ``OutdatedPublicKey``) or the handshake failed."""

    name: str
    error: D2TLSError
    timeline: tuple[str, ...]


@dataclass(frozen=True)
class Closed:
    name: str
    reason: str


ClientEvent: TypeAlias = (
    DnsQuery | KeyResolved | KeyInvalidated | Connected | DataReceived | ClientFailed | Closed
)


#: What the client machine's handlers receive: the resolver service's answer, the end of the
#: DTLS association (handshake_failed, connection_ended), or None (local event).
Payload: TypeAlias = KeyResponse | Status | ConnectionTerminated | None


class TwinPeaksClient:
    """The ``client`` role (see the module docstring). ``connect(name, port, now)``, then the
    five :mod:`d2tls.core.sansio` calls; :meth:`send_application_data` once :class:`Connected`."""

    ROLE = "client"

    def __init__(self, config: TwinPeaksClientConfig) -> None:
        self.config = config
        resolver = config.resolver
        self.resolver = Resolver(resolver) if isinstance(resolver, ResolverConfig) else resolver
        self.name = ""
        self.port = 0
        self.wanted: IPAddress | None = None
        self.address: IPAddress | None = None
        self.key: ResolvedKey | None = None
        self.record: KeyRecord | None = None
        self.dtls: DTLSClient | None = None
        self.attempts = 0
        self.timeline: list[str] = []
        self._events: deque[ClientEvent] = deque()
        self._out: list[Datagram] = []
        self._lookup_id = -1
        self._dns_ids = 0
        self._dns_pending: int | None = None
        self._request: KeyRequest | Invalidate | None = None
        self._sends = 0
        self._deadline: float | None = None
        self._error: D2TLSError | None = None
        self._retries = config.retries
        self._lookup_only = False
        self._started = 0.0
        self._now = 0.0
        self._table = self._handlers()
        self._driver: SpecMachine[TwinPeaksClientState, Payload] = SpecMachine(
            load_spec("twinpeaks").role(self.ROLE), TwinPeaksClientState, self._table
        )

    @property
    def state(self) -> TwinPeaksClientState:
        """The current state (``spec/twinpeaks.yaml``, role ``client``)."""
        return self._driver.state

    # ------------------------------------------------------------------ application
    def connect(self, name: str, port: int, now: float, address: str | None = None) -> None:
        """Look ``name`` up and connect to its address at ``port`` (``address``: use this one
        of the name's DNS addresses). Raises InvalidIdentity for a name not in §3 form."""
        if not 0 < port < 65536:
            raise TwinPeaksError(f"port {port} is not a UDP port")
        self.name = normalize_name(name)
        self.wanted = parse_address(address) if address is not None else None
        self.port = port
        self._now = self._started = now
        self._driver.fire_local("connect", None)

    def lookup(self, name: str, now: float, address: str | None = None) -> None:
        """Only look ``name``'s key up (a :class:`KeyResolved` event, or
        :class:`ClientFailed`): ``d2tls twinpeaks lookup --resolver``."""
        self.name = normalize_name(name)
        self.wanted = parse_address(address) if address is not None else None
        self._lookup_only = True
        self._now = self._started = now
        self._driver.fire_local("lookup", None)

    def send_application_data(self, data: bytes) -> None:
        if self.state != TwinPeaksClientState.CONNECTED or self.dtls is None:
            raise TwinPeaksConnectFailed(f"not connected (state {self.state})")
        self.dtls.send_application_data(data)

    def close(self, now: float) -> None:
        self._now = now
        if not self._driver.is_final():
            self._driver.fire_local("close", None)

    @property
    def peer(self) -> Address | None:
        """N's DTLS address (its DNS address and the service port), once looked up."""
        return (self.address.compressed, self.port) if self.address is not None else None

    # ------------------------------------------------------------------ the host's DNS
    def dns_answer(
        self, query_id: int, addresses: list[str] | list[IPAddress], ttl: float, now: float
    ) -> None:
        """The A/AAAA records of a :class:`DnsQuery` this client emitted."""
        self._now = now
        if self.resolver is not None:
            self.resolver.dns_answer(query_id, list(addresses), ttl, now)
            self._pump_resolver()
            return
        if query_id != self._dns_pending or self.state != TwinPeaksClientState.RESOLVING:
            return
        self._dns_pending = None
        parsed: list[IPAddress] = []
        for address in addresses:
            try:
                parsed.append(parse_address(address))
            except TwinPeaksError:
                continue
        self.note(f"DNS {self.name} -> {', '.join(a.compressed for a in parsed) or 'none'}")
        if self.wanted is not None and self.wanted not in parsed:
            self._lookup_failed(
                AddressMismatch(f"{self.wanted.compressed} is not an address of {self.name}")
            )
        elif not parsed:
            self._lookup_failed(AddressMismatch(f"the DNS has no address for {self.name}"))
        else:
            self.address = self.wanted or parsed[0]
            self._request = KeyRequest(
                new_request_id(self.config.randomness.random_bytes), self.name, self.address
            )
            self.note(f"key request {self.name} at {self.address.compressed} -> resolver service")
            self._send_request(first=True)

    def dns_failure(self, query_id: int, reason: str, now: float) -> None:
        self._now = now
        if self.resolver is not None:
            self.resolver.dns_failure(query_id, reason, now)
            self._pump_resolver()
        elif query_id == self._dns_pending and self.state == TwinPeaksClientState.RESOLVING:
            self._dns_pending = None
            self._lookup_failed(AddressMismatch(f"DNS: {reason}"))

    # ------------------------------------------------------------------ sans-IO
    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """One datagram: key service (CBOR map) or DTLS from N. Never raises."""
        self._now = now
        data = bytes(data)
        if is_service_message(data):
            if self.resolver is not None:
                self.resolver.receive_datagram(data, addr, now)
                self._pump_resolver()
            elif addr == self.config.resolver_service:
                self._service_message(data)
        elif self.dtls is not None and addr == self.peer:
            self.dtls.receive_datagram(data, addr, now)
            self._pump_dtls()

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        self._now = now
        out, self._out = self._out, []
        if self.resolver is not None:
            out += self.resolver.datagrams_to_send(now)
        if self.dtls is not None and self.peer is not None:
            out += self.dtls.datagrams_to_send(now)
        return out

    def next_timer(self) -> float | None:
        timers = [
            t
            for t in (
                self._deadline,
                self.resolver.next_timer() if self.resolver is not None else None,
                self.dtls.next_timer() if self.dtls is not None else None,
            )
            if t is not None
        ]
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        self._now = now
        if self.resolver is not None:
            self.resolver.handle_timer(now)
            self._pump_resolver()
        if self.dtls is not None:
            self.dtls.handle_timer(now)
            self._pump_dtls()
        if self._deadline is not None and now >= self._deadline and not self._driver.is_final():
            self._deadline = None
            self._fire("retransmit" if self._sends < self.config.max_sends else "timeout")

    def next_event(self) -> ClientEvent | None:
        return self._events.popleft() if self._events else None

    # ------------------------------------------------------------------ plumbing
    def note(self, text: str) -> None:
        self.timeline.append(f"{1000 * (self._now - self._started):8.1f} ms  {text}")

    def _fire(self, trigger: str, payload: Payload = None) -> None:
        if self._driver.accepts(trigger):
            self._driver.fire_local(trigger, payload)

    def _pump_resolver(self) -> None:
        assert self.resolver is not None
        while (event := self.resolver.next_event()) is not None:
            if isinstance(event, DnsQuery):
                self._events.append(event)
            elif isinstance(event, LookupCompleted) and event.lookup_id == self._lookup_id:
                self.timeline.extend(f"  {line}" for line in event.timeline)
                self.address = event.result.address
                self._resolved(event.result.record, event.result.from_cache)
                self._fire("key_resolved")
            elif isinstance(event, ResolverLookupFailed) and event.lookup_id == self._lookup_id:
                self.timeline.extend(f"  {line}" for line in event.timeline)
                self._lookup_failed(event.error)

    def _lookup_failed(self, error: TwinPeaksError) -> None:
        self._error = error
        self._fire("lookup_failed")

    def _resolved(self, record: KeyRecord, from_cache: bool) -> None:
        subject = record.subject
        assert subject is not None
        self.record = record
        self.key = ResolvedKey(record.issuer_params, subject.public_key)
        self.attempts += 1
        self._events.append(
            KeyResolved(self.name, record.address, record, from_cache, self.attempts)
        )

    def _pump_dtls(self) -> None:
        dtls = self.dtls
        assert dtls is not None
        # A failed handshake may replace the engine (a retry): stop with the old one.
        while self.dtls is dtls and (event := dtls.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                self._fire("handshake_done")
            elif isinstance(event, ApplicationDataReceived):
                self._events.append(DataReceived(event.data))
            elif isinstance(event, ConnectionTerminated):
                if self.state == TwinPeaksClientState.HANDSHAKING:
                    self._fire("handshake_failed", event)
                elif self.state == TwinPeaksClientState.CONNECTED:
                    self._fire("connection_ended", event)

    def _service_message(self, data: bytes) -> None:
        try:
            message = decode_message(data)
        except TwinPeaksError as exc:
            self.note(f"dropped a malformed datagram from the resolver service: {exc}")
            return
        if not isinstance(message, KeyResponse | Status):
            self.note(f"dropped an unexpected {type(message).__name__}")
            return
        if self._request is None or message.request_id != self._request.request_id:
            self.note("dropped an answer to no outstanding request")
            return
        kind = "KeyResponse" if isinstance(message, KeyResponse) else "Status"
        try:
            self._driver.fire(f"recv_{kind}", message)
        except UnexpectedMessage:
            self.note(f"dropped a {kind} in state {self.state}")

    def _send_request(self, *, first: bool) -> None:
        assert self._request is not None and self.config.resolver_service is not None
        if first:
            self._sends = 0
        self._out.append((self._request.encode(), self.config.resolver_service))
        self._sends += 1
        self._deadline = self._now + self.config.retransmit_interval * 2 ** (self._sends - 1)

    # ------------------------------------------------------------------ the spec's handlers
    def _handlers(self) -> Handlers[Payload]:
        ended = ConnectionTerminated
        return Handlers(
            guards={
                "service_answer_valid": expecting(KeyResponse, self._service_answer_valid),
                "service_denial": expecting(KeyResponse, self._service_denial),
                "lookup_only": ignoring(self._lookup_only_guard),
                "outdated_key": expecting(ended, self._outdated_key),
                "retry_left": ignoring(self._retry_left),
                "status_ok": expecting(Status, self._status_ok),
            },
            actions={
                "start_lookup": ignoring(self._start_lookup),
                "open_handshake": self._open_handshake,
                "report_resolved": self._report_resolved,
                "report_connected": ignoring(self._report_connected),
                "invalidate_key": expecting(ended, self._invalidate_key),
                "resend_request": ignoring(self._resend_request),
                "discard_response": ignoring(self._discard_response),
                "report_lookup_failure": self._report_lookup_failure,
                "report_handshake_failure": expecting(ended, self._report_handshake_failure),
                "report_timeout": ignoring(self._report_timeout),
                "report_closed": expecting(ended, self._report_closed),
                "close_connection": ignoring(self._close_connection),
            },
            builders={},
            hold=self._no_flight,
            emit=self._no_flight,
        )

    def _no_flight(self, messages: tuple[str, ...]) -> None:
        """The client's messages go out from its actions (no ``emits`` in its machine)."""
        raise TwinPeaksError(f"client: the spec names a flight {messages} the client lacks")

    # ------------------------------------------------------------------ guards
    def _service_answer_valid(self, response: KeyResponse) -> bool:
        """The resolver service's answer, which the client cannot verify (it trusts the
        service as a stub trusts its recursive resolver, §11.3) but checks: the name and
        address asked, an answer, Q bound to (params, ID, X), the record and key in their
        time windows (§8.5 steps 2, 5, 6)."""
        request = self._request
        if not isinstance(request, KeyRequest):
            return False
        record = response.record
        if (record.name, record.address) != (request.name, request.address):
            self._error = LookupFailed("the resolver service answered another name or address")
            return False
        if record.record_type != RecordType.ANSWER or record.subject is None:
            return False
        now = int(self.config.wall_clock())
        subject = record.subject
        try:
            clpkc.check_binding(record.issuer_params, subject.public_key, subject.q)
            if record.issued_at > now + MAX_CLOCK_SKEW or now >= record.expires:
                raise StaleRecord("the record is outside its time window")
            if not subject.not_before <= now <= subject.not_after:
                raise StaleRecord(f"the key of {self.name} is outside its validity")
        except TwinPeaksError as exc:
            self._error = exc
            return False
        return True

    def _service_denial(self, response: KeyResponse) -> bool:
        request = self._request
        if not isinstance(request, KeyRequest):
            return False
        record = response.record
        if record.record_type != RecordType.DENIAL or record.denial is None:
            return False
        if (record.name, record.address) != (request.name, request.address):
            return False
        reason = record.denial.name.lower().replace("_", " ")
        if record.denial.name == "UNKNOWN_ADDRESS":
            self._error = AddressMismatch(
                f"{record.signer.name} has no key for {self.name} at {record.address.compressed}"
            )
        else:
            self._error = KeyDenied(f"{record.signer.name} denies {self.name}: {reason}")
        return True

    def _lookup_only_guard(self) -> bool:
        return self._lookup_only

    def _outdated_key(self, ended: ConnectionTerminated) -> bool:
        return isinstance(refusal_error(ended), OutdatedPublicKey)

    def _retry_left(self) -> bool:
        return self._retries > 0

    def _status_ok(self, status: Status) -> bool:
        return status.code == StatusCode.OK

    # ------------------------------------------------------------------ actions
    def _start_lookup(self) -> None:
        self._error = None
        self._deadline = None  # the tp-invalidate (if any) is answered
        if self.resolver is not None:
            self.note(f"lookup {self.name} (own resolver)")
            self._lookup_id = self.resolver.lookup(self.name, self._now, self.wanted)
            self._pump_resolver()
            return
        self._dns_ids += 1
        self._dns_pending = self._dns_ids
        self._request = None
        self.note(f"DNS query A/AAAA {self.name}")
        self._events.append(DnsQuery(self._dns_ids, self.name))

    def _open_handshake(self, response: Payload) -> None:
        if isinstance(response, KeyResponse):  # from the resolver service
            self._deadline = None
            self._resolved(response.record, from_cache=False)
        assert self.key is not None and self.address is not None and self.record is not None
        key, name = self.key, self.name
        spki = key.spki
        subject = self.record.subject
        assert subject is not None
        self.note(
            f"DTLS handshake with {self.address.compressed}:{self.port}: raw public key of "
            f"{name} (serial {subject.serial}), TwinPeaks extension"
        )
        config = replace(
            self.config.dtls,
            server_name=name,
            server_key_lookup=lambda asked: spki if asked == name else None,
            trusted_server_keys=frozenset(),
            trust_store=None,
            twinpeaks=key.hello,
            wall_clock=self.config.wall_clock,
            randomness=self.config.randomness,
        )
        self.dtls = DTLSClient(config, remote=self.peer)
        self.dtls.connect(self._now)

    def _report_resolved(self, response: Payload) -> None:
        """Lookup only: the key is the result (its event, :class:`KeyResolved`, is out)."""
        if isinstance(response, KeyResponse):  # from the resolver service
            self._deadline = None
            self._resolved(response.record, from_cache=False)
        self.note(f"key of {self.name} resolved")

    def _report_connected(self) -> None:
        assert self.key is not None and self.peer is not None and self.record is not None
        subject = self.record.subject
        assert subject is not None
        self.note(f"connected: {self.name} proved possession of its TwinPeaks key")
        self._events.append(
            Connected(
                self.name, self.peer, self.key, subject.serial, self.attempts, tuple(self.timeline)
            )
        )

    def _invalidate_key(self, ended: ConnectionTerminated) -> None:
        assert self.address is not None
        error = refusal_error(ended)
        assert isinstance(error, OutdatedPublicKey)
        self._retries -= 1
        self.note(f"server refused: {error}; invalidating the cached key")
        self._events.append(KeyInvalidated(self.name, self.address, error))
        self.dtls = None
        if self.resolver is not None:
            self.resolver.invalidate(self.name, self.address)
            self._pump_resolver()
            self._fire("invalidated")
            return
        self._request = Invalidate(
            new_request_id(self.config.randomness.random_bytes), self.name, self.address
        )
        self._send_request(first=True)

    def _resend_request(self) -> None:
        self.note("retransmit to the resolver service")
        self._send_request(first=False)

    def _discard_response(self) -> None:
        self.note(f"discarded the resolver service's answer: {self._error or 'not an answer'}")
        self._error = None

    def _report_lookup_failure(self, message: Payload) -> None:
        self._deadline = None
        error = self._error
        if error is None and isinstance(message, Status):
            code = StatusCode(message.code).name.lower().replace("_", " ")
            detail = f": {message.detail}" if message.detail else ""
            error = LookupFailed(f"the resolver service says {code}{detail}")
        self._failed(error or LookupFailed(f"no key for {self.name}"))

    def _report_handshake_failure(self, ended: ConnectionTerminated) -> None:
        error: D2TLSError | None = refusal_error(ended)
        if isinstance(error, TwinPeaksRefusal):
            self.note(f"server refused: {error}")
        else:
            error = TwinPeaksConnectFailed(f"handshake with {self.name} failed: {ended.reason}")
        self._failed(error)

    def _report_timeout(self) -> None:
        self._failed(LookupTimeout(f"no answer from the resolver service after {self._sends}"))

    def _report_closed(self, ended: ConnectionTerminated) -> None:
        self._events.append(Closed(self.name, ended.reason))

    def _close_connection(self) -> None:
        self._deadline = None
        if self.dtls is not None:
            self.dtls.close()
        self._events.append(Closed(self.name, "closed by the application"))

    def _failed(self, error: D2TLSError) -> None:
        self._deadline = None
        self.note(f"failed: {type(error).__name__}: {error}")
        self._events.append(ClientFailed(self.name, error, tuple(self.timeline)))


__all__ = [
    "ClientEvent",
    "ClientFailed",
    "Closed",
    "Connected",
    "DataReceived",
    "KeyInvalidated",
    "KeyResolved",
    "TwinPeaksClient",
    "TwinPeaksClientConfig",
]
