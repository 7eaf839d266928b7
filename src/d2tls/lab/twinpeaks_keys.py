"""Raw public keys resolved through TwinPeaks, for a DTLS server or a D2TLS agent (tooling).

D2TLS over TwinPeaks keys (spec/delegation.md §5.1, spec/twinpeaks.md §9.5): a device
authenticates with its TwinPeaks member key as an RFC 7250 raw public key, and the server
accepts it only if it is the key that the key-server hierarchy serves for one of the device
names the server was configured with. The lookups (DNS, then the key servers, §11.3) are IO,
so they are done here, by the host: :class:`TwinPeaksClientKeys` resolves every name with a
:class:`~d2tls.core.twinpeaks.resolver.Resolver` on its own socket, and hands the sans-IO server the
resolved keys as its pre-resolved key set (``ServerConfig.trusted_client_keys``), which the
server core checks on every full handshake and resumption (RFC 7250 §3: any other key is
``certificate_unknown``). It looks the names up again every ``refresh`` seconds: the
resolver's cache keeps an answer until its TTL (§11.3), so a key update reaches the server
within TTL + ``refresh``; a name whose lookup fails is dropped (fail closed) until a later
lookup succeeds.

The agent's host does the same for the servers it may delegate to (``d2tls agent
--twinpeaks-server``): :class:`ServerKeyTable` is the agent's ``server_keys``
(:mod:`d2tls.core.delegation.twinpeaks_identity`), so that a delegated handshake with such a server
authenticates it by its TwinPeaks key (RFC 7250) instead of a chain and OCSP.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from d2tls.core.dtls.config import ServerConfig
from d2tls.core.dtls.rawpk import fingerprint
from d2tls.core.dtls.twinpeaks import ResolvedKey
from d2tls.core.errors import ConfigurationError, D2TLSError, EventTimeout
from d2tls.core.twinpeaks.resolver import (
    DnsQuery,
    LookupCompleted,
    LookupFailed,
    Resolver,
    ResolverConfig,
    load_anchors,
)
from d2tls.lab import dns as dnslab
from d2tls.lab.twinpeaks import LOOPBACK
from d2tls.lab.twinpeaks_live import DnsFetch, answer_query, knot_dns
from d2tls.net.pump import Pump

#: Seconds between two lookups of the configured names (the resolver's cache answers within
#: a record's TTL, so this bounds only how soon an expired answer is fetched again).
DEFAULT_REFRESH = 30.0
LOOKUP_TIMEOUT = 20.0


class ClientKeyLookupFailed(D2TLSError):
    """A TwinPeaks lookup of a configured name failed, or none resolved; the message says why."""


@dataclass(frozen=True)
class ClientName:
    """A device name the server accepts, optionally with the address in its TwinPeaks ID."""

    name: str
    address: str | None = None

    def __str__(self) -> str:
        return self.name if self.address is None else f"{self.name}@{self.address}"


def parse_client_name(text: str) -> ClientName:
    """``NAME`` or ``NAME@ADDRESS`` (the address must then be one the DNS gives, §11.3)."""
    name, sep, address = text.partition("@")
    name = name.strip().rstrip(".").lower()
    if not name or (sep and not address):
        raise ValueError(f"expected NAME or NAME@ADDRESS, got {text!r}")
    if sep:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(f"{address!r} is not an IP address") from None
    return ClientName(name, address or None)


@dataclass(frozen=True)
class ResolvedClient:
    """One successful lookup: the name, the address in its ID, its key and key serial."""

    name: str
    address: str
    key: ResolvedKey
    serial: int

    @property
    def spki(self) -> bytes:
        return self.key.spki


async def lookup(
    pump: Pump[Any], resolver: Resolver, dns: DnsFetch, client: ClientName
) -> ResolvedClient:
    """One TwinPeaks lookup through ``pump`` (the host answers the resolver's DNS queries);
    raises ClientKeyLookupFailed naming the cause."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LOOKUP_TIMEOUT
    lookup_id = resolver.lookup(client.name, pump.now, client.address)
    pump.poke()
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise ClientKeyLookupFailed(f"{client}: no answer in {LOOKUP_TIMEOUT:g} s")
        try:
            event = await pump.next_event(remaining)
        except EventTimeout:
            continue
        if isinstance(event, DnsQuery):
            await answer_query(pump, resolver, dns, event)
        elif isinstance(event, LookupFailed) and event.lookup_id == lookup_id:
            raise ClientKeyLookupFailed(f"{client}: {event.error}")
        elif isinstance(event, LookupCompleted) and event.lookup_id == lookup_id:
            result = event.result
            subject = result.record.subject
            assert subject is not None
            return ResolvedClient(
                result.name,
                result.address.compressed,
                ResolvedKey(result.params, result.public_key),
                subject.serial,
            )


Install = Callable[[Mapping[ClientName, ResolvedClient]], None]


class TwinPeaksKeys:
    """Looks ``names`` up now and every ``refresh`` seconds and hands the keys that resolved
    to ``install`` after each round. Use :meth:`open`, then :meth:`close`."""

    def __init__(
        self,
        resolver: Resolver,
        pump: Pump[Any],
        dns: DnsFetch,
        names: Sequence[ClientName],
        install: Install,
        refresh: float = DEFAULT_REFRESH,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.resolver = resolver
        self.pump = pump
        self.dns = dns
        self.names = tuple(names)
        self.install = install
        self.refresh = refresh
        self._say = say or (lambda text: print(f"twinpeaks: {text}", file=sys.stderr, flush=True))
        self.resolved: dict[ClientName, ResolvedClient] = {}
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        root: Path,
        dns: tuple[str, int],
        names: Sequence[ClientName],
        install: Install,
        refresh: float = DEFAULT_REFRESH,
        what: str = "name",
    ) -> TwinPeaksKeys:
        """Resolve every name once (ClientKeyLookupFailed when none resolves), then keep
        refreshing in the background."""
        try:
            anchors = load_anchors(root.read_bytes())
        except OSError as exc:
            raise ConfigurationError(f"cannot read trust-anchor file {root}: {exc}") from None
        except D2TLSError as exc:
            raise ConfigurationError(f"{root}: not a TwinPeaks trust-anchor file: {exc}") from None
        resolver = Resolver(ResolverConfig(anchors))
        pump: Pump[Any] = await Pump.open(resolver, (LOOPBACK, 0))
        keys = cls(resolver, pump, knot_dns(dnslab.Resolver(*dns)), names, install, refresh)
        try:
            failures = await keys.resolve_all()
        except BaseException:
            pump.close()
            raise
        if not keys.resolved:
            pump.close()
            raise ClientKeyLookupFailed(
                f"no {what} could be resolved through TwinPeaks: " + "; ".join(failures)
            )
        keys._task = asyncio.get_running_loop().create_task(keys._refresh_forever())
        return keys

    async def resolve_all(self) -> list[str]:
        """Look every name up; install the keys; return the failures, one line each."""
        failures: list[str] = []
        for name in self.names:
            try:
                found = await lookup(self.pump, self.resolver, self.dns, name)
            except ClientKeyLookupFailed as exc:
                failures.append(str(exc))
                if self.resolved.pop(name, None) is not None:
                    self._say(f"{exc}: its key is no longer trusted")
                else:
                    self._say(str(exc))
                continue
            previous = self.resolved.get(name)
            self.resolved[name] = found
            if previous is None or previous.spki != found.spki:
                self._say(
                    f"{found.name} at {found.address}: raw public key "
                    f"{fingerprint(found.spki)} (serial {found.serial})"
                )
        self.install(dict(self.resolved))
        return failures

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh)
            await self.resolve_all()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.pump.close()

    async def aclose(self) -> None:
        self.close()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class TwinPeaksClientKeys:
    """A server's client keys: ``config.trusted_client_keys`` = its static keys + the keys
    TwinPeaks serves for ``clients`` (see the module docstring)."""

    @staticmethod
    async def start(
        config: ServerConfig,
        root: Path,
        dns: tuple[str, int],
        clients: Sequence[ClientName],
        refresh: float = DEFAULT_REFRESH,
    ) -> TwinPeaksKeys:
        static = frozenset(config.trusted_client_keys)

        def install(resolved: Mapping[ClientName, ResolvedClient]) -> None:
            config.trusted_client_keys = static | frozenset(r.spki for r in resolved.values())

        return await TwinPeaksKeys.open(root, dns, clients, install, refresh, "client name")


class ServerKeyTable:
    """The agent's ``server_keys``: the TwinPeaks key of each configured server name."""

    def __init__(self) -> None:
        self._keys: dict[str, ResolvedKey] = {}

    def __call__(self, server_name: str) -> ResolvedKey | None:
        return self._keys.get(server_name.lower().rstrip("."))

    def install(self, resolved: Mapping[ClientName, ResolvedClient]) -> None:
        self._keys = {name.name: r.key for name, r in resolved.items()}

    async def start(
        self,
        root: Path,
        dns: tuple[str, int],
        servers: Sequence[ClientName],
        refresh: float = DEFAULT_REFRESH,
    ) -> TwinPeaksKeys:
        return await TwinPeaksKeys.open(root, dns, servers, self.install, refresh, "server name")
