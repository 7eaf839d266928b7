"""A member's secure service: its TwinPeaks key serves a DTLS 1.2 server (sans-IO).

Section 2.4.5 of the dissertation (spec/twinpeaks.md §9, §11.5): a member authenticates with
its TwinPeaks key pair (sk, Q) as an RFC 7250 raw public key and checks the TwinPeaks
extension of each ClientHello (name, address, h(key || params)), refusing a wrong field with
the alert that names it. :class:`MemberService` owns the
:class:`~d2tls.core.twinpeaks.member.Member`
(its registration and key updates) and a :class:`~d2tls.core.dtls.server.DTLSServer` on one port:
DTLS datagrams from the parent's address belong to the member's association with its parent,
all others to the server. The server answers nothing before the member holds a key; after a
key update it serves the new key, so a client holding the old one gets "outdated public key".
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from typing import TypeAlias

from d2tls.core.dtls.config import ClientAuth, ServerConfig
from d2tls.core.dtls.events import ApplicationDataReceived, Event
from d2tls.core.dtls.server import DTLSServer
from d2tls.core.dtls.twinpeaks import server_identity
from d2tls.core.sansio import Address, Datagram
from d2tls.core.twinpeaks.clpkc import FullPrivateKey
from d2tls.core.twinpeaks.member import Member, MemberEvent


@dataclass(frozen=True)
class ServingKey:
    """The DTLS server now authenticates with this key (after a registration or update)."""

    key: FullPrivateKey


ServiceEvent: TypeAlias = MemberEvent | ServingKey | Event


class MemberService:
    """A member with its DTLS server (see the module docstring). ``echo``: send every
    application datagram back (the demo's service)."""

    ROLE = "member_service"

    def __init__(
        self, member: Member, base: ServerConfig | None = None, *, echo: bool = False
    ) -> None:
        self.member = member
        self.echo = echo
        self._base = base
        self._key: FullPrivateKey | None = None
        self.dtls: DTLSServer | None = None
        self._events: deque[ServiceEvent] = deque()

    @property
    def key(self) -> FullPrivateKey | None:
        """The key the server authenticates with (None before the registration)."""
        return self._key

    def _config(self, key: FullPrivateKey) -> ServerConfig:
        member = self.member.config
        base = self._base or ServerConfig(
            client_auth=ClientAuth.NONE,
            timers=member.timers,
            raw_private_key=key.to_cryptography(),
        )
        return replace(
            base,
            raw_private_key=key.to_cryptography(),
            twinpeaks=server_identity(key),
            wall_clock=member.wall_clock,
            randomness=member.randomness,
        )

    def _follow_key(self) -> None:
        """Serve the member's current key: a new server at the first key, a new
        configuration for new handshakes after an update (live associations keep theirs)."""
        key = self.member.key
        if key is None or key is self._key:
            return
        self._key = key
        if self.dtls is None:
            self.dtls = DTLSServer(self._config(key))
        else:
            self.dtls.config = self._config(key)
        self._events.append(ServingKey(key))

    # ------------------------------------------------------------------ sans-IO
    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        if addr == self.member.config.parent.address:
            self.member.receive_datagram(data, addr, now)
        elif self.dtls is not None:
            self.dtls.receive_datagram(bytes(data), addr, now)
            self._pump_dtls()
        self._follow_key()

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        out = self.member.datagrams_to_send(now)
        if self.dtls is not None:
            out += self.dtls.datagrams_to_send(now)
        return out

    def next_timer(self) -> float | None:
        timers = [
            t
            for t in (
                self.member.next_timer(),
                self.dtls.next_timer() if self.dtls is not None else None,
            )
            if t is not None
        ]
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        self.member.handle_timer(now)
        if self.dtls is not None:
            self.dtls.handle_timer(now)
            self._pump_dtls()
        self._follow_key()

    def next_event(self) -> ServiceEvent | None:
        self._follow_key()
        if self._events:
            return self._events.popleft()
        return self.member.next_event()

    def _pump_dtls(self) -> None:
        assert self.dtls is not None
        while (event := self.dtls.next_event()) is not None:
            if isinstance(event, ApplicationDataReceived) and self.echo and event.peer:
                self.dtls.send_application_data(event.peer, event.data)
            self._events.append(event)


__all__ = ["MemberService", "ServiceEvent", "ServingKey"]
