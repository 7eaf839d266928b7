"""Time for the protocol core: the only module of the core that reads a system clock.

The core (``dtls``, ``roles``, ``delegation``, ``model``, ``pki``, ``store``, ``twinpeaks``) is
sans-IO and reads no clock itself (docs/architecture.md, "Time and randomness"). It uses two
kinds of time, kept apart on purpose:

* *monotonic* time, the ``now`` argument of ``receive_datagram``/``datagrams_to_send``/
  ``handle_timer``: retransmission timers, cookie-secret rotation, idle and half-open limits.
  Its origin is arbitrary (the host's loop clock, or a simulator's virtual time).
* *wall-clock* time, seconds since the Unix epoch, read from an injected :data:`Clock`
  (``ClientConfig.wall_clock``, ``ServerConfig.wall_clock``, ...): certificate validity
  (RFC 5280 §6.1.3 (a)(2) compares notBefore/notAfter with the *current date*), session
  ``created_at`` and expiry, which other processes and stores compare with their own clocks.

Monotonic time cannot stand in for the wall clock (its epoch is unknown), and deriving wall time
from a monotonic ``now`` plus an offset taken once would drift from the system clock after it
is stepped (NTP), so engines take a separate wall-clock callable. Its default,
:func:`wall_time`, is bound here and nowhere else; tests inject :class:`FixedClock`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeAlias

Clock: TypeAlias = Callable[[], float]
"""Returns the current time in seconds (wall clock: since the Unix epoch)."""


def wall_time() -> float:
    """The default wall :data:`Clock`: the system's ``time.time()``."""
    return time.time()


def monotonic() -> float:
    """The system's monotonic clock, for hosts and tooling that drive a sans-IO engine."""
    return time.monotonic()


def utc(timestamp: float) -> datetime:
    """A wall-clock reading as an aware UTC datetime (what certificate checks take)."""
    return datetime.fromtimestamp(timestamp, UTC)


def utc_now(clock: Clock = wall_time) -> datetime:
    """The current time of ``clock`` as an aware UTC datetime."""
    return utc(clock())


class FixedClock:
    """A settable clock for tests and simulations: returns ``value`` until moved."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self) -> float:
        return self.value

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self.value += seconds
