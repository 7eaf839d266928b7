"""TwinPeaks key resolution for ``d2tls bench auth``: the smallest lookup over our codecs.

**Stand-in, clearly marked.** The key-server roles of spec/twinpeaks.md §8 (their state
machines, timers, retries, rate limits) are not in this branch; this module is the smallest
key service and resolver that exchanges the real messages of ``d2tls.twinpeaks.messages``
over UDP on 127.0.0.1, one message per datagram, so that the benchmark measures what the
dissertation measures (section 2.6.3: key resolution with cold and warm caches):

* :class:`KeyServer` answers a ``tp-key-request`` with a ``tp-key-response`` signed by its
  own TwinPeaks key (§8.4): an answer for its members, a referral to a child key server
  (carrying the child's params and port), or a denial. It signs every response afresh.
* :class:`KeyResolver` is the client's local key resolver (co-located with it, section 2.6.2):
  from a trust anchor (the root's params, ID, X and port) it sends key requests and follows
  referrals down, verifying each response with ``KeyResponse.verify`` (the checks of §8.5:
  request ID, name and address, signature, issuer params, times, the Q binding). It caches
  validated referrals and answers until their TTL runs out; :meth:`KeyResolver.flush` empties
  the cache (a cold resolver).

The hierarchy mirrors the DNS one of the bench: a root key server whose zone is ``test``
(an island root, §8.8), a TLK server ``example.test``, an SLK server ``iot.example.test`` and
the member ``www.iot.example.test``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass, field
from typing import Final, cast

from d2tls.dtls.twinpeaks import ResolvedKey
from d2tls.errors import D2TLSError
from d2tls.twinpeaks import clpkc
from d2tls.twinpeaks.clpkc import FullPrivateKey, MasterKey, Params, PublicKey
from d2tls.twinpeaks.messages import (
    DenialReason,
    KeyRecord,
    KeyRequest,
    KeyResponse,
    RecordType,
    Subject,
    new_request_id,
)

Address = tuple[str, int]
LOOPBACK: Final = "127.0.0.1"
#: Cache lifetime of the records the key servers sign (seconds).
RECORD_TTL: Final = 3600
#: Validity of the keys the key servers publish (seconds from setup).
KEY_VALIDITY: Final = 30 * 86400


class KeyLookupFailed(D2TLSError):
    """A key lookup failed: no answer, a denial, or a response that does not verify."""


def enrol(master: MasterKey, name: str, address: str = LOOPBACK) -> FullPrivateKey:
    """CL-PKC enrolment (spec/twinpeaks.md §4.3): a member of ``master``'s KGC gets its key."""
    params = master.params
    secret = clpkc.set_secret_value(params, params.identity(name, address))
    partial = clpkc.extract_partial_private_key(master, secret.request())
    return clpkc.set_private_key(params, secret, partial)


def _subject(key: FullPrivateKey, now: int, zone: Params | None, port: int | None) -> Subject:
    return Subject(
        key.identity, key.x_point, key.q, 1, now - 60, now + KEY_VALIDITY, zone, port
    )


@dataclass
class KeyServer:
    """One key server: the KGC of ``master.params.zone`` holding its own key ``key``."""

    master: MasterKey
    key: FullPrivateKey
    #: Members: name -> their full key (only the public part is published).
    members: dict[str, FullPrivateKey] = field(default_factory=dict)
    #: Child key servers: zone -> (their key as our member, their params, their port).
    children: dict[str, tuple[FullPrivateKey, Params, int]] = field(default_factory=dict)
    requests: int = 0

    def respond(self, data: bytes) -> bytes | None:
        """A signed key response to a key request, None for anything else (dropped)."""
        try:
            request = KeyRequest.decode(data)
        except D2TLSError:
            return None
        self.requests += 1
        now = int(time.time())
        name, zone = request.name, self.master.params.zone
        subject: Subject | None = None
        denial: DenialReason | None = None
        kind = RecordType.DENIAL
        child = next((c for c in self.children if name.endswith("." + c)), None)
        if child is not None:
            child_key, child_params, port = self.children[child]
            kind, subject = RecordType.REFERRAL, _subject(child_key, now, child_params, port)
        elif name in self.members:
            member = self.members[name]
            if member.identity.address == request.address:
                kind, subject = RecordType.ANSWER, _subject(member, now, None, None)
            else:
                denial = DenialReason.UNKNOWN_ADDRESS
        elif zone == "." or name.endswith("." + zone):
            denial = DenialReason.UNKNOWN_NAME
        else:
            denial = DenialReason.NOT_IN_ZONE
        record = KeyRecord(
            kind, name, request.address, self.key.identity, self.master.params, now,
            RECORD_TTL, subject, denial,
        )  # fmt: skip
        return KeyResponse.signed(request.request_id, record, self.key).encode()


class _KeyServerProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: KeyServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        answer = self.server.respond(data)
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)


