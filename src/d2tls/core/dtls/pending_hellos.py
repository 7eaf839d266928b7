"""The one bounded buffer for fragmented ClientHellos that arrive before a cookie.

RFC 6347 §4.2.1 wants a server to keep no state for an address before the cookie proves it;
a ClientHello may still arrive in fragments (RFC 6347 §4.2.3). Those fragments are held here,
in one buffer shared by every address, never in a per-address association:

* only ClientHello fragments are accepted, and none of a message longer than ``max_length``;
* memory is charged by the bytes received (plus a per-piece overhead), never by the length
  a fragment declares;
* at most ``max_hellos`` partial hellos and ``max_bytes`` accounted bytes are held in all;
  the oldest is dropped to make room;
* a partial hello expires ``timeout`` seconds after its first fragment (:meth:`expire`).
"""

from __future__ import annotations

from dataclasses import dataclass

from d2tls.core.dtls.constants import HandshakeType
from d2tls.core.dtls.fragments import PIECE_OVERHEAD, HandshakeFragment, PartialMessage
from d2tls.core.errors import ProtocolError

Address = tuple[str, int]

#: Accounted bytes of one entry besides its pieces (key, entry object, lists).
ENTRY_OVERHEAD = 256


@dataclass(frozen=True)
class CompletedHello:
    """A ClientHello whose fragments all arrived: its header fields and body."""

    message_seq: int
    body: bytes
    #: Highest record sequence number and the record version of its fragments.
    record_seq: int
    record_version: int


class _Entry:
    __slots__ = ("created", "message_seq", "partial", "record_seq", "record_version")

    def __init__(self, fragment: HandshakeFragment, now: float) -> None:
        self.partial = PartialMessage(fragment.msg_type, fragment.length)
        self.message_seq = fragment.message_seq
        self.created = now
        self.record_seq = 0
        self.record_version = 0

    @property
    def cost(self) -> int:
        return ENTRY_OVERHEAD + self.partial.charged


class PendingHellos:
    """Fragmented ClientHellos awaiting their remaining fragments, keyed by source address."""

    def __init__(self, *, max_hellos: int, max_bytes: int, max_length: int, timeout: float) -> None:
        if max_hellos < 1 or max_bytes < ENTRY_OVERHEAD + PIECE_OVERHEAD or timeout <= 0:
            raise ValueError("pending-hello bounds must be positive")
        self.max_hellos = max_hellos
        self.max_bytes = max_bytes
        self.max_length = max_length
        self.timeout = timeout
        #: Insertion order is creation order: the first entry is the oldest.
        self._entries: dict[Address, _Entry] = {}
        self._bytes = 0
        #: Partial hellos dropped: evicted for room, expired, replaced or inconsistent.
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def buffered_bytes(self) -> int:
        """Accounted bytes held by every partial hello."""
        return self._bytes

    def acceptable(self, fragment: HandshakeFragment) -> bool:
        """A ClientHello fragment of a message no longer than ``max_length``."""
        return (
            fragment.msg_type == HandshakeType.CLIENT_HELLO
            and fragment.length <= self.max_length
            and fragment.fragment_offset + fragment.fragment_length <= fragment.length
        )

    def add(
        self,
        peer: Address,
        fragment: HandshakeFragment,
        record_seq: int,
        record_version: int,
        now: float,
    ) -> CompletedHello | None:
        """Store one fragment from ``peer``; the whole ClientHello once it is complete.

        A fragment of another message (message_seq or length) than the one held for ``peer``
        replaces it, and one whose bytes disagree with those held drops it: before the cookie
        nothing is worth an error.
        """
        if not self.acceptable(fragment):
            return None
        self.expire(now)
        entry = self._entries.get(peer)
        if entry is not None and (
            entry.message_seq != fragment.message_seq or entry.partial.length != fragment.length
        ):
            self.discard(peer)
            entry = None
        if entry is None:
            entry = _Entry(fragment, now)
            self._bytes += entry.cost
            self._entries[peer] = entry
        try:
            pieces = entry.partial.new_pieces(fragment.fragment_offset, fragment.body)
        except ProtocolError:
            self.discard(peer)
            return None
        growth = entry.partial.growth(pieces)
        entry.partial.store(pieces)
        entry.record_seq = max(entry.record_seq, record_seq)
        entry.record_version = record_version
        self._bytes += growth
        if entry.partial.complete:
            self._remove(peer)
            return CompletedHello(
                entry.message_seq, entry.partial.body(), entry.record_seq, entry.record_version
            )
        self._make_room()
        return None

    def _make_room(self) -> None:
        """Drop the oldest partial hellos until both bounds hold."""
        while self._entries and (
            len(self._entries) > self.max_hellos or self._bytes > self.max_bytes
        ):
            self.discard(next(iter(self._entries)))

    def _remove(self, peer: Address) -> None:
        entry = self._entries.pop(peer)
        self._bytes -= entry.cost

    def discard(self, peer: Address) -> None:
        """Forget ``peer``'s partial hello, if any (counted as dropped)."""
        if peer in self._entries:
            self._remove(peer)
            self.dropped += 1

    def expire(self, now: float) -> int:
        """Drop every partial hello older than ``timeout``; returns how many."""
        expired = 0
        while self._entries:
            peer, entry = next(iter(self._entries.items()))
            if now - entry.created < self.timeout:
                break
            self.discard(peer)
            expired += 1
        return expired

    def next_expiry(self) -> float | None:
        """When the oldest partial hello expires, or None."""
        if not self._entries:
            return None
        return next(iter(self._entries.values())).created + self.timeout
