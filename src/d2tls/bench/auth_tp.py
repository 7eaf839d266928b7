"""TwinPeaks key resolution for ``d2tls bench auth``, with the project's TwinPeaks roles.

The hierarchy mirrors the bench's DNS one (section 2.6.2 of the dissertation: key servers
where the DNS servers are): a root key server for ``test`` (an island root, spec §8.8), the
TLK server ``example.test`` and the SLK server ``iot.example.test``, each a
:class:`~d2tls.core.twinpeaks.keyserver.KeyServer`
hosted by :class:`~d2tls.net.pump.Pump` on its own
UDP port; every child registers with its parent over DTLS-PSK (§8.2), and the web server's key
is a :class:`~d2tls.core.twinpeaks.member.Member` registered with the SLK server.

The key servers publish the port of the delay relay in front of them (the port a client
reaches them on), so referrals lead the resolver through the relays; registrations go
straight to the parent's socket (set-up, not measured).

The client's local key resolver is :class:`~d2tls.core.twinpeaks.resolver.Resolver` (sans-IO),
hosted here by a blocking loop on one UDP socket in the client's thread (:func:`resolve`),
which asks its DNS questions of the bench's validating resolver (the server's A record is
already in its cache: the DNS lookup comes first and is measured separately). A cold resolver is a
fresh instance; a warm one answers from its cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import select
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from d2tls.bench.auth_lab import AuthBenchError
from d2tls.core.dtls.messages import TwinPeaksHello
from d2tls.core.dtls.rawpk import spki_of
from d2tls.core.dtls.twinpeaks import hello_for
from d2tls.core.twinpeaks import clpkc
from d2tls.core.twinpeaks.clpkc import FullPrivateKey
from d2tls.core.twinpeaks.keyserver import Child, KeyServer, KeyServerConfig, Serving
from d2tls.core.twinpeaks.member import Member, MemberConfig, ParentLink, Registered
from d2tls.core.twinpeaks.messages import TrustAnchor
from d2tls.core.twinpeaks.resolver import (
    DnsQuery,
    LookupCompleted,
    LookupFailed,
    Resolver,
    ResolverConfig,
)
from d2tls.net.pump import Pump

Address = tuple[str, int]
LOOPBACK: Final = "127.0.0.1"
#: Seconds the hierarchy may take to register every child.
START_TIMEOUT: Final = 60.0
#: Seconds one lookup may take.
LOOKUP_TIMEOUT: Final = 30.0


def _psk(label: str) -> bytes:
    return hashlib.sha256(b"d2tls-bench-auth|" + label.encode()).digest()


@dataclass(frozen=True)
class Zones:
    """The three key-server zones above ``member`` (``www.iot.example.test``: ``test``,
    ``example.test``, ``iot.example.test``)."""

    member: str

    @property
    def top(self) -> str:
        return ".".join(self.member.split(".")[3:])

    @property
    def tld(self) -> str:
        return ".".join(self.member.split(".")[2:])

    @property
    def sld(self) -> str:
        return ".".join(self.member.split(".")[1:])


@dataclass
class Started:
    """The running hierarchy: the pumps to close, the member key and the trust anchor."""

    pumps: list[Pump[Any]]
    member_key: FullPrivateKey
    anchor: TrustAnchor


async def _serving(pump: Pump[Any], kind: type, what: str) -> Any:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        event = await pump.next_event(max(0.1, deadline - time.monotonic()))
        if isinstance(event, kind):
            return event
        if time.monotonic() > deadline:
            raise AuthBenchError(f"{what} did not start: last event {event!r}")


async def start_hierarchy(member: str, real: dict[str, int], published: dict[str, int]) -> Started:
    """Start the key servers on ``real`` ports (keys ``top``, ``tld``, ``sld``) publishing the
    ``published`` ones, register the member ``member`` and return the trust anchor."""
    zones = Zones(member)
    masters = {z: clpkc.setup(z) for z in (zones.top, zones.tld, zones.sld)}
    psks = {name: _psk(name) for name in (zones.tld, zones.sld, member)}
    pumps: list[Pump[Any]] = []

    def link(parent_zone: str, role: str, child: str) -> ParentLink:
        return ParentLink(
            (LOOPBACK, real[role]), masters[parent_zone].params, child.encode(), psks[child]
        )

    configs = [
        ("top", KeyServerConfig(
            zones.top, f"keys.{zones.top}", LOOPBACK, published["top"], masters[zones.top],
            children={zones.tld.encode(): Child(zones.tld, psks[zones.tld])},
        )),
        ("tld", KeyServerConfig(
            zones.tld, zones.tld, LOOPBACK, published["tld"], masters[zones.tld],
            children={zones.sld.encode(): Child(zones.sld, psks[zones.sld])},
            parent=link(zones.top, "top", zones.tld),
        )),
        ("sld", KeyServerConfig(
            zones.sld, zones.sld, LOOPBACK, published["sld"], masters[zones.sld],
            children={member.encode(): Child(member, psks[member])},
            parent=link(zones.tld, "tld", zones.sld),
        )),
    ]  # fmt: skip
    try:
        servers: dict[str, KeyServer] = {}
        for role, config in configs:
            server = KeyServer(config)
            pump = await Pump.open(server, (LOOPBACK, real[role]))
            pumps.append(pump)
            server.start(pump.now)
            pump.poke()
            await _serving(pump, Serving, f"key server {config.zone}")
            servers[role] = server
        holder = Member(MemberConfig(member, LOOPBACK, link(zones.sld, "sld", member)))
        pump = await Pump.open(holder, (LOOPBACK, 0))
        pumps.append(pump)
        holder.start(pump.now)
        pump.poke()
        registered = await _serving(pump, Registered, f"member {member}")
        return Started(pumps, registered.key, servers["top"].trust_anchor())
    except BaseException:
        for pump in pumps:
            pump.close()
        raise


@dataclass(frozen=True)
class ResolvedServerKey:
    """What a lookup gives the DTLS client: the server's raw key and the extension."""

    spki: bytes
    hello: TwinPeaksHello
    from_cache: bool


