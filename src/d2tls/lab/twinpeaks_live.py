"""The TwinPeaks demo hierarchy and its clients on real UDP sockets (asyncio, loopback).

:class:`LiveHierarchy` hosts every role of :func:`d2tls.lab.twinpeaks.build_hierarchy` with one
:class:`~d2tls.net.pump.Pump` each (members as :class:`~d2tls.core.twinpeaks.service.MemberService`:
registration plus their DTLS server). :func:`run_client` drives one
:class:`~d2tls.core.twinpeaks.client.TwinPeaksClient` connection, answering its DNS queries with a
:data:`DnsFetch` (a real DNS server through dnspython, :func:`knot_dns`, or a table).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from d2tls.core.twinpeaks.client import ClientFailed, Connected, DataReceived, TwinPeaksClient
from d2tls.core.twinpeaks.member import Registered, RegistrationError
from d2tls.core.twinpeaks.messages import TrustAnchor, UpdateReason
from d2tls.core.twinpeaks.resolver import DnsQuery, Resolver
from d2tls.lab import dns as dnslab
from d2tls.lab.twinpeaks import LOOPBACK, MEMBERS, Hierarchy, build_hierarchy, fetch_addresses
from d2tls.net.pump import Pump

EVENT_TIMEOUT = 20.0
DNS_TTL = 60.0

DnsFetch = Callable[[str], Awaitable[tuple[list[str], str | None]]]
"""A name's addresses, or the reason there are none (the host's DNS)."""

DnsUser = Resolver | TwinPeaksClient


def static_dns(table: Mapping[str, list[str]]) -> DnsFetch:
    """DNS answers from a table (tests whose subject is not the DNS)."""

    async def fetch(name: str) -> tuple[list[str], str | None]:
        found = list(table.get(name, []))
        return (found, None) if found else ([], f"{name}: NXDOMAIN")

    return fetch


def knot_dns(dns: dnslab.Resolver) -> DnsFetch:
    """DNS answers from a real DNS server (dnspython, blocking: run in an executor)."""

    async def fetch(name: str) -> tuple[list[str], str | None]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, fetch_addresses, dns, name)

    return fetch


async def answer_query(pump: Pump[Any], role: DnsUser, dns: DnsFetch, query: DnsQuery) -> None:
    """Fetch ``query``'s addresses and hand them to ``role`` (a resolver or a client)."""
    addresses, failure = await dns(query.name)
    if failure is not None:
        role.dns_failure(query.query_id, failure, pump.now)
    else:
        role.dns_answer(query.query_id, addresses, DNS_TTL, pump.now)
    pump.poke()


async def next_matching(
    pump: Pump[Any], wanted: Callable[[Any], bool], timeout: float = EVENT_TIMEOUT
) -> Any:
    """The next event of ``pump`` that ``wanted`` accepts (others are dropped)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        event = await pump.next_event(max(0.01, deadline - loop.time()))
        if wanted(event):
            return event


class LiveHierarchy:
    """The demo hierarchy on 127.0.0.1, one pump per role (``async with``)."""

    def __init__(
        self, ports: Mapping[str, int] | None = None, members: Sequence[str] = MEMBERS
    ) -> None:
        self.members = tuple(members)
        names = ["root", "test", "example.test", *self.members]
        self.ports = dict(ports) if ports else {n: dnslab.free_port() for n in names}
        self.h: Hierarchy = build_hierarchy(self.ports, members=self.members)
        self.pumps: dict[str, Pump[Any]] = {}
        self.registered: dict[str, Registered] = {}

    async def __aenter__(self) -> LiveHierarchy:
        h = self.h
        roles: dict[str, Any] = {"root": h.root, "test": h.tld, "example.test": h.sld}
        roles |= h.services
        try:
            for name, role in roles.items():
                self.pumps[name] = await Pump.open(role, (LOOPBACK, self.ports[name]))
            h.start(self.pumps["root"].now)
            for pump in self.pumps.values():
                pump.poke()
            for name in self.members:
                self.registered[name] = await self._registered(name)
        except BaseException:
            self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for pump in self.pumps.values():
            pump.close()

    async def _registered(self, name: str) -> Registered:
        event = await next_matching(
            self.pumps[name], lambda e: isinstance(e, Registered | RegistrationError)
        )
        if isinstance(event, RegistrationError):
            raise event.error
        assert isinstance(event, Registered)
        return event

    def anchors(self) -> list[TrustAnchor]:
        return [self.h.root.trust_anchor()]

    async def update_key(
        self, name: str, reason: UpdateReason = UpdateReason.ROLLOVER, address: str | None = None
    ) -> Registered:
        """A key update of member ``name`` (dissertation 2.4.3); its server follows."""
        pump = self.pumps[name]
        self.h.members[name].update_key(pump.now, reason, address)
        pump.poke()
        self.registered[name] = await self._registered(name)
        return self.registered[name]


@dataclass
class ClientRun:
    """What one client connection gave: its outcome, the echo, every event."""

    connected: Connected | None = None
    failed: ClientFailed | None = None
    echoed: bytes | None = None
    events: list[Any] = field(default_factory=list)

    @property
    def timeline(self) -> tuple[str, ...]:
        outcome = self.connected or self.failed
        return outcome.timeline if outcome is not None else ()


async def run_client(
    client: TwinPeaksClient,
    name: str,
    port: int,
    dns: DnsFetch,
    *,
    address: str | None = None,
    payload: bytes = b"",
    timeout: float = EVENT_TIMEOUT,
) -> ClientRun:
    """Connect ``client`` to ``name`` at ``port`` on its own socket; send ``payload`` and await
    its echo when connected; close."""
    run = ClientRun()
    async with await Pump.open(client, (LOOPBACK, 0)) as pump:
        client.connect(name, port, pump.now, address)
        pump.poke()
        while True:
            event = await pump.next_event(timeout)
            run.events.append(event)
            if isinstance(event, DnsQuery):
                await answer_query(pump, client, dns, event)
            elif isinstance(event, ClientFailed):
                run.failed = event
                return run
            elif isinstance(event, Connected):
                run.connected = event
                if not payload:
                    break
                client.send_application_data(payload)
                pump.poke()
            elif isinstance(event, DataReceived):
                run.echoed = event.data
                break
        client.close(pump.now)
    return run


async def serve_resolver(pump: Pump[Any], resolver: Resolver, dns: DnsFetch) -> None:
    """Host a resolver service: answer its DNS queries until cancelled."""
    while True:
        event = await pump.next_event()
        if isinstance(event, DnsQuery):
            await answer_query(pump, resolver, dns, event)


__all__ = [
    "ClientRun",
    "DnsFetch",
    "LiveHierarchy",
    "answer_query",
    "knot_dns",
    "next_matching",
    "run_client",
    "serve_resolver",
    "static_dns",
]
