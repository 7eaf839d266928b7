"""A TwinPeaks key server: root, TLK or SLK (sans-IO; spec/twinpeaks.md §8, §11).

Section 2.4.1 of the dissertation: every key server is the KGC of its zone's children and, below
the root, a member of its parent. :class:`KeyServer` is the ``key_server`` machine of
``spec/twinpeaks.yaml``; below the root it owns a
:class:`~d2tls.core.twinpeaks.member.Member` for its
own key (the member half) and starts serving when that member is registered. A root issues
its own key under its own params (a self-issued trust anchor, §8.8).

One UDP port carries everything (§11.1): a datagram whose first byte is a CBOR map header
(0xA0-0xBF) is a key-service message (a ``tp-key-request``, answered in one datagram); any other
datagram is DTLS (content types 20-25, RFC 6347 §4.1): from the parent's address it goes to the
member half, from anyone else to the DTLS-PSK server of the children's associations, where
registrations (§8.2) and key updates (§8.6) arrive. A child is authenticated by its PSK
identity, which the configuration binds to one child name.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from d2tls.core.clock import Clock, wall_time
from d2tls.core.dtls.config import ServerConfig, TimerConfig
from d2tls.core.dtls.events import ApplicationDataReceived, ConnectionTerminated, HandshakeCompleted
from d2tls.core.dtls.server import DTLSServer
from d2tls.core.errors import StateFileError, TwinPeaksError
from d2tls.core.model.machine import Handlers, SpecMachine, expecting, ignoring
from d2tls.core.model.spec import load_spec
from d2tls.core.model.states import TwinPeaksKeyServerState
from d2tls.core.randomness import SYSTEM, Randomness
from d2tls.core.sansio import Address, Datagram
from d2tls.core.twinpeaks import clpkc
from d2tls.core.twinpeaks.clpkc import FullPrivateKey, MasterKey, Params, PublicKey
from d2tls.core.twinpeaks.identity import IPAddress, normalize_name, normalize_zone, parse_address
from d2tls.core.twinpeaks.member import (
    PSK_SUITE,
    Member,
    MemberConfig,
    ParentLink,
    Registered,
    RegistrationError,
)
from d2tls.core.twinpeaks.messages import (
    DenialReason,
    KeyRecord,
    KeyRequest,
    KeyResponse,
    KeyUpdate,
    RecordType,
    RegistrationRequest,
    RegistrationResponse,
    Status,
    StatusCode,
    Subject,
    TrustAnchor,
    decode_message,
)
from d2tls.core.twinpeaks.state import KeyServerState

DEFAULT_RECORD_TTL: Final = 300
"""Seconds a resolver may cache a record this server signs (§8.4)."""
DEFAULT_KEY_LIFETIME: Final = 7 * 86400
"""Validity of an issued key (not-after - not-before), in seconds."""
MAX_CHILDREN: Final = 10_000


def is_service_message(data: bytes) -> bool:
    """True for a key-service datagram (a CBOR map header, §11.1), False for DTLS."""
    return bool(data) and 0xA0 <= data[0] <= 0xBF


@dataclass(frozen=True)
class Child:
    """A child the server is the KGC of: its name and the PSK of its association."""

    name: str
    psk: bytes = field(repr=False)


@dataclass
class KeyServerConfig:
    """A key server. ``parent`` is None for a root (self-issued key); ``children`` maps each
    PSK identity to the one child name it authenticates (§8.2)."""

    zone: str
    name: str
    address: str
    port: int
    master: MasterKey
    children: Mapping[bytes, Child] = field(default_factory=dict)
    parent: ParentLink | None = None
    record_ttl: int = DEFAULT_RECORD_TTL
    key_lifetime: int = DEFAULT_KEY_LIFETIME
    wall_clock: Clock = wall_time
    randomness: Randomness = SYSTEM
    timers: TimerConfig = field(default_factory=TimerConfig)

    def __post_init__(self) -> None:
        self.zone = normalize_zone(self.zone)
        self.name = normalize_name(self.name)
        self.address = str(parse_address(self.address))
        if self.master.params.zone != self.zone:
            raise TwinPeaksError(f"the master key is for zone {self.master.params.zone!r}")
        if self.parent is not None and self.name != self.zone:
            raise TwinPeaksError("a TLK/SLK key server's name is its zone (§8.1)")
        if len(self.children) > MAX_CHILDREN:
            raise TwinPeaksError(f"at most {MAX_CHILDREN} children")
        self.children = {
            bytes(identity): Child(normalize_name(child.name), child.psk)
            for identity, child in self.children.items()
        }

    @property
    def params(self) -> Params:
        return self.master.params


@dataclass(frozen=True)
class Registration:
    """A key the server publishes: the subject of its answers and referrals."""

    subject: Subject

    @property
    def name(self) -> str:
        return self.subject.identity.name

    @property
    def address(self) -> IPAddress:
        return self.subject.identity.address


# --------------------------------------------------------------------------- events
@dataclass(frozen=True)
class Serving:
    """The server has its own key and answers requests (root: at start)."""

    key: FullPrivateKey


@dataclass(frozen=True)
class ChildRegistered:
    """A registration or key update was accepted: the key is published from now on."""

    name: str
    address: str
    serial: int
    update: bool


@dataclass(frozen=True)
class Refused:
    """A registration, key update or request was refused with a tp-status (§8.7)."""

    peer: Address
    code: StatusCode
    detail: str


@dataclass(frozen=True)
class Answered:
    """A key request was answered (type: answer, referral or denial)."""

    peer: Address
    name: str
    record_type: RecordType


@dataclass(frozen=True)
class Dropped:
    """A datagram that is no message of ours was dropped (hostile or broken input)."""

    peer: Address
    reason: str


@dataclass(frozen=True)
class OwnKeyFailed:
    """The member half could not obtain the server's key."""

    error: TwinPeaksError


