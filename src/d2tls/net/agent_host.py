"""The D2TLS agent's asyncio host: an :class:`~d2tls.core.roles.agent.AgentProtocol` on a real
UDP socket through :class:`~d2tls.net.pump.Pump`, answering the role's OCSP and name lookups."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Coroutine
from typing import Any

from cryptography import x509

from d2tls.core.clock import utc
from d2tls.core.roles.agent import (
    AgentConfig,
    AgentEvent,
    AgentProtocol,
    ServerLookupRequested,
    StatusCheckRequested,
)
from d2tls.core.sansio import Address
from d2tls.net.pump import Pump

log = logging.getLogger("d2tls.agent")


class Agent:
    """The agent on a real UDP socket: an :class:`AgentProtocol` on a
    :class:`~d2tls.net.pump.Pump`, answering its OCSP and name lookups."""

    def __init__(self, config: AgentConfig, ocsp_issuer: x509.Certificate | None = None) -> None:
        self.config = config
        self._ocsp_issuer = ocsp_issuer
        self.protocol = AgentProtocol(config)
        self.engine = self.protocol.server
        self.address: Address | None = None
        self._pump: Pump[AgentEvent] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def completed(self) -> int:
        return self.protocol.completed

    @property
    def failed(self) -> int:
        return self.protocol.failed

    @property
    def chain_misses(self) -> int:
        return self.protocol.chain_misses

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
        self._pump = await Pump.open(self.protocol, (host, port), on_event=self._on_event)
        self.address = self._pump.local_address
        return self.address

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._pump is not None:
            self.protocol.close(self._pump.now)
            self._pump.close()

    def _on_event(self, event: AgentEvent) -> None:
        if isinstance(event, StatusCheckRequested):
            self._spawn(self._check_status(event))
        elif isinstance(event, ServerLookupRequested):
            self._spawn(self._lookup(event))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _lookup(self, asked: ServerLookupRequested) -> None:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(asked.host, asked.port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            address, reason = None, str(exc)
        else:
            address, reason = (str(infos[0][4][0]), int(infos[0][4][1])), ""
        if self._pump is not None:
            self.protocol.server_resolved(asked.ticket, address, reason, self._pump.now)
            self._pump.poke()

    async def _check_status(self, asked: StatusCheckRequested) -> None:
        from d2tls.net.ocsp import OCSPError, OCSPStatus, check_ocsp

        assert self.config.ocsp_url is not None
        if self._ocsp_issuer is None:
            good, reason = False, "no issuer certificate configured for OCSP"
        else:
            try:
                result = await check_ocsp(
                    asked.certificate,
                    self._ocsp_issuer,
                    self.config.ocsp_url,
                    now=utc(self.config.wall_clock()),
                )
            except OCSPError as exc:
                good, reason = False, f"OCSP check failed: {exc}"
            else:
                good, reason = result.status is OCSPStatus.GOOD, result.status.name.lower()
        if self._pump is not None:
            self.protocol.status_checked(asked.ticket, good, reason, self._pump.now)
            self._pump.poke()
