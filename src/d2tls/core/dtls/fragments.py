"""Handshake message fragmentation and reassembly (RFC 6347 §4.2.2-4.2.3)."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Literal, NamedTuple

from d2tls.core.dtls.buffer import Writer
from d2tls.core.dtls.constants import HANDSHAKE_HEADER_LEN, MAX_HANDSHAKE_MESSAGE
from d2tls.core.errors import DecodeError, IllegalParameter

__all__ = [
    "MAX_REASSEMBLY_BYTES",
    "PIECE_OVERHEAD",
    "AddResult",
    "HandshakeFragment",
    "PartialMessage",
    "ReassembledMessage",
    "Reassembler",
    "encode_fragment",
    "fragment_message",
    "parse_handshake_fragments",
]

_MAX_MESSAGE_SEQ = 0xFFFF

#: Outcome of :meth:`Reassembler.add`.
AddResult = Literal["old", "buffered", "dropped"]


class HandshakeFragment(NamedTuple):
    """One handshake fragment: the 12-byte DTLS header fields plus its body (RFC 6347 §4.2.2).

    A named tuple: every handshake record is split into these, so they are cheap to make."""

    msg_type: int
    length: int
    message_seq: int
    fragment_offset: int
    fragment_length: int
    body: bytes

    def check(self) -> None:
        """Raise DecodeError unless the header fields are consistent (RFC 6347 §4.2.3)."""
        if not 0 <= self.msg_type <= 0xFF:
            raise DecodeError(f"msg_type {self.msg_type} out of range")
        if not 0 <= self.message_seq <= _MAX_MESSAGE_SEQ:
            raise DecodeError(f"message_seq {self.message_seq} out of range")
        if not 0 <= self.length <= MAX_HANDSHAKE_MESSAGE:
            raise DecodeError(f"handshake message length {self.length} exceeds our limit")
        if self.fragment_offset < 0 or self.fragment_length < 0:
            raise DecodeError("negative fragment offset or length")
        if self.fragment_offset + self.fragment_length > self.length:
            raise DecodeError("fragment extends past the end of its message")
        if len(self.body) != self.fragment_length:
            raise DecodeError("fragment body does not match fragment_length")


def parse_handshake_fragments(payload: bytes) -> list[HandshakeFragment]:
    """Split a handshake record's payload into its fragments (RFC 6347 §4.2.2-4.2.3).

    A record may carry several fragments back to back. An empty payload is a DecodeError
    (RFC 5246 §6.2.1: "Implementations MUST NOT send zero-length fragments of Handshake ...").
    """
    if not payload:
        raise DecodeError("empty handshake record")
    data = bytes(payload)
    end = len(data)
    pos = 0
    out: list[HandshakeFragment] = []
    from_bytes = int.from_bytes
    while pos < end:
        if end - pos < HANDSHAKE_HEADER_LEN:
            raise DecodeError("truncated handshake header")
        msg_type = data[pos]
        length = from_bytes(data[pos + 1 : pos + 4], "big")
        message_seq = from_bytes(data[pos + 4 : pos + 6], "big")
        fragment_offset = from_bytes(data[pos + 6 : pos + 9], "big")
        fragment_length = from_bytes(data[pos + 9 : pos + 12], "big")
        pos += HANDSHAKE_HEADER_LEN
        if length > MAX_HANDSHAKE_MESSAGE:
            raise DecodeError(f"handshake message length {length} exceeds our limit")
        if fragment_offset + fragment_length > length:
            raise DecodeError("fragment extends past the end of its message")
        if fragment_length > end - pos:
            raise DecodeError(f"truncated: wanted {fragment_length} bytes, {end - pos} left")
        body = data[pos : pos + fragment_length]
        pos += fragment_length
        out.append(
            HandshakeFragment(msg_type, length, message_seq, fragment_offset, fragment_length, body)
        )
    return out


def encode_fragment(f: HandshakeFragment) -> bytes:
    """Header + body of one fragment (RFC 6347 §4.2.2); ValueError if inconsistent."""
    try:
        f.check()
    except DecodeError as exc:
        raise ValueError(exc.reason) from exc
    return (
        Writer()
        .u8(f.msg_type)
        .u24(f.length)
        .u16(f.message_seq)
        .u24(f.fragment_offset)
        .u24(f.fragment_length)
        .raw(f.body)
        .getvalue()
    )


def fragment_message(
    msg_type: int, message_seq: int, body: bytes, max_fragment_body: int
) -> list[HandshakeFragment]:
    """Split a message into fragments of at most ``max_fragment_body`` bytes of body
    (RFC 6347 §4.2.3); an empty body gives one empty fragment."""
    if max_fragment_body < 1:
        raise ValueError("max_fragment_body must be positive")
    body = bytes(body)
    length = len(body)
    offsets = range(0, length, max_fragment_body) if length else range(1)
    out: list[HandshakeFragment] = []
    for off in offsets:
        chunk = body[off : off + max_fragment_body]
        frag = HandshakeFragment(msg_type, length, message_seq, off, len(chunk), chunk)
        try:
            frag.check()
        except DecodeError as exc:
            raise ValueError(exc.reason) from exc
        out.append(frag)
    return out


@dataclass(frozen=True)
class ReassembledMessage:
    """A complete handshake message, ready for ``decode_handshake_body``."""

    msg_type: int
    message_seq: int
    body: bytes


#: Bytes charged per stored piece on top of its length (Python object overhead), so that many
#: tiny fragments cannot hold more memory than their accounted size suggests.
PIECE_OVERHEAD = 64
#: Default bound on the accounted bytes one association may hold in reassembly: one maximal
#: message plus room for the rest of a flight (RFC 6347 §4.2.3 lets fragments arrive in any order).
MAX_REASSEMBLY_BYTES = 2 * MAX_HANDSHAKE_MESSAGE


class PartialMessage:
    """A message being reassembled, stored by the bytes received (never by its declared length).

    ``starts``/``pieces`` are sorted, disjoint pieces of the message; each new fragment stores
    only the bytes not held yet, so memory grows with what arrived, not with ``length``.
    """

    __slots__ = ("charged", "covered", "length", "msg_type", "pieces", "starts")

    def __init__(self, msg_type: int, length: int) -> None:
        self.msg_type = msg_type
        self.length = length
        self.starts: list[int] = []
        self.pieces: list[bytes] = []
        self.covered = 0
        #: Accounted memory: bytes held plus :data:`PIECE_OVERHEAD` per piece (at least one).
        self.charged = 0

    @property
    def complete(self) -> bool:
        return self.covered == self.length

    def growth(self, pieces: list[tuple[int, bytes]]) -> int:
        """What storing ``pieces`` would add to :attr:`charged`."""
        added = sum(len(p) + PIECE_OVERHEAD for _, p in pieces)
        return added if added or self.charged else PIECE_OVERHEAD

    def new_pieces(self, offset: int, data: bytes) -> list[tuple[int, bytes]]:
        """The parts of ``data`` at ``offset`` not held yet; IllegalParameter if bytes that we
        hold disagree with it (RFC 6347 §4.2.3 retransmits identical bytes)."""
        end = offset + len(data)
        out: list[tuple[int, bytes]] = []
        position = offset
        k = max(0, bisect_right(self.starts, offset) - 1)
        while k < len(self.starts) and self.starts[k] < end:
            start = self.starts[k]
            stop = start + len(self.pieces[k])
            if stop > position:
                if start > position:
                    out.append((position, data[position - offset : start - offset]))
                lo, hi = max(start, position), min(stop, end)
                if self.pieces[k][lo - start : hi - start] != data[lo - offset : hi - offset]:
                    raise IllegalParameter("overlapping handshake fragments disagree")
                position = hi
            k += 1
        if position < end:
            out.append((position, data[position - offset :]))
        return out

    def store(self, pieces: list[tuple[int, bytes]]) -> None:
        """Insert pieces returned by :meth:`new_pieces`."""
        for start, piece in pieces:
            k = bisect_left(self.starts, start)
            self.starts.insert(k, start)
            self.pieces.insert(k, bytes(piece))
            self.covered += len(piece)
        self.charged += self.growth(pieces)

    def add(self, offset: int, data: bytes) -> None:
        """Store ``data`` at ``offset``; bytes that disagree with earlier ones are refused."""
        self.store(self.new_pieces(offset, data))

    def body(self) -> bytes:
        """The whole message (only once :attr:`complete`)."""
        return b"".join(self.pieces)


class Reassembler:
    """Buffers fragments and yields complete messages in message_seq order (RFC 6347 §4.2.2).

    Bounded per association: only messages with ``next_seq <= message_seq < next_seq +
    max_ahead`` are stored, no message longer than ``max_length``, and at most ``max_bytes``
    accounted bytes (bytes received plus :data:`PIECE_OVERHEAD` per piece) in all. Memory is
    allocated by the bytes received, never by a declared length. A fragment beyond a bound is
    dropped (RFC 6347 §4.1.2.7) and counted in :attr:`dropped`.
    """

    def __init__(
        self,
        next_seq: int = 0,
        max_ahead: int = 8,
        *,
        max_bytes: int = MAX_REASSEMBLY_BYTES,
        max_length: int = MAX_HANDSHAKE_MESSAGE,
    ) -> None:
        if max_ahead < 1:
            raise ValueError("max_ahead must be at least 1")
        if next_seq < 0:
            raise ValueError("next_seq must not be negative")
        if max_bytes < 1 or max_length < 0:
            raise ValueError("max_bytes must be positive and max_length not negative")
        self.next_seq = next_seq
        self.max_ahead = max_ahead
        self.max_bytes = max_bytes
        self.max_length = max_length
        self._pending: dict[int, PartialMessage] = {}
        self._bytes = 0
        #: Fragments dropped because they lay too far ahead or exceeded a bound.
        self.dropped = 0

    def add(self, fragment: HandshakeFragment) -> AddResult:
        """Store a fragment.

        Returns "old" for a message already delivered (a retransmission: RFC 6347 §4.2.4 may
        call for resending our last flight), "dropped" when it lies ``max_ahead`` or more
        messages ahead or would exceed a bound, else "buffered". A fragment whose msg_type or
        length disagrees with earlier fragments of the same message, or whose overlapping bytes
        differ, is IllegalParameter; inconsistent header fields are DecodeError.
        """
        fragment.check()
        seq = fragment.message_seq
        if seq < self.next_seq:
            return "old"
        if seq >= self.next_seq + self.max_ahead or fragment.length > self.max_length:
            self.dropped += 1
            return "dropped"
        partial = self._pending.get(seq)
        if partial is None:
            partial = PartialMessage(fragment.msg_type, fragment.length)
        elif partial.msg_type != fragment.msg_type or partial.length != fragment.length:
            raise IllegalParameter(f"fragments of message {seq} disagree on type or length")
        pieces = partial.new_pieces(fragment.fragment_offset, fragment.body)
        growth = partial.growth(pieces)
        if self._bytes + growth > self.max_bytes:
            self.dropped += 1
            return "dropped"
        partial.store(pieces)
        self._pending[seq] = partial
        self._bytes += growth
        return "buffered"

    def pop(self) -> ReassembledMessage | None:
        """The next in-order complete message (advancing ``next_seq``), else None."""
        partial = self._pending.get(self.next_seq)
        if partial is None or not partial.complete:
            return None
        del self._pending[self.next_seq]
        self._bytes -= partial.charged
        message = ReassembledMessage(partial.msg_type, self.next_seq, partial.body())
        self.next_seq += 1
        return message

    def reset(self, next_seq: int) -> None:
        """Forget every buffered fragment and expect ``next_seq`` next."""
        if next_seq < 0:
            raise ValueError("next_seq must not be negative")
        self._pending.clear()
        self._bytes = 0
        self.next_seq = next_seq

    @property
    def pending(self) -> int:
        """How many messages are partly or fully buffered."""
        return len(self._pending)

    @property
    def buffered_bytes(self) -> int:
        """Accounted bytes held (bytes received plus per-piece overhead)."""
        return self._bytes