KeyServerEvent: TypeAlias = Serving | ChildRegistered | Refused | Answered | Dropped | OwnKeyFailed


class KeyServer:
    """The ``key_server`` role (see the module docstring). Call :meth:`start`, then the five
    :mod:`d2tls.core.sansio` calls. Never raises on hostile input."""

    ROLE = "key_server"

    def __init__(
        self,
        config: KeyServerConfig,
        saved: KeyServerState | None = None,
        *,
        port_of: KeyServer | None = None,
    ) -> None:
        """``saved``: the state of a previous run (:meth:`export_state`), restored so that the
        keys issued before a restart stay valid and published. ``port_of``: this server is
        another key-service port of that one, for another root (§11.6): same master key,
        the same registrations, its own key from its own parent."""
        self.config = config
        self.key: FullPrivateKey | None = None
        self.registrations: dict[tuple[str, IPAddress], Registration] = {}
        self._serials: dict[str, int] = {}
        self._saved_key: FullPrivateKey | None = None
        if port_of is not None:
            if port_of.config.master != config.master or saved is not None:
                raise TwinPeaksError("another port of a key server shares its master key only")
            self.registrations, self._serials = port_of.registrations, port_of._serials
        if saved is not None:
            self._restore(saved)
        self._events: deque[KeyServerEvent] = deque()
        self._out: list[Datagram] = []
        self._member: Member | None = None
        self._dtls: DTLSServer | None = None
        if config.children:
            self._dtls = DTLSServer(
                ServerConfig(
                    cipher_suites=(PSK_SUITE,),
                    psk_keys={i: c.psk for i, c in config.children.items()},
                    timers=config.timers,
                    wall_clock=config.wall_clock,
                    randomness=config.randomness,
                )
            )
        self._peer_identity: dict[Address, bytes] = {}
        #: Last answer per child association, by request ID: a retransmitted request gets it
        #: again instead of a second partial key (idempotent registration).
        self._last_answer: dict[Address, tuple[bytes, bytes]] = {}
        #: The peer whose request the machine is handling (the transport context of the
        #: message passed to the handlers; answers go back to it).
        self._peer: Address = ("", 0)
        self._refusal = (StatusCode.MALFORMED, "")
        #: The answer an action prepared for the flight the spec emits next.
        self._reply: _Reply | None = None
        self._refused = b"\x00" * 8
        self._now = 0.0
        self._table = self._handlers()
        self._driver: SpecMachine[TwinPeaksKeyServerState, Payload] = SpecMachine(
            load_spec("twinpeaks").role(self.ROLE), TwinPeaksKeyServerState, self._table
        )

    @property
    def state(self) -> TwinPeaksKeyServerState:
        """The current state (``spec/twinpeaks.yaml``, role ``key_server``)."""
        return self._driver.state

    def _restore(self, saved: KeyServerState) -> None:
        config = self.config
        if saved.master != config.master:
            raise StateFileError(f"the saved state is for another master key (zone {config.zone})")
        own = saved.own_key
        if own is not None and (
            own.params != config.params
            or own.identity != config.params.identity(config.name, config.address)
        ):
            raise StateFileError(
                f"the saved key is not {config.name} at {config.address} under our params"
            )
        self._saved_key = own
        for subject in saved.subjects:
            if not _strictly_below(subject.identity.name, config.zone):
                raise StateFileError(f"a saved key for {subject.identity.name} is not in our zone")
            registration = Registration(subject)
            self.registrations[(registration.name, registration.address)] = registration
        self._serials = dict(saved.serials)

    def export_state(self) -> KeyServerState:
        """What must survive a restart (save it after every :class:`ChildRegistered` and
        once :class:`Serving`): the master key, a root's own key, the published keys and
        the serials. A TLK/SLK server registers again at start (a fresh key of its own)."""
        own = self.key if self.config.parent is None else None
        subjects = tuple(r.subject for r in self.registrations.values())
        return KeyServerState(self.config.master, own, subjects, dict(self._serials))

    # ------------------------------------------------------------------ inputs
    def start(self, now: float) -> None:
        self._now = now
        self._driver.fire_local("start", None)

    def stop(self, now: float) -> None:
        self._now = now
        if not self._driver.is_final():
            self._driver.fire_local("stop", None)

    @property
    def member(self) -> Member | None:
        """The member half (None for a root)."""
        return self._member

    def trust_anchor(self) -> TrustAnchor:
        """This server as a pre-loadable root (§8.8): its params, ID, X and port, with the
        params its key was issued under when that is not self-issued (an island root)."""
        if self.key is None:
            raise TwinPeaksError("the server has no key yet")
        key_params = None if self.key.params == self.config.params else self.key.params
        return TrustAnchor(
            self.config.params, self.key.identity, self.key.x_point, self.config.port, key_params
        )

    # ------------------------------------------------------------------ sans-IO
    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        self._now = now
        data = bytes(data)
        if is_service_message(data):
            self._service(data, addr)
        elif self._member is not None and addr == self._member.config.parent.address:
            self._member.receive_datagram(data, addr, now)
            self._pump_member()
        elif self._dtls is not None:
            self._dtls.receive_datagram(data, addr, now)
            self._pump_dtls()
        else:
            self._events.append(Dropped(addr, "not a key-service message"))

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        self._now = now
        out, self._out = self._out, []
        if self._member is not None:
            out += self._member.datagrams_to_send(now)
        if self._dtls is not None:
            out += self._dtls.datagrams_to_send(now)
        return out

    def next_timer(self) -> float | None:
        timers = [
            t
            for t in (
                self._member.next_timer() if self._member else None,
                self._dtls.next_timer() if self._dtls else None,
            )
            if t is not None
        ]
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        self._now = now
        if self._member is not None:
            self._member.handle_timer(now)
            self._pump_member()
        if self._dtls is not None:
            self._dtls.handle_timer(now)
            self._pump_dtls()

    def next_event(self) -> KeyServerEvent | None:
        return self._events.popleft() if self._events else None

    # ------------------------------------------------------------------ dispatch
    def _service(self, data: bytes, addr: Address) -> None:
        try:
            message = decode_message(data)
        except TwinPeaksError as exc:
            self._events.append(Dropped(addr, f"malformed: {exc}"))
            return
        if not isinstance(message, KeyRequest):
            request_id = getattr(message, "request_id", None)
            if isinstance(request_id, bytes):
                self._status(addr, request_id, StatusCode.MALFORMED, "not served on this port")
            else:
                self._events.append(Dropped(addr, "not a request"))
            return
        self._deliver(message, addr, "KeyRequest")

    def _pump_member(self) -> None:
        assert self._member is not None
        while (event := self._member.next_event()) is not None:
            if isinstance(event, Registered):
                self.key = event.key
                if self.state == TwinPeaksKeyServerState.AWAITING_OWN_KEY:
                    self._driver.fire_local("own_key_ready", None)
                    self._events.append(Serving(event.key))
            elif isinstance(event, RegistrationError) and event.final:
                if self.state == TwinPeaksKeyServerState.AWAITING_OWN_KEY:
                    self._driver.fire_local("own_key_failed", None)
                self._events.append(OwnKeyFailed(event.error))

    def _pump_dtls(self) -> None:
        assert self._dtls is not None
        while (event := self._dtls.next_event()) is not None:
            peer = event.peer
            if peer is None:
                continue
            if isinstance(event, HandshakeCompleted):
                identity = event.session.psk_identity
                if identity is not None:
                    self._peer_identity[peer] = identity
            elif isinstance(event, ApplicationDataReceived):
                self._association_message(event.data, peer)
            elif isinstance(event, ConnectionTerminated):
                self._peer_identity.pop(peer, None)
                self._last_answer.pop(peer, None)

    def _association_message(self, data: bytes, peer: Address) -> None:
        try:
            message = decode_message(data)
        except TwinPeaksError as exc:
            self._events.append(Dropped(peer, f"malformed on the association: {exc}"))
            return
        if not isinstance(message, RegistrationRequest | KeyUpdate):
            request_id = getattr(message, "request_id", None)
            if isinstance(request_id, bytes):
                self._status(peer, request_id, StatusCode.MALFORMED, "not a registration")
            return
        cached = self._last_answer.get(peer)
        if cached is not None and cached[0] == message.request_id:
            self._send_association(peer, cached[1])
            return
        kind = "RegistrationRequest" if isinstance(message, RegistrationRequest) else "KeyUpdate"
        self._deliver(message, peer, kind)

    def _deliver(self, message: Request, peer: Address, kind: str) -> None:
        self._peer = peer
        trigger = f"recv_{kind}"
        if not self._driver.accepts(trigger):
            self._status(peer, message.request_id, StatusCode.SERVER_FAILURE, f"state {self.state}")
            return
        self._driver.fire(trigger, message)

    def _status(self, peer: Address, request_id: bytes, code: StatusCode, detail: str) -> None:
        status = Status(request_id, code, detail[:200]).encode()
        self._events.append(Refused(peer, code, detail))
        if peer in self._peer_identity and self._dtls is not None:
            self._send_association(peer, status)
        else:
            self._out.append((status, peer))

    def _send_association(self, peer: Address, data: bytes) -> None:
        assert self._dtls is not None
        connection = self._dtls.connection(peer)
        if connection is not None and connection.is_established:
            self._dtls.send_application_data(peer, data)

    # ------------------------------------------------------------------ the spec's handlers
    def _handlers(self) -> Handlers[Payload]:
        return Handlers(
            guards={
                "is_root": ignoring(self._is_root),
                "registration_acceptable": expecting(
                    RegistrationRequest, self._registration_acceptable
                ),
                "update_acceptable": expecting(KeyUpdate, self._update_acceptable),
            },
            actions={
                "self_issue_key": ignoring(self._self_issue_key),
                "register_with_parent": ignoring(self._register_with_parent),
                "close_associations": ignoring(self._close_associations),
                "answer_key_request": expecting(KeyRequest, self._answer_key_request),
                "refuse_not_ready": expecting(KeyRequest, self._refuse_not_ready),
                "extract_partial_key": expecting(RegistrationRequest, self._extract_partial_key),
                "replace_key": expecting(KeyUpdate, self._replace_key),
                "refuse_registration": _registration(self._refuse_registration),
            },
            builders={
                "KeyResponse": self._build_key_response,
                "RegistrationResponse": self._build_registration_response,
                "Status": self._build_status,
            },
            hold=self._hold,
            emit=self._emit_flight,
        )

    def _hold(self, messages: tuple[str, ...]) -> None:
        raise TwinPeaksError(f"key_server: nothing is built ahead of a flight ({messages})")

    def _emit_flight(self, messages: tuple[str, ...]) -> None:
        for name in messages:
            self._table.builders[name]()

    def _take_reply(self) -> _Reply:
        reply, self._reply = self._reply, None
        assert reply is not None, "the spec emits an answer no action prepared"
        return reply

    def _is_root(self) -> bool:
        return self.config.parent is None

    def _self_issue_key(self) -> None:
        """A root's key under its own params (§8.8: a self-issued anchor); the saved one after
        a restart, so that the anchor clients hold stays valid."""
        if self._saved_key is not None:
            self.key = self._saved_key
            self._events.append(Serving(self.key))
            return
        params, rng = self.config.params, self.config.randomness.random_bytes
        identity = params.identity(self.config.name, self.config.address)
        secret = clpkc.set_secret_value(params, identity, rng)
        partial = clpkc.extract_partial_private_key(self.config.master, secret.request(), rng)
        self.key = clpkc.set_private_key(params, secret, partial)
        self._events.append(Serving(self.key))

    def _register_with_parent(self) -> None:
        parent = self.config.parent
        assert parent is not None
        self._member = Member(
            MemberConfig(
                self.config.name,
                self.config.address,
                parent,
                zone_params=self.config.params,
                port=self.config.port,
                wall_clock=self.config.wall_clock,
                randomness=self.config.randomness,
                timers=self.config.timers,
            )
        )
        self._member.start(self._now)

    def _close_associations(self) -> None:
        if self._member is not None:
            self._member.stop(self._now)
        if self._dtls is not None:
            self._dtls.close_all()

    # ---- key requests (§8.4)
    def _answer_key_request(self, request: KeyRequest) -> None:
        """Build and sign the record for the request; the KeyResponse flight queues it."""
        assert self.key is not None
        record = self._record_for(request.name, request.address)
        response = KeyResponse.signed(request.request_id, record, self.key)
        self._reply = _Reply(
            request.request_id,
            response.encode(),
            Answered(self._peer, request.name, record.record_type),
        )

    def _build_key_response(self) -> None:
        reply = self._take_reply()
        self._out.append((reply.data, self._peer))
        self._events.append(reply.event)

    def _record_for(self, name: str, address: IPAddress) -> KeyRecord:
        zone = self.config.zone
        assert self.key is not None
        common = (
            name,
            address,
            self.key.identity,
            self.config.params,
            int(self.config.wall_clock()),
            self.config.record_ttl,
        )
        if not _strictly_below(name, zone):
            return KeyRecord(RecordType.DENIAL, *common, denial=DenialReason.NOT_IN_ZONE)
        delegation = self._delegation_above(name)
        if delegation is not None:
            return KeyRecord(RecordType.REFERRAL, *common, subject=delegation.subject)
        registration = self.registrations.get((name, address))
        if registration is not None:
            return KeyRecord(RecordType.ANSWER, *common, subject=registration.subject)
        known = any(r.name == name for r in self.registrations.values())
        reason = DenialReason.UNKNOWN_ADDRESS if known else DenialReason.UNKNOWN_NAME
        return KeyRecord(RecordType.DENIAL, *common, denial=reason)

    def _delegation_above(self, name: str) -> Registration | None:
        """The child key server whose zone holds ``name`` strictly (the deepest one)."""
        best: Registration | None = None
        for registration in self.registrations.values():
            if registration.subject.zone_params is None:
                continue
            child = registration.name
            if name.endswith("." + child) and (best is None or len(child) > len(best.name)):
                best = registration
        return best

    def _refuse_not_ready(self, request: KeyRequest) -> None:
        """Key requests before the server has its key get ``server failure``."""
        self._refused = request.request_id

    def _build_status(self) -> None:
        if self.state == TwinPeaksKeyServerState.AWAITING_OWN_KEY:
            self._refusal = (StatusCode.SERVER_FAILURE, "the key server has no key yet")
        code, detail = self._refusal
        self._status(self._peer, self._refused, code, detail)

    # ---- registrations and key updates (§8.2, §8.6)
    def _registration_acceptable(self, message: RegistrationRequest) -> bool:
        return self._acceptable(message.identity.name, message.identity.params_hash, None)

    def _update_acceptable(self, message: KeyUpdate) -> bool:
        return self._acceptable(
            message.identity.name, message.identity.params_hash, message.replaces
        )

    def _acceptable(self, name: str, params_hash: bytes, replaces: int | None) -> bool:
        identity = self._peer_identity.get(self._peer)
        child = self.config.children.get(identity) if identity is not None else None
        if child is None or child.name != name:
            self._refusal = (StatusCode.UNAUTHORISED, f"the association is not bound to {name}")
            return False
        if not _strictly_below(name, self.config.zone) or self._delegated_elsewhere(name):
            self._refusal = (StatusCode.NOT_IN_ZONE, f"{name} is not in zone {self.config.zone}")
            return False
        if params_hash != self.config.params.digest():
            self._refusal = (StatusCode.MALFORMED, "the ID names other params than ours")
            return False
        if replaces is not None and not any(
            r.name == name and r.subject.serial == replaces for r in self.registrations.values()
        ):
            self._refusal = (StatusCode.CONFLICT, f"{name} has no key with serial {replaces}")
            return False
        return True

    def _delegated_elsewhere(self, name: str) -> bool:
        return any(
            r.subject.zone_params is not None
            and r.name != name
            and (name == r.name or name.endswith("." + r.name))
            for r in self.registrations.values()
        )

    def _extract_partial_key(self, message: RegistrationRequest) -> None:
        """Partial-Private-Key-Extract and publication; the RegistrationResponse flight
        sends the answer."""
        self._issue(message)

    def _replace_key(self, message: KeyUpdate) -> None:
        """Stop publishing the replaced key (§8.6) and issue the new one."""
        for key, registration in list(self.registrations.items()):
            if (
                registration.name == message.identity.name
                and registration.subject.serial == message.replaces
            ):
                del self.registrations[key]
        self._issue(message)

    def _issue(self, message: RegistrationRequest | KeyUpdate) -> None:
        identity = message.identity
        partial = clpkc.extract_partial_private_key(
            self.config.master,
            message.partial_key_request(),
            self.config.randomness.random_bytes,
        )
        serial = self._serials.get(identity.name, 0) + 1
        self._serials[identity.name] = serial
        not_before = int(self.config.wall_clock())
        not_after = not_before + self.config.key_lifetime
        public = PublicKey(identity, partial.x_point)
        subject = Subject(
            identity,
            partial.x_point,
            clpkc.public_point(self.config.params, public),
            serial,
            not_before,
            not_after,
            message.zone_params,
            message.port,
        )
        self.registrations[(identity.name, identity.address)] = Registration(subject)
        response = RegistrationResponse.for_partial(
            message.request_id, partial, serial, not_before, not_after
        ).encode()
        self._reply = _Reply(
            message.request_id,
            response,
            ChildRegistered(
                identity.name,
                identity.address.compressed,
                serial,
                isinstance(message, KeyUpdate),
            ),
        )

    def _build_registration_response(self) -> None:
        reply = self._take_reply()
        self._last_answer[self._peer] = (reply.request_id, reply.data)
        self._send_association(self._peer, reply.data)
        self._events.append(reply.event)

    def _refuse_registration(self, message: RegistrationRequest | KeyUpdate) -> None:
        """The refusal computed by the failed guard goes out in the Status flight."""
        self._refused = message.request_id


#: What the key-server machine's handlers receive: a request, or None (local event).
Request: TypeAlias = KeyRequest | RegistrationRequest | KeyUpdate
Payload: TypeAlias = Request | None


@dataclass(frozen=True)
class _Reply:
    """An answer an action prepared for the next flight, and the event it reports."""

    request_id: bytes
    data: bytes
    event: KeyServerEvent


def _registration(
    handler: Callable[[RegistrationRequest | KeyUpdate], None],
) -> Callable[[Payload], None]:
    """Adapt a handler of either registration message (cf. :func:`expecting`)."""

    def call(message: Payload) -> None:
        if not isinstance(message, RegistrationRequest | KeyUpdate):
            raise TwinPeaksError(f"expected a registration, got {type(message).__name__}")
        handler(message)

    return call


def _strictly_below(name: str, zone: str) -> bool:
    return name != zone and (zone == "." or name.endswith("." + zone))


__all__ = [
    "Answered",
    "Child",
    "ChildRegistered",
    "Dropped",
    "KeyServer",
    "KeyServerConfig",
    "KeyServerEvent",
    "OwnKeyFailed",
    "Refused",
    "Registration",
    "Serving",
    "is_service_message",
]
