"""The TwinPeaks key resolver: iterative lookup with a cache (sans-IO; spec/twinpeaks.md §11).

Sections 2.4.1, 2.4.4 and 2.5.1 of the dissertation. Public API (everything a host needs):

* ``Resolver(ResolverConfig(anchors=[...]))`` — pre-load one or more roots
  (:class:`~d2tls.core.twinpeaks.messages.TrustAnchor`, e.g. from :func:`load_anchors`);
* ``lookup(name, now, address=None) -> lookup_id`` — start a lookup; the result comes out of
  :meth:`Resolver.next_event` as :class:`LookupCompleted` (with the validated
  :class:`LookupResult`: record, issuer params, public key Q, timeline) or :class:`LookupFailed`
  (a typed :class:`~d2tls.core.twinpeaks.errors.LookupFailed` or other TwinPeaks error);
* the DNS half, kept apart: a :class:`DnsQuery` event names a name whose A/AAAA records the
  host must fetch (e.g. with dnspython, :func:`d2tls.lab.twinpeaks.answer_dns`); the host
  answers with :meth:`Resolver.dns_answer` (addresses and TTL) or :meth:`Resolver.dns_failure`;
* ``invalidate(name, address)`` — the "outdated public key" path (2.4.4): drop cached records;
* the five :mod:`d2tls.core.sansio` calls for the key-request datagrams. The resolver is also a
  service for local clients: a ``tp-key-request`` from a client starts a lookup whose answer
  (the key server's signed record, unchanged) goes back in a ``tp-key-response``; a
  ``tp-invalidate`` drops the cache entries and is answered with a ``tp-status``.

A lookup learns the name's address from the DNS and the key from the key servers, from the
best root (the anchor whose zone is the longest suffix of the name, a local root at any level)
down, following signed referrals; the answer's ID contains the address, so the two must agree
(an address the key server does not know is a signed denial: :class:`AddressMismatch`). With
several anchors for that zone the lookup runs from each and the answers must agree
(:func:`~d2tls.core.twinpeaks.messages.cross_check`). Responses failing a check of §8.5 are
discarded (and counted), never fatal: an off-path forger cannot end a lookup.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias, TypeVar

import cbor2

from d2tls.core.clock import Clock, wall_time
from d2tls.core.errors import UnexpectedMessage
from d2tls.core.model.machine import Handlers, SpecMachine, expecting, ignoring
from d2tls.core.model.spec import load_spec
from d2tls.core.model.states import TwinPeaksResolverState
from d2tls.core.randomness import SYSTEM, Randomness
from d2tls.core.sansio import Address, Datagram
from d2tls.core.twinpeaks.clpkc import Params, PublicKey
from d2tls.core.twinpeaks.curve import Point
from d2tls.core.twinpeaks.errors import (
    AddressMismatch,
    CrossCheckError,
    EncodingError,
    KeyDenied,
    LookupTimeout,
    TwinPeaksError,
)
from d2tls.core.twinpeaks.identity import IPAddress, normalize_name, parse_address
from d2tls.core.twinpeaks.messages import (
    MAX_MESSAGE_SIZE,
    Invalidate,
    KeyRecord,
    KeyRequest,
    KeyResponse,
    RecordType,
    Status,
    StatusCode,
    TrustAnchor,
    cross_check,
    decode_message,
    new_request_id,
)

RETRANSMIT_INTERVAL: Final = 1.0
MAX_SENDS: Final = 3
MAX_CACHE_ENTRIES: Final = 4096
MAX_LOOKUPS: Final = 1024
MAX_REFERRALS: Final = 16
"""Longest chain followed (a loop of referrals ends here)."""


def load_anchors(data: bytes) -> list[TrustAnchor]:
    """Decode a trust-anchor file: the CBOR array ``tp-trust-anchors`` (§8.8)."""
    if len(data) > 64 * MAX_MESSAGE_SIZE:
        raise EncodingError("trust-anchor file too long")
    try:
        items = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises many types on hostile input
        raise EncodingError(f"trust anchors: not CBOR ({type(exc).__name__})") from None
    if not isinstance(items, list) or not items or not all(isinstance(i, bytes) for i in items):
        raise EncodingError("trust anchors: a non-empty CBOR array of byte strings")
    return [TrustAnchor.decode(item) for item in items]


def dump_anchors(anchors: Sequence[TrustAnchor]) -> bytes:
    """Encode anchors as a trust-anchor file (deterministic CBOR, §8.8)."""
    return bytes(cbor2.dumps([a.encode() for a in anchors], canonical=True))


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class DnsQuery:
    """A name whose A and AAAA records the host must fetch (the DNS interface)."""

    query_id: int
    name: str


@dataclass(frozen=True)
class ServerInfo:
    """A key server to ask: where it is, its key (under ``signer_params``) and its own params
    as KGC (what its records must carry as issuer params)."""

    zone: str
    address: IPAddress
    port: int
    signer_params: Params
    key: PublicKey
    params: Params

    @property
    def addr(self) -> Address:
        return (self.address.compressed, self.port)

    @classmethod
    def of_anchor(cls, anchor: TrustAnchor) -> ServerInfo:
        return cls(
            anchor.params.zone,
            anchor.identity.address,
            anchor.port,
            anchor.signer_params,
            anchor.public_key,
            anchor.params,
        )


@dataclass(frozen=True)
class LookupResult:
    """A validated answer: the record (with the key server's signature), the key and the
    params it was issued under."""

    name: str
    address: IPAddress
    record: KeyRecord
    signature: bytes
    from_cache: bool
    roots: int

    @property
    def params(self) -> Params:
        return self.record.issuer_params

    @property
    def public_key(self) -> PublicKey:
        assert self.record.subject is not None
        return self.record.subject.public_key

    @property
    def q(self) -> Point:
        assert self.record.subject is not None
        return self.record.subject.q


@dataclass(frozen=True)
class LookupCompleted:
    lookup_id: int
    result: LookupResult
    timeline: tuple[str, ...]


@dataclass(frozen=True)
class LookupFailed:
    lookup_id: int
    name: str
    error: TwinPeaksError
    timeline: tuple[str, ...]


@dataclass(frozen=True)
class Discarded:
    """A response or datagram dropped by a check (spec §8.5), with the reason."""

    peer: Address
    reason: str


@dataclass(frozen=True)
class Invalidated:
    name: str
    address: IPAddress
    entries: int


ResolverEvent: TypeAlias = LookupCompleted | LookupFailed | Discarded | Invalidated | DnsQuery


@dataclass
class ResolverConfig:
    anchors: Sequence[TrustAnchor]
    #: Look a name up from every anchor of its zone and require the answers to agree.
    cross_check: bool = True
    wall_clock: Clock = wall_time
    randomness: Randomness = SYSTEM
    retransmit_interval: float = RETRANSMIT_INTERVAL
    max_sends: int = MAX_SENDS
    max_cache_entries: int = MAX_CACHE_ENTRIES

    def __post_init__(self) -> None:
        if not self.anchors:
            raise TwinPeaksError("a resolver needs at least one trust anchor")


class _Cache:
    """A bounded map with expiry (oldest entries go first when full)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: OrderedDict[object, tuple[object, float]] = OrderedDict()

    def get(self, key: object, now: float) -> object | None:
        entry = self.items.get(key)
        if entry is None:
            return None
        if now >= entry[1]:
            del self.items[key]
            return None
        return entry[0]

    def put(self, key: object, value: object, expires: float) -> None:
        self.items[key] = (value, expires)
        self.items.move_to_end(key)
        while len(self.items) > self.limit:
            self.items.popitem(last=False)


# --------------------------------------------------------------------------- one lookup
@dataclass
class ReceivedResponse:
    """A tp-key-response for an outstanding request, as the resolver machine's handlers
    receive it: the message, who sent it, and the outcome of the §8.5 checks (made once)."""

    response: KeyResponse
    peer: Address
    checked: KeyRecord | TwinPeaksError | None = None


R = TypeVar("R")

#: What the resolver machine's handlers receive: a response, or None (local event).
Payload: TypeAlias = ReceivedResponse | None


class Lookup:
    """One lookup: the model of the ``resolver`` machine of spec/twinpeaks.yaml."""

    ROLE = "resolver"

    def __init__(
        self,
        resolver: Resolver,
        lookup_id: int,
        name: str,
        address: IPAddress | None,
        now: float,
        client: tuple[Address, bytes] | None,
    ) -> None:
        self.resolver = resolver
        self.lookup_id = lookup_id
        self.name = name
        self.wanted = address
        self.address: IPAddress | None = address
        self.client = client
        self.started = now
        self.now = now
        self.timeline: list[str] = []
        self.anchors = resolver._anchors_for(name)
        self.chain = 0
        self.server: ServerInfo | None = None
        self.hops = 0
        self.request: KeyRequest | None = None
        self.sends = 0
        self.deadline: float | None = None
        self.finals: list[tuple[KeyRecord, bytes]] = []
        self.queries = 0
        self.dns_query_id = -1
        self.dns_addresses: list[IPAddress] = []
        self.cached: tuple[KeyRecord, bytes] | None = None
        self.error: TwinPeaksError | None = None
        self._table = self._handlers()
        self.driver: SpecMachine[TwinPeaksResolverState, Payload] = SpecMachine(
            load_spec("twinpeaks").role(self.ROLE), TwinPeaksResolverState, self._table
        )

    @property
    def state(self) -> TwinPeaksResolverState:
        """The current state (``spec/twinpeaks.yaml``, role ``resolver``)."""
        return self.driver.state

    def note(self, text: str) -> None:
        self.timeline.append(f"{1000 * (self.now - self.started):8.1f} ms  {text}")

    # ---- the spec's handlers
    def _handlers(self) -> Handlers[Payload]:
        def received(handler: Callable[[ReceivedResponse], R]) -> Callable[[Payload], R]:
            return expecting(ReceivedResponse, handler)

        return Handlers(
            guards={
                "answer_cached": ignoring(self._answer_cached),
                "address_cached": ignoring(self._address_cached),
                "address_agrees": ignoring(self._address_agrees),
                "referral_valid": received(self._referral_valid),
                "answer_valid": received(self._answer_valid),
                "denial_valid": received(self._denial_valid),
                "roots_left": ignoring(self._roots_left),
                "roots_agree": received(self._roots_agree),
            },
            actions={
                "answer_from_cache": ignoring(self._answer_from_cache),
                "query_dns": ignoring(self._query_dns),
                "start_chain": ignoring(self._start_chain),
                "report_address_mismatch": ignoring(self._report_address_mismatch),
                "report_dns_failure": ignoring(self._report_dns_failure),
                "follow_referral": received(self._follow_referral),
                "next_root": received(self._next_root),
                "cache_answer": received(self._cache_answer),
                "report_cross_check": ignoring(self._report_cross_check),
                "report_denial": received(self._report_denial),
                "discard_response": received(self._discard_response),
                "resend_request": ignoring(self._resend_request),
                "report_timeout": ignoring(self._report_timeout),
            },
            builders={"KeyRequest": self._build_key_request},
            hold=self._hold,
            emit=self._emit_flight,
        )

    def _hold(self, messages: tuple[str, ...]) -> None:
        raise TwinPeaksError(f"resolver: nothing is built ahead of a flight ({messages})")

    def _emit_flight(self, messages: tuple[str, ...]) -> None:
        for name in messages:
            self._table.builders[name]()

    # ---- guards
    def _answer_cached(self) -> bool:
        if self.address is None:
            cached = self.resolver.dns_cache.get(self.name, self.now)
            if isinstance(cached, list) and cached:
                self.address = cached[0]
                self.note(f"DNS {self.name} -> {self.address.compressed} (cached)")
        if self.address is None:
            return False
        entry = self.resolver.answers.get((self.name, self.address), self.resolver._wall())
        if isinstance(entry, tuple):
            self.cached = entry
            return True
        return False

    def _address_cached(self) -> bool:
        return self.address is not None and self.wanted is None

    def _address_agrees(self) -> bool:
        if not self.dns_addresses:
            self.error = AddressMismatch(f"the DNS has no address for {self.name}")
            return False
        if self.wanted is not None and self.wanted not in self.dns_addresses:
            self.error = AddressMismatch(
                f"{self.wanted.compressed} is not an address of {self.name} in the DNS"
            )
            return False
        if self.address is None:
            self.address = self.dns_addresses[0]
        return True

    def _check(self, received: ReceivedResponse) -> KeyRecord | TwinPeaksError:
        """The checks of §8.5 on a response (made once per response)."""
        if received.checked is None:
            response, server, request = received.response, self.server, self.request
            assert server is not None and request is not None
            try:
                record = response.verify(
                    request,
                    server.signer_params,
                    server.key,
                    self.resolver._wall(),
                    issuer_params=server.params,
                )
                if record.record_type == RecordType.REFERRAL:
                    self._check_referral(record, server)
                received.checked = record
            except TwinPeaksError as exc:
                received.checked = exc
        return received.checked

    def _check_referral(self, record: KeyRecord, server: ServerInfo) -> None:
        subject = record.subject
        assert subject is not None and subject.zone_params is not None
        child = subject.zone_params.zone
        below = server.zone == "." or child.endswith("." + server.zone)
        if not below or child == server.zone:
            raise EncodingError(f"a referral from {server.zone} to {child} goes up")
        if self.hops >= MAX_REFERRALS:
            raise EncodingError("too many referrals")

    def _valid(self, received: ReceivedResponse, kind: RecordType) -> bool:
        checked = self._check(received)
        return isinstance(checked, KeyRecord) and checked.record_type == kind

    def _referral_valid(self, received: ReceivedResponse) -> bool:
        return self._valid(received, RecordType.REFERRAL)

    def _answer_valid(self, received: ReceivedResponse) -> bool:
        return self._valid(received, RecordType.ANSWER)

    def _denial_valid(self, received: ReceivedResponse) -> bool:
        return self._valid(received, RecordType.DENIAL)

    def _roots_left(self) -> bool:
        return self.chain + 1 < len(self.anchors)

    def _roots_agree(self, received: ReceivedResponse) -> bool:
        records = [r for r, _ in self.finals] + [self._record(received)]
        try:
            cross_check(records)
        except CrossCheckError as exc:
            self.error = exc
            return False
        return True

    def _record(self, received: ReceivedResponse) -> KeyRecord:
        """The checked record (the guard that fired the transition checked it)."""
        checked = self._check(received)
        assert isinstance(checked, KeyRecord)
        return checked

    # ---- actions
    def _answer_from_cache(self) -> None:
        assert self.cached is not None
        self.note(f"key of {self.name} from the cache (no query)")
        self.resolver._complete(self, *self.cached, from_cache=True)

    def _query_dns(self) -> None:
        self.dns_query_id = self.resolver._ask_dns(self)
        self.note(f"DNS query A/AAAA {self.name}")

    def _start_chain(self) -> None:
        assert self.address is not None
        anchor = self.anchors[self.chain]
        self.server = self.resolver._deepest_server(self.chain, anchor, self.name, self.now)
        if self.server.zone != anchor.params.zone:
            self.note(f"referral to {self.server.zone} from the cache")
        self.hops = 0

    def _build_key_request(self) -> None:
        assert self.server is not None and self.address is not None
        rid = new_request_id(self.resolver.config.randomness.random_bytes)
        previous, self.request = self.request, KeyRequest(rid, self.name, self.address)
        self.sends = 0
        self.queries += 1
        self.resolver._track(self, previous)
        self.note(
            f"key request {self.name} at {self.address.compressed} -> {self.server.zone} "
            f"key server {self.server.addr[0]}:{self.server.addr[1]}"
        )
        self._send()

    def _send(self) -> None:
        assert self.request is not None and self.server is not None
        self.resolver.out.append((self.request.encode(), self.server.addr))
        self.sends += 1
        self.deadline = self.now + self.resolver.config.retransmit_interval * 2 ** (self.sends - 1)

    def _resend_request(self) -> None:
        self.note("retransmit")
        self._send()

    def _follow_referral(self, received: ReceivedResponse) -> None:
        record = self._record(received)
        subject = record.subject
        assert subject is not None and subject.zone_params is not None
        assert subject.port is not None and self.server is not None
        child = ServerInfo(
            subject.zone_params.zone,
            subject.identity.address,
            subject.port,
            record.issuer_params,
            subject.public_key,
            subject.zone_params,
        )
        expires = min(float(record.expires), float(subject.not_after))
        self.resolver.referrals.put((self.chain, child.zone), child, expires)
        self.note(f"signed referral from {self.server.zone} to {child.zone}")
        self.server = child
        self.hops += 1

    def _next_root(self, received: ReceivedResponse) -> None:
        self.finals.append((self._record(received), received.response.signature))
        self.note(f"answer from root {self.chain}; cross-checking with root {self.chain + 1}")
        self.chain += 1
        self._start_chain()

    def _cache_answer(self, received: ReceivedResponse) -> None:
        record = self._record(received)
        signature = received.response.signature
        self.finals.append((record, signature))
        subject = record.subject
        assert subject is not None
        self.note(
            f"signed answer for {self.name}: serial {subject.serial}"
            + (f", {len(self.finals)} roots agree" if len(self.finals) > 1 else "")
        )
        expires = min(float(record.expires), float(subject.not_after))
        self.resolver.answers.put((self.name, record.address), (record, signature), expires)
        self.resolver._complete(self, record, signature, from_cache=False)

    def _report_cross_check(self) -> None:
        error = self.error or CrossCheckError("the roots disagree")
        self.note(f"cross-check failed: {error}")
        self.resolver._fail(self, error)

    def _report_denial(self, received: ReceivedResponse) -> None:
        record = self._record(received)
        assert record.denial is not None
        reason = record.denial.name.lower().replace("_", " ")
        error: TwinPeaksError
        if record.denial.name == "UNKNOWN_ADDRESS":
            error = AddressMismatch(
                f"{record.signer.name} has no key for {self.name} at "
                f"{record.address.compressed}: DNS and key servers disagree"
            )
        else:
            error = KeyDenied(f"{record.signer.name} denies {self.name}: {reason}")
        self.note(f"signed denial: {reason}")
        self.resolver._fail(self, error, denial=received.response)

    def _report_address_mismatch(self) -> None:
        error = self.error or AddressMismatch(f"no address for {self.name}")
        self.note(str(error))
        self.resolver._fail(self, error)

    def _report_dns_failure(self) -> None:
        error = self.error or AddressMismatch(f"the DNS gave no address for {self.name}")
        self.note(str(error))
        self.resolver._fail(self, error)

    def _discard_response(self, received: ReceivedResponse) -> None:
        checked = self._check(received)
        reason = (
            f"{type(checked).__name__}: {checked}"
            if isinstance(checked, TwinPeaksError)
            else "unexpected record"
        )
        self.note(f"discarded a response: {reason}")
        self.resolver._discard(received.peer, reason)

    def _report_timeout(self) -> None:
        error = LookupTimeout(f"no valid key response for {self.name} after {self.sends} sends")
        self.note(str(error))
        self.resolver._fail(self, error)


# --------------------------------------------------------------------------- the resolver
class Resolver:
    """The key resolver (see the module docstring)."""

    def __init__(self, config: ResolverConfig) -> None:
        self.config = config
        self.anchors = list(config.anchors)
        self.events: deque[ResolverEvent] = deque()
        self.out: list[Datagram] = []
        self.answers = _Cache(config.max_cache_entries)
        self.referrals = _Cache(config.max_cache_entries)
        self.dns_cache = _Cache(config.max_cache_entries)
        self._lookups: dict[int, Lookup] = {}
        self._by_request: dict[bytes, Lookup] = {}
        self._dns_pending: dict[int, Lookup] = {}
        self._ids = itertools.count(1)
        self.counters = {"queries": 0, "discarded": 0, "cache_hits": 0, "lookups": 0}

    def _wall(self) -> int:
        return int(self.config.wall_clock())

    # ------------------------------------------------------------------ API
    def lookup(self, name: str, now: float, address: str | IPAddress | None = None) -> int:
        """Start a lookup; raises InvalidIdentity for a name or address not in §3 form."""
        return self._start(normalize_name(name), now, address, None)

    def _start(
        self,
        name: str,
        now: float,
        address: str | IPAddress | None,
        client: tuple[Address, bytes] | None,
    ) -> int:
        if len(self._lookups) >= MAX_LOOKUPS:
            raise TwinPeaksError(f"more than {MAX_LOOKUPS} lookups in progress")
        wanted = parse_address(address) if address is not None else None
        lookup = Lookup(self, next(self._ids), name, wanted, now, client)
        self._lookups[lookup.lookup_id] = lookup
        self.counters["lookups"] += 1
        if not lookup.anchors:
            self._fail(lookup, KeyDenied(f"no trust anchor covers {name}"))
            return lookup.lookup_id
        lookup.driver.fire_local("lookup", None)
        return lookup.lookup_id

    def dns_answer(
        self, query_id: int, addresses: Sequence[str | IPAddress], ttl: float, now: float
    ) -> None:
        """The A and AAAA records of a :class:`DnsQuery` (``ttl``: seconds to cache them)."""
        lookup = self._dns_pending.pop(query_id, None)
        if lookup is None:
            return
        parsed: list[IPAddress] = []
        for address in addresses:
            try:
                parsed.append(parse_address(address))
            except TwinPeaksError:
                continue  # e.g. a mapped or scoped address: not an identity address
        lookup.now = now
        lookup.dns_addresses = parsed
        lookup.note(
            f"DNS {lookup.name} -> {', '.join(a.compressed for a in parsed) or 'no address'}"
        )
        if parsed:
            self.dns_cache.put(lookup.name, parsed, now + max(0.0, ttl))
        lookup.driver.fire_local("dns_answer", None)

    def dns_failure(self, query_id: int, reason: str, now: float) -> None:
        lookup = self._dns_pending.pop(query_id, None)
        if lookup is None:
            return
        lookup.now = now
        lookup.error = AddressMismatch(f"DNS: {reason}")
        lookup.driver.fire_local("dns_failed", None)

    def invalidate(self, name: str, address: str | IPAddress) -> int:
        """Drop the cached answer and DNS data of ``name`` (dissertation 2.4.4)."""
        name, parsed = normalize_name(name), parse_address(address)
        dropped = 0
        for key in ((name, parsed),):
            if self.answers.items.pop(key, None) is not None:
                dropped += 1
        if self.dns_cache.items.pop(name, None) is not None:
            dropped += 1
        self.events.append(Invalidated(name, parsed, dropped))
        return dropped

    # ------------------------------------------------------------------ sans-IO
    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        try:
            message = decode_message(bytes(data))
        except TwinPeaksError as exc:
            self._discard(addr, f"malformed: {exc}")
            return
        if isinstance(message, KeyResponse):
            lookup = self._by_request.get(message.request_id)
            if lookup is None:
                self._discard(addr, "no request outstanding with this ID")
                return
            lookup.now = now
            try:
                lookup.driver.fire("recv_KeyResponse", ReceivedResponse(message, addr))
            except UnexpectedMessage:
                self._discard(addr, "response after the lookup ended")
        elif isinstance(message, KeyRequest):
            try:
                self._start(message.name, now, message.address, (addr, message.request_id))
            except TwinPeaksError as exc:
                status = Status(message.request_id, StatusCode.SERVER_FAILURE, str(exc)[:200])
                self.out.append((status.encode(), addr))
        elif isinstance(message, Invalidate):
            self.invalidate(message.name, message.address)
            self.out.append((Status(message.request_id, StatusCode.OK).encode(), addr))
        else:
            self._discard(addr, f"unexpected {type(message).__name__}")

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        out, self.out = self.out, []
        return out

    def next_timer(self) -> float | None:
        deadlines = [
            lookup.deadline for lookup in self._lookups.values() if lookup.deadline is not None
        ]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        for lookup in list(self._lookups.values()):
            if lookup.deadline is not None and now >= lookup.deadline:
                lookup.now = now
                lookup.deadline = None
                trigger = "retransmit" if lookup.sends < self.config.max_sends else "timeout"
                if lookup.driver.accepts(trigger):
                    lookup.driver.fire_local(trigger, None)

    def next_event(self) -> ResolverEvent | None:
        return self.events.popleft() if self.events else None

    # ------------------------------------------------------------------ for lookups
    def _anchors_for(self, name: str) -> list[TrustAnchor]:
        """Anchors whose zone is the longest suffix of ``name``: all of them when
        cross-checking, else the first (§8.8)."""
        covering = [
            a for a in self.anchors if a.params.zone == "." or name.endswith("." + a.params.zone)
        ]
        if not covering:
            return []
        depth = max(_depth(a.params.zone) for a in covering)
        best = [a for a in covering if _depth(a.params.zone) == depth]
        return best if self.config.cross_check else best[:1]

    def _deepest_server(self, chain: int, anchor: TrustAnchor, name: str, now: float) -> ServerInfo:
        """The deepest cached key server of this root's chain whose zone holds ``name``."""
        labels = name.split(".")
        for start in range(1, len(labels)):
            zone = ".".join(labels[start:])
            server = self.referrals.get((chain, zone), self._wall())
            if isinstance(server, ServerInfo):
                return server
        return ServerInfo.of_anchor(anchor)

    def _ask_dns(self, lookup: Lookup) -> int:
        query = DnsQuery(next(self._ids), lookup.name)
        self.events.append(query)
        self._dns_pending[query.query_id] = lookup
        return query.query_id

    def _track(self, lookup: Lookup, previous: KeyRequest | None) -> None:
        """Index the lookup by its new request ID (and forget the previous one)."""
        if previous is not None:
            self._by_request.pop(previous.request_id, None)
        assert lookup.request is not None
        self._by_request[lookup.request.request_id] = lookup
        self.counters["queries"] += 1

    def _complete(
        self, lookup: Lookup, record: KeyRecord, signature: bytes, *, from_cache: bool
    ) -> None:
        assert lookup.address is not None
        if from_cache:
            self.counters["cache_hits"] += 1
        result = LookupResult(
            lookup.name, record.address, record, signature, from_cache, max(1, len(lookup.finals))
        )
        self._finish(lookup)
        self.events.append(LookupCompleted(lookup.lookup_id, result, tuple(lookup.timeline)))
        if lookup.client is not None:
            peer, rid = lookup.client
            self.out.append((KeyResponse(rid, record, signature).encode(), peer))

    def _fail(
        self, lookup: Lookup, error: TwinPeaksError, denial: KeyResponse | None = None
    ) -> None:
        self._finish(lookup)
        timeline = tuple(lookup.timeline)
        self.events.append(LookupFailed(lookup.lookup_id, lookup.name, error, timeline))
        if lookup.client is not None:
            peer, rid = lookup.client
            if denial is not None:
                answer = KeyResponse(rid, denial.record, denial.signature).encode()
            else:
                answer = Status(rid, StatusCode.SERVER_FAILURE, str(error)[:200]).encode()
            self.out.append((answer, peer))

    def _finish(self, lookup: Lookup) -> None:
        lookup.deadline = None
        self._lookups.pop(lookup.lookup_id, None)
        if lookup.request is not None:
            self._by_request.pop(lookup.request.request_id, None)

    def _discard(self, addr: Address, reason: str) -> None:
        self.counters["discarded"] += 1
        self.events.append(Discarded(addr, reason))


def _depth(zone: str) -> int:
    return 0 if zone == "." else zone.count(".") + 1


__all__ = [
    "Discarded",
    "DnsQuery",
    "Invalidated",
    "LookupCompleted",
    "LookupFailed",
    "LookupResult",
    "Resolver",
    "ResolverConfig",
    "ResolverEvent",
    "ServerInfo",
    "dump_anchors",
    "load_anchors",
]
