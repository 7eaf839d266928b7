"""Invariants over every connection of an :class:`~d2tls.sim.Network`.

The observer instruments each connection (client engines when added, server connections when
they appear) without changing its behaviour: it wraps ``send_application_data`` to learn what
the honest sender meant, and ``_handle_record`` to see, for every record the engine handles,
whether it produced application data. It keeps a *reference* anti-replay window (RFC 6347
§4.1.2.6, 64 records) per connection and epoch, fed only with authentic records (the exact bytes
the honest peer sent on that link), and checks after every step:

- **integrity**: every application record delivered is a record the honest peer of that
  connection sent on that link, with the plaintext it sent; never twice;
- **epoch/sequence discipline**: data is delivered only in the current read epoch (>= 1) of an
  established connection, and exactly when the reference window accepts the record;
- **failures are events**: no engine raised, every ConnectionTerminated has a reason, and no
  reason is an "internal error" (an engine bug that the engine caught).

Violations are collected in :attr:`Observer.violations` (and raised by :meth:`check`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from d2tls.core.dtls.connection import Connection
from d2tls.core.dtls.constants import MAX_SEQUENCE, ContentType
from d2tls.core.dtls.events import ApplicationDataReceived, ConnectionTerminated, Event
from d2tls.core.dtls.record import Record
from d2tls.sim import Address, Link, Network, connections_of

WINDOW = 64


class InvariantViolation(AssertionError):
    """An attacker-model invariant does not hold."""


class ReferenceWindow:
    """The RFC 6347 §4.1.2.6 window as a set: the model the engine's bitmap must match."""

    def __init__(self, size: int = WINDOW) -> None:
        self.size = size
        self.highest = -1
        self.seen: set[int] = set()

    def acceptable(self, seq: int) -> bool:
        if not 0 <= seq <= MAX_SEQUENCE or seq in self.seen:
            return False
        return seq > self.highest - self.size

    def mark(self, seq: int) -> None:
        self.seen.add(seq)
        if seq > self.highest:
            self.highest = seq
            self.seen = {s for s in self.seen if s > seq - self.size}


@dataclass
class Delivery:
    """One application record that produced application data."""

    link: Link
    epoch: int
    seq: int
    data: bytes


@dataclass
class _Watched:
    conn: Connection
    local: Address
    remote: Address
    windows: dict[int, ReferenceWindow] = field(default_factory=dict)
    delivered: set[tuple[int, int]] = field(default_factory=set)


