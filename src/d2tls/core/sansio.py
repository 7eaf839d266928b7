"""The one shape of every protocol object in the core (aioquic's ``QuicConnection`` style).

Every role — a DTLS client or server engine, the delegating device, the security agent, the
TwinPeaks key servers and resolvers — is a *sans-IO protocol object*: it never touches a socket,
a clock or the system's randomness. A host (an asyncio pump on real UDP sockets, or the
deterministic simulator) drives it with exactly these five calls:

* ``receive_datagram(data, addr, now)`` — one datagram arrived from ``addr``;
* ``datagrams_to_send(now)`` — the datagrams to put on the wire now, each with its destination;
* ``next_timer()`` — when ``handle_timer`` must next be called (``None``: no timer);
* ``handle_timer(now)`` — a timer fired (retransmission, idle close, expiry);
* ``next_event()`` — pop the next typed event for the application, or ``None``.

``now`` is monotonic time in seconds with an arbitrary origin (see :mod:`d2tls.core.clock`). A role
that owns child engines (the server its connections, the agent its DTLS-PSK channel and its
handshakes with servers) forwards these calls to them and merges what they return, so a host
needs exactly one pump for every role.
"""

from __future__ import annotations

from typing import Protocol, TypeAlias, TypeVar, runtime_checkable

Address: TypeAlias = tuple[str, int]
"""A UDP peer: host (an IP address literal) and port."""

Datagram: TypeAlias = tuple[bytes, Address]
"""One datagram to send, with its destination."""

EventT_co = TypeVar("EventT_co", covariant=True)


@runtime_checkable
class SansIOProtocol(Protocol[EventT_co]):
    """The five methods every role offers its host (see the module docstring)."""

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Process one datagram from ``addr``. Never raises on hostile input."""

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        """Datagrams ready to go out, in order, each with its destination."""

    def next_timer(self) -> float | None:
        """The monotonic time at which ``handle_timer`` must be called, or ``None``."""

    def handle_timer(self, now: float) -> None:
        """Act on every timer due at ``now``."""

    def next_event(self) -> EventT_co | None:
        """Pop the next event for the application, or ``None``."""


@runtime_checkable
class HasChildEndpoints(Protocol):
    """Optional: a role that talks to some peers from local ports of their own.

    The security agent runs each delegated handshake with a cloud server as a separate
    association, so that two delegations to one server do not share an address (a server
    keeps one association per address, RFC 6347 §4.2.8). Each such *child endpoint* has a
    key, talks to exactly one peer, and lives as long as :meth:`child_endpoints` lists it; a
    host binds one more socket (or, in the simulator, one more address) for each and routes
    that socket's datagrams with the ``child_*`` calls below. Everything else (timers,
    events) still goes through the five methods of :class:`SansIOProtocol`.
    """

    def child_endpoints(self) -> dict[int, Address]:
        """The live child endpoints: key -> the peer it talks to."""

    def child_receive_datagram(self, key: int, data: bytes, addr: Address, now: float) -> None:
        """One datagram arrived at child endpoint ``key`` from ``addr``."""

    def child_datagrams_to_send(self, key: int, now: float) -> list[Datagram]:
        """Datagrams to send from child endpoint ``key``."""

    def child_unreachable(self, key: int, now: float) -> None:
        """The kernel reported ICMP port unreachable on child endpoint ``key``."""


@runtime_checkable
class HearsUnreachable(Protocol):
    """Optional: a role that acts on ICMP port unreachable on its own socket.

    An unconnected UDP socket learns of it only with ``IP_RECVERR`` (Linux) and without the
    address it came from; a role that talks to one peer at a time (the device) knows which.
    """

    def port_unreachable(self, now: float) -> None:
        """The kernel reported ICMP port unreachable for a datagram this role sent."""
