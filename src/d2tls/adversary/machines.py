"""Reusable pieces of the attacker-model state machines: liveness bounds and payloads."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from d2tls.core.dtls.connection import Connection
from d2tls.sim import Network


@dataclass(frozen=True)
class Budget:
    """Retransmissions a waiting connection has left and the time they can take (seconds)."""

    retransmissions_left: int
    seconds: float


def retransmission_budget(conn: Connection, now: float) -> Budget | None:
    """What RFC 6347 §4.2.4.1 still allows ``conn`` to wait; None when no timer runs."""
    deadline = conn._timer_deadline
    if deadline is None or conn.is_closed:
        return None
    timers = conn._timers
    left = timers.max_retransmissions - conn._retransmissions
    timeout = conn._timeout
    total = max(0.0, deadline - now)
    for _ in range(left):
        timeout = min(timeout * 2, timers.maximum)
        total += timeout
    return Budget(left, total)


def liveness_bound(conns: Iterable[Connection], now: float, slack: float = 5.0) -> Budget:
    """The smallest retransmission allowance among waiting connections, and the longest wait."""
    budgets = [b for c in conns if (b := retransmission_budget(c, now)) is not None]
    if not budgets:
        return Budget(1 << 30, slack)
    return Budget(
        min(b.retransmissions_left for b in budgets), max(b.seconds for b in budgets) + slack
    )


class Payloads:
    """Unique, recognisable application payloads (so a replay can never look fresh)."""

    def __init__(self, tag: str) -> None:
        self._tag = tag
        self._counter = itertools.count()

    def next(self, size: int = 0) -> bytes:
        head = f"{self._tag}-{next(self._counter)}|".encode()
        return head + b"x" * max(0, size - len(head))


def stop_adversary(net: Network) -> None:
    """The adversary stops: held datagrams go through late, nothing more is intercepted."""
    net.intercept = False
    net.deliver_all()
