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

``now`` is monotonic time in seconds with an arbitrary origin (see :mod:`d2tls.clock`). A role
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