async def serve(server: KeyServer) -> tuple[asyncio.DatagramTransport, Address]:
    """Serve ``server`` on 127.0.0.1 and a free UDP port (in the running loop)."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _KeyServerProtocol(server), local_addr=(LOOPBACK, 0)
    )
    address = transport.get_extra_info("sockname")
    return transport, (address[0], address[1])


@dataclass(frozen=True)
class TrustAnchor:
    """A pre-loaded root key server (spec §8.8): its params as KGC (its own key is self-issued
    under them), its own public key and its address."""

    params: Params
    key: PublicKey
    address: Address


@dataclass
class Hierarchy:
    """The bench's key-server hierarchy and the member key the DTLS server uses."""

    root: KeyServer
    tld: KeyServer
    sld: KeyServer
    member: FullPrivateKey

    @classmethod
    def create(cls, member_name: str) -> Hierarchy:
        labels = member_name.split(".")
        sld_zone, tld_zone, top_zone = (".".join(labels[i:]) for i in (1, 2, 3))
        root_master = clpkc.setup(top_zone)
        tld_master = clpkc.setup(tld_zone)
        sld_master = clpkc.setup(sld_zone)
        root = KeyServer(root_master, enrol(root_master, f"keys.{top_zone}"))
        tld = KeyServer(tld_master, enrol(root_master, tld_zone))
        sld = KeyServer(sld_master, enrol(tld_master, sld_zone))
        member = enrol(sld_master, member_name)
        sld.members[member_name] = member
        return cls(root, tld, sld, member)

    def link(self, tld_port: int, sld_port: int) -> None:
        """Publish the referrals with the ports clients reach the children on (relays)."""
        self.root.children[self.tld.master.params.zone] = (
            self.tld.key, self.tld.master.params, tld_port
        )  # fmt: skip
        self.tld.children[self.sld.master.params.zone] = (
            self.sld.key, self.sld.master.params, sld_port
        )  # fmt: skip

    def anchor(self, root_address: Address) -> TrustAnchor:
        return TrustAnchor(self.root.master.params, self.root.key.public_key, root_address)


@dataclass
class _Server:
    """A key server the resolver knows: the key it signs with (and the params that key was
    issued under), the params its records must carry, and where it listens."""

    key: PublicKey
    key_params: Params
    zone_params: Params
    address: Address
    expires: float


@dataclass
class KeyResolver:
    """The client's local key resolver (spec §8.3-8.5), with a cache."""

    anchor: TrustAnchor
    timeout: float = 2.0
    retries: int = 3
    queries: int = 0
    bytes: int = 0
    _answers: dict[tuple[str, str], tuple[ResolvedKey, float]] = field(default_factory=dict)
    _servers: dict[str, _Server] = field(default_factory=dict)

    def flush(self) -> None:
        self._answers.clear()
        self._servers.clear()

    def _closest(self, name: str, now: float) -> _Server:
        best: tuple[int, _Server] | None = None
        for zone, server in self._servers.items():
            if server.expires > now and name.endswith("." + zone):
                if best is None or len(zone) > best[0]:
                    best = (len(zone), server)
        if best is not None:
            return best[1]
        a = self.anchor
        return _Server(a.key, a.params, a.params, a.address, float("inf"))

    def _exchange(self, server: _Server, request: KeyRequest) -> KeyResponse:
        wire = request.encode()
        for _ in range(self.retries):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.connect(server.address)
                sock.send(wire)
                self.queries += 1
                self.bytes += len(wire)
                deadline = time.monotonic() + self.timeout
                while (left := deadline - time.monotonic()) > 0:
                    sock.settimeout(left)
                    try:
                        data = sock.recv(4096)
                    except (TimeoutError, OSError):
                        break
                    self.bytes += len(data)
                    try:
                        response = KeyResponse.decode(data)
                    except D2TLSError:
                        continue
                    if response.request_id == request.request_id:
                        return response
        raise KeyLookupFailed(f"no key response from port {server.address[1]}")

    def resolve(self, name: str, address: str) -> ResolvedKey:
        """The key of ``name`` at ``address`` (the address the DNS gave), validated down the
        hierarchy; a cached answer is returned without a query."""
        now = time.time()
        cached = self._answers.get((name, address))
        if cached is not None and cached[1] > now:
            return cached[0]
        server = self._closest(name, now)
        for _ in range(8):
            request = KeyRequest(new_request_id(), name, ipaddress.ip_address(address))
            response = self._exchange(server, request)
            try:
                record = response.verify(
                    request, server.key_params, server.key, int(now),
                    issuer_params=server.zone_params,
                )  # fmt: skip
            except D2TLSError as exc:
                raise KeyLookupFailed(f"key response for {name} rejected: {exc}") from exc
            subject = record.subject
            if record.record_type == RecordType.ANSWER and subject is not None:
                resolved = ResolvedKey(record.issuer_params, subject.public_key)
                self._answers[(name, address)] = (resolved, record.expires)
                return resolved
            if record.record_type == RecordType.REFERRAL and subject is not None:
                assert subject.zone_params is not None and subject.port is not None
                child = _Server(
                    subject.public_key,
                    record.issuer_params,
                    subject.zone_params,
                    (str(subject.identity.address), subject.port),
                    record.expires,
                )
                self._servers[subject.identity.name] = child
                server = child
                continue
            raise KeyLookupFailed(f"key server denied {name}: {record.denial!r}")
        raise KeyLookupFailed(f"{name}: too many referrals")


__all__ = [
    "Hierarchy",
    "KeyLookupFailed",
    "KeyResolver",
    "KeyServer",
    "TrustAnchor",
    "enrol",
    "serve",
]