class KeyResolver:
    """A :class:`Resolver` of the TwinPeaks roles hosted on a blocking UDP socket."""

    def __init__(
        self, anchors: Sequence[TrustAnchor], dns: Callable[[str], tuple[list[str], float]]
    ) -> None:
        self.anchors = list(anchors)
        self.dns = dns
        self.bytes = 0
        self.datagrams = 0
        self._resolver = self._fresh()

    def _fresh(self) -> Resolver:
        return Resolver(ResolverConfig(anchors=self.anchors, cross_check=False))

    def flush(self) -> None:
        """A cold resolver: a new instance with empty caches."""
        self._resolver = self._fresh()

    def _send(self, resolver: Resolver, sock: socket.socket) -> None:
        for data, addr in resolver.datagrams_to_send(time.monotonic()):
            sock.sendto(data, addr)
            self.bytes += len(data)
            self.datagrams += 1

    def resolve(self, name: str) -> ResolvedServerKey:
        """The validated key of ``name`` (spec §8.3-8.5), then the raw key and the TwinPeaks
        extension computed from the record's Q (checked by the resolver). The resolver's DNS
        queries are answered by ``dns`` (addresses and TTL)."""
        resolver = self._resolver
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((LOOPBACK, 0))
            resolver.lookup(name, time.monotonic())
            deadline = time.monotonic() + LOOKUP_TIMEOUT
            while True:
                now = time.monotonic()
                self._send(resolver, sock)
                while (event := resolver.next_event()) is not None:
                    if isinstance(event, DnsQuery):
                        addresses, ttl = self.dns(event.name)
                        resolver.dns_answer(event.query_id, addresses, ttl, time.monotonic())
                        self._send(resolver, sock)
                    elif isinstance(event, LookupCompleted):
                        result = event.result
                        spki = spki_of(result.q.to_public_key())
                        hello = hello_for(result.params, result.public_key)
                        return ResolvedServerKey(spki, hello, result.from_cache)
                    elif isinstance(event, LookupFailed):
                        raise AuthBenchError(f"TwinPeaks lookup of {name} failed: {event.error}")
                if now > deadline:
                    raise AuthBenchError(f"TwinPeaks lookup of {name} timed out")
                timer = resolver.next_timer()
                wait = min(deadline, timer if timer is not None else deadline) - now
                ready, _, _ = select.select([sock], [], [], max(0.0, wait))
                if ready:
                    data, peer = sock.recvfrom(65535)
                    self.bytes += len(data)
                    self.datagrams += 1
                    resolver.receive_datagram(data, (peer[0], peer[1]), time.monotonic())
                else:
                    resolver.handle_timer(time.monotonic())


def close(started: Started, loop: asyncio.AbstractEventLoop) -> None:
    for pump in started.pumps:
        loop.call_soon_threadsafe(pump.close)


__all__ = ["KeyResolver", "ResolvedServerKey", "Started", "Zones", "close", "start_hierarchy"]
