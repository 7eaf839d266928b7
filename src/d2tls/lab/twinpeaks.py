"""The TwinPeaks demo hierarchy, wired for an in-memory network or for real UDP on loopback.

:func:`build_hierarchy` sets up the hierarchy of spec/twinpeaks.md §2 (section 2.4.1 of the
dissertation): a root key server, the ``test`` TLK server, the ``example.test`` SLK server and
the members ``alice.example.test`` and ``bob.example.test``, each association with its own PSK;
each member serves DTLS with its TwinPeaks key on its port (:class:`MemberService`, an echo).
:class:`MemoryNet` delivers datagrams between sans-IO roles in memory (the simulator of the
attacker worlds and of fast tests); :func:`serve_dns` answers a resolver's DNS queries from
a real DNS server (Knot DNS of :mod:`d2tls.lab.dns`, through dnspython).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from d2tls.core.clock import Clock, wall_time
from d2tls.core.randomness import SYSTEM, Randomness, SeededRandomness
from d2tls.core.sansio import Address, Datagram
from d2tls.core.twinpeaks import clpkc
from d2tls.core.twinpeaks.client import TwinPeaksClient
from d2tls.core.twinpeaks.keyserver import Child, KeyServer, KeyServerConfig
from d2tls.core.twinpeaks.member import Member, MemberConfig, ParentLink
from d2tls.core.twinpeaks.resolver import DnsQuery, Resolver, ResolverConfig
from d2tls.core.twinpeaks.service import MemberService
from d2tls.lab.dns import DnsLabError, NameNotFound
from d2tls.lab.dns import Resolver as DnsResolver

LOOPBACK = "127.0.0.1"
ROOT_NAME = "root.keys"
MEMBERS = ("alice", "bob")
DNS_CACHE_TTL = 60.0


def _psk(label: str, randomness: Randomness) -> bytes:
    return hashlib.sha256(b"tp-demo-psk|" + label.encode() + randomness.random_bytes(16)).digest()


@dataclass
class Hierarchy:
    """Every role of the demo hierarchy, by name, and their addresses."""

    root: KeyServer
    tld: KeyServer
    sld: KeyServer
    members: dict[str, Member]
    addresses: dict[str, Address] = field(default_factory=dict)
    #: Each member's DTLS server with its TwinPeaks key, on the member's port (§9).
    services: dict[str, MemberService] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, member in self.members.items():
            self.services.setdefault(name, MemberService(member, echo=True))

    def roles(self) -> dict[Address, Any]:
        nodes: dict[Address, Any] = {
            self.addresses["root"]: self.root,
            self.addresses["test"]: self.tld,
            self.addresses["example.test"]: self.sld,
        }
        for name, service in self.services.items():
            nodes[self.addresses[name]] = service
        return nodes

    def start(self, now: float) -> None:
        self.root.start(now)
        self.tld.start(now)
        self.sld.start(now)
        for member in self.members.values():
            member.start(now)


def build_hierarchy(
    ports: dict[str, int],
    *,
    randomness: Randomness = SYSTEM,
    wall_clock: Clock = wall_time,
    extra_roots: int = 0,
    members: Sequence[str] = MEMBERS,
) -> Hierarchy:
    """The demo hierarchy on 127.0.0.1. ``ports`` maps ``root``, ``test``, ``example.test``
    and each member's short name (``members``, below ``example.test``) to a UDP port. The KGC
    setups take ``randomness``."""
    rng = randomness.random_bytes
    addresses = {key: (LOOPBACK, port) for key, port in ports.items()}
    masters = {zone: clpkc.setup(zone, rng) for zone in (".", "test", "example.test")}
    psks = {name: _psk(name, randomness) for name in ("test", "example.test", *members)}
    sld_children = {
        f"{m}.example.test".encode(): Child(f"{m}.example.test", psks[m]) for m in members
    }
    common: dict[str, Any] = {"wall_clock": wall_clock, "randomness": randomness}
    root = KeyServer(
        KeyServerConfig(
            ".",
            ROOT_NAME,
            LOOPBACK,
            ports["root"],
            masters["."],
            children={b"test": Child("test", psks["test"])},
            **common,
        )
    )
    tld = KeyServer(
        KeyServerConfig(
            "test",
            "test",
            LOOPBACK,
            ports["test"],
            masters["test"],
            children={b"example.test": Child("example.test", psks["example.test"])},
            parent=ParentLink(addresses["root"], masters["."].params, b"test", psks["test"]),
            **common,
        )
    )
    sld = KeyServer(
        KeyServerConfig(
            "example.test",
            "example.test",
            LOOPBACK,
            ports["example.test"],
            masters["example.test"],
            children=sld_children,
            parent=ParentLink(
                addresses["test"], masters["test"].params, b"example.test", psks["example.test"]
            ),
            **common,
        )
    )
    roles = {
        m: Member(
            MemberConfig(
                f"{m}.example.test",
                LOOPBACK,
                ParentLink(
                    addresses["example.test"],
                    masters["example.test"].params,
                    f"{m}.example.test".encode(),
                    psks[m],
                ),
                **common,
            )
        )
        for m in members
    }
    return Hierarchy(root, tld, sld, roles, addresses)


def seeded(seed: str) -> SeededRandomness:
    """Deterministic randomness for simulations and tests only."""
    return SeededRandomness(seed)


# --------------------------------------------------------------------------- in memory
Interceptor = Callable[[bytes, Address, Address], Iterable[tuple[bytes, Address, Address]]]


class MemoryNet:
    """Delivers datagrams between sans-IO roles in memory, in order, with virtual time.

    ``nodes`` maps an address to a role; a role's datagrams leave from its address. An
    ``interceptor`` (the attacker of :mod:`d2tls.adversary.twinpeaks`) sees every datagram
    ``(data, source, destination)`` and returns what is delivered instead (drop, forge, add).
    ``dns`` answers resolver DNS queries in memory when no real DNS is wired in."""

    def __init__(self, nodes: dict[Address, Any], now: float = 0.0) -> None:
        self.nodes = nodes
        self.now = now
        self.interceptor: Interceptor | None = None
        self.delivered = 0
        self.dns: Callable[[str], list[str]] | None = None
        #: Events of resolvers whose DNS this net answers (the DNS queries taken out).
        self.events: dict[Address, list[Any]] = {}

    def take(self, address: Address) -> list[Any]:
        """The events collected from the resolver at ``address`` since the last call."""
        return self.events.pop(address, [])

    def add(self, address: Address, role: Any) -> None:
        self.nodes[address] = role

    def _outgoing(self) -> list[tuple[bytes, Address, Address]]:
        out: list[tuple[bytes, Address, Address]] = []
        for source, role in list(self.nodes.items()):
            if isinstance(role, Resolver | TwinPeaksClient) and self.dns is not None:
                while (event := role.next_event()) is not None:
                    if isinstance(event, DnsQuery):
                        role.dns_answer(event.query_id, self.dns(event.name), 60.0, self.now)
                    else:
                        self.events.setdefault(source, []).append(event)
            datagrams: list[Datagram] = role.datagrams_to_send(self.now)
            out += [(data, source, destination) for data, destination in datagrams]
        return out

    def run(self, until: Callable[[], bool], max_time: float = 60.0) -> bool:
        """Deliver and fire timers until ``until()`` holds or ``max_time`` virtual seconds
        passed; returns whether ``until()`` held."""
        deadline = self.now + max_time
        while not until():
            out = self._outgoing()
            if self.interceptor is not None:
                out = [item for d in out for item in self.interceptor(*d)]
            if out:
                for data, source, destination in out:
                    role = self.nodes.get(destination)
                    if role is not None:
                        self.delivered += 1
                        role.receive_datagram(data, source, self.now)
                self.now += 0.001
                continue
            timers = [t for t in (r.next_timer() for r in self.nodes.values()) if t is not None]
            if not timers or min(timers) > deadline:
                return until()
            self.now = max(self.now, min(timers))
            for role in list(self.nodes.values()):
                timer = role.next_timer()
                if timer is not None and timer <= self.now:
                    role.handle_timer(self.now)
        return True


# --------------------------------------------------------------------------- real DNS
def fetch_addresses(dns: DnsResolver, name: str) -> tuple[list[str], str | None]:
    """The A and AAAA records of ``name`` from a real DNS server (dnspython, blocking: run it
    in an executor), or the reason there are none."""
    try:
        return [a.compressed for a in dns.addresses(name)], None
    except NameNotFound:
        return [], f"{name}: NXDOMAIN"
    except DnsLabError as exc:
        return [], str(exc)


def answer_dns(
    resolver: Resolver, query: DnsQuery, found: tuple[list[str], str | None], now: float
) -> None:
    """Give ``resolver`` the outcome of :func:`fetch_addresses` for ``query``."""
    addresses, failure = found
    if failure is not None:
        resolver.dns_failure(query.query_id, failure, now)
    else:
        resolver.dns_answer(query.query_id, addresses, DNS_CACHE_TTL, now)


def resolver_for(hierarchy: Hierarchy, **kwargs: Any) -> Resolver:
    """A resolver with the hierarchy's root pre-loaded (after the root started)."""
    return Resolver(ResolverConfig([hierarchy.root.trust_anchor()], **kwargs))


__all__ = [
    "Hierarchy",
    "MemoryNet",
    "answer_dns",
    "build_hierarchy",
    "fetch_addresses",
    "resolver_for",
    "seeded",
]