class Observer:
    """Checks the attacker-model invariants on every connection of a network."""

    def __init__(
        self, net: Network, *, strict_reasons: bool = True, unique_payloads: bool = True
    ) -> None:
        self.net = net
        self.strict_reasons = strict_reasons
        self.unique_payloads = unique_payloads
        #: What each honest sender passed to send_application_data: link -> (epoch, seq) -> data.
        self.sent: dict[Link, dict[tuple[int, int], bytes]] = {}
        self.deliveries: list[Delivery] = []
        self.violations: list[str] = []
        self.terminations: list[tuple[Address, ConnectionTerminated]] = []
        self.stats: dict[str, int] = {
            "records_checked": 0,
            "deliveries": 0,
            "rejected": 0,
            "forged_handshake_records": 0,
        }
        #: Local addresses that handled an epoch-0 handshake record no honest peer sent there
        #: (DTLS 1.2 cannot authenticate those: such a handshake may fail, cleanly).
        self.forged_handshake_at: set[Address] = set()
        self._watched: dict[int, _Watched] = {}
        self._payloads_seen: set[tuple[Link, bytes]] = set()
        net.on_node_added(self._node_added)
        net.watchers.append(self._discover)
        net.event_watchers.append(self.note_event)

    # ------------------------------------------------------------------ instrumentation
    def _node_added(self, address: Address, protocol: object) -> None:
        for conn, remote, key in connections_of(protocol):
            if key is None:
                self.watch(conn, address, remote)

    def _discover(self) -> None:
        for local, conn, remote in self.net.connections():
            if id(conn) not in self._watched:
                self.watch(conn, local, remote)

    def watch(self, conn: Connection, local: Address, remote: Address) -> None:
        """Instrument ``conn`` (idempotent)."""
        if id(conn) in self._watched:
            return
        watched = _Watched(conn, local, remote)
        self._watched[id(conn)] = watched
        original_send: Callable[[bytes], None] = conn.send_application_data
        original_handle: Callable[[Record], bool] = conn._handle_record

        def send_application_data(data: bytes) -> None:
            write = conn._writes[conn._write_epoch]
            first = write.write_seq
            original_send(data)
            book = self.sent.setdefault((local, remote), {})
            for seq in range(first, write.write_seq):
                book[(write.epoch, seq)] = bytes(data)

        def handle_record(record: Record) -> bool:
            return self._handle(watched, original_handle, record)

        conn.__dict__["send_application_data"] = send_application_data
        conn.__dict__["_handle_record"] = handle_record

    def _handle(
        self, watched: _Watched, original: Callable[[Record], bool], record: Record
    ) -> bool:
        conn = watched.conn
        read_epoch = conn._read.epoch
        established = conn.is_established
        before = len(conn._events)
        try:
            return original(record)
        finally:
            self._after_record(watched, record, read_epoch, established, before)

    def _after_record(
        self, watched: _Watched, record: Record, read_epoch: int, established: bool, before: int
    ) -> None:
        conn = watched.conn
        self.stats["records_checked"] += 1
        link = (watched.local, watched.remote)
        produced = [
            e for e in list(conn._events)[before:] if isinstance(e, ApplicationDataReceived)
        ]
        # Nested handling (records that waited for their epoch) reports on its own.
        if record.content_type != ContentType.APPLICATION_DATA:
            produced = []
        honest = self.net.honest_records.get((watched.remote, watched.local), {})
        original = honest.get((record.epoch, record.sequence_number))
        authentic = original is not None and original == record
        if not authentic and record.epoch == 0 and record.content_type == ContentType.HANDSHAKE:
            self.stats["forged_handshake_records"] += 1
            self.forged_handshake_at.add(watched.local)
        window: ReferenceWindow | None = None
        if record.epoch == read_epoch and record.epoch >= 1:
            window = watched.windows.setdefault(record.epoch, ReferenceWindow())
        expect = (
            authentic
            and window is not None
            and window.acceptable(record.sequence_number)
            and record.content_type == ContentType.APPLICATION_DATA
            and established
        )
        if authentic and window is not None and window.acceptable(record.sequence_number):
            window.mark(record.sequence_number)
        where = (
            f"{watched.local}<-{watched.remote} epoch {record.epoch} seq {record.sequence_number}"
        )
        if len(produced) > 1:
            self._violate(f"one record delivered {len(produced)} times ({where})")
        if produced:
            self.stats["deliveries"] += 1
            data = produced[0].data
            key = (record.epoch, record.sequence_number)
            sent = self.sent.get((watched.remote, watched.local), {}).get(key)
            if not authentic:
                self._violate(f"integrity: delivered a record the peer never sent ({where})")
            elif sent is not None and sent != data:
                self._violate(
                    f"integrity: delivered plaintext differs from what was sent ({where})"
                )
            if record.epoch != read_epoch or record.epoch < 1:
                self._violate(f"epoch: data delivered from epoch {record.epoch} ({where})")
            if key in watched.delivered:
                self._violate(f"replay: record delivered twice ({where})")
            watched.delivered.add(key)
            if self.unique_payloads and (link, data) in self._payloads_seen:
                self._violate(f"replay: payload delivered twice ({where})")
            self._payloads_seen.add((link, data))
            self.deliveries.append(Delivery(link, record.epoch, record.sequence_number, data))
            if not expect:
                self._violate(f"window: delivered although the reference window rejects ({where})")
        else:
            self.stats["rejected"] += 1
            if expect:
                self._violate(f"window: authentic fresh record not delivered ({where})")

    def _violate(self, message: str) -> None:
        self.violations.append(message)

    # ------------------------------------------------------------------ events
    def note_event(self, where: Address, event: Event) -> None:
        """Check one engine event (call from the network's event handlers)."""
        if isinstance(event, ConnectionTerminated):
            self.terminations.append((where, event))
            if not event.reason:
                self._violate(f"a connection of {where} ended without a reason")
            if self.strict_reasons and event.reason.startswith("internal error"):
                self._violate(f"engine bug at {where}: {event.reason}")

    def register_sent(self, link: Link, record: Record, data: bytes) -> None:
        """Declare a record built by the test harness as the honest peer's (BoGo-style)."""
        self.net.honest_records.setdefault(link, {})[(record.epoch, record.sequence_number)] = (
            record
        )
        self.sent.setdefault(link, {})[(record.epoch, record.sequence_number)] = bytes(data)

    def check(self) -> None:
        """Raise :class:`InvariantViolation` listing every violation so far."""
        if self.violations:
            raise InvariantViolation("; ".join(self.violations[:10]))

    def summary(self) -> dict[str, Any]:
        return {**self.stats, "violations": len(self.violations)}
