"""DTLS 1.2 record layer: framing, AEAD protection, anti-replay (RFC 6347 §4.1).

Sans-IO: datagrams in, records out, and back. The engine keeps one :class:`EpochState` per
direction and epoch; :func:`protect` and :func:`unprotect` are the only operations it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

from d2tls.core.dtls.buffer import Writer
from d2tls.core.dtls.constants import (
    CCM8_SUITES,
    CHACHA20_SUITES,
    DTLS_1_2,
    MAX_CIPHERTEXT,
    MAX_PLAINTEXT,
    MAX_SEQUENCE,
    RECORD_HEADER_LEN,
    AlertDescription,
    CipherSuite,
    ContentType,
)
from d2tls.core.errors import ProtocolError, RecordError

#: Length of the explicit nonce carried in each AEAD record (RFC 5288 §3, RFC 6655 §3).
EXPLICIT_NONCE_LEN = 8
_MAX_EPOCH = 0xFFFF
_MAX_U16 = 0xFFFF
_CONTENT_TYPES = frozenset(int(t) for t in ContentType)


@dataclass(frozen=True)
class Record:
    """One DTLSPlaintext/DTLSCiphertext structure (RFC 6347 §4.1)."""

    content_type: int
    version: int
    epoch: int
    sequence_number: int
    fragment: bytes


def parse_datagram(data: bytes) -> tuple[list[Record], bool]:
    """Split a datagram into records (RFC 6347 §4.1: several records may share a datagram).

    A truncated record, one longer than 2^14 + 2048 (RFC 5246 §6.2.3), or one of an unknown
    content type (RFC 5246 §6.2.1) ends parsing: the rest of the datagram is discarded
    (RFC 6347 §4.1.2.7). Returns the records and whether anything was discarded. Never raises.
    """
    buf = bytes(data)
    records: list[Record] = []
    pos = 0
    while pos < len(buf):
        if len(buf) - pos < RECORD_HEADER_LEN:
            return records, True
        content_type = buf[pos]
        version = int.from_bytes(buf[pos + 1 : pos + 3], "big")
        epoch = int.from_bytes(buf[pos + 3 : pos + 5], "big")
        seq = int.from_bytes(buf[pos + 5 : pos + 11], "big")
        length = int.from_bytes(buf[pos + 11 : pos + 13], "big")
        start = pos + RECORD_HEADER_LEN
        if (
            content_type not in _CONTENT_TYPES
            or length > MAX_CIPHERTEXT
            or start + length > len(buf)
        ):
            return records, True
        records.append(Record(content_type, version, epoch, seq, buf[start : start + length]))
        pos = start + length
    return records, False


def encode_record(record: Record) -> bytes:
    """Serialize a record: type(1) version(2) epoch(2) seq(6) length(2) fragment (RFC 6347 §4.1)."""
    if not 0 <= record.epoch <= _MAX_EPOCH:
        raise ValueError(f"epoch {record.epoch} out of range")
    if not 0 <= record.sequence_number <= MAX_SEQUENCE:
        raise ValueError(f"sequence number {record.sequence_number} out of range")
    if len(record.fragment) > MAX_CIPHERTEXT:
        raise ValueError(f"fragment of {len(record.fragment)} bytes exceeds 2^14 + 2048")
    return (
        Writer()
        .u8(record.content_type)
        .u16(record.version)
        .u16(record.epoch)
        .u48(record.sequence_number)
        .vector(record.fragment, 2)
        .getvalue()
    )


class ReplayWindow:
    """Sliding anti-replay window (RFC 6347 §4.1.2.6; RFC 4303 §3.4.3).

    The right edge is the highest sequence number of an *authenticated* record; numbers more
    than ``size - 1`` below it, or already marked, are rejected.
    """

    __slots__ = ("_bitmap", "_mask", "_right", "size")

    def __init__(self, size: int = 64) -> None:
        if size < 1:
            raise ValueError("replay window size must be positive")
        self.size = size
        self._mask = (1 << size) - 1
        self._right = -1  # nothing received yet
        self._bitmap = 0  # bit i set <=> (right - i) was received

    @property
    def highest(self) -> int:
        """The right edge, or -1 before the first mark."""
        return self._right

    def is_acceptable(self, seq: int) -> bool:
        """True unless ``seq`` was already seen or lies left of the window (RFC 6347 §4.1.2.6)."""
        if not 0 <= seq <= MAX_SEQUENCE:
            return False
        if seq > self._right:
            return True
        offset = self._right - seq
        if offset >= self.size:
            return False
        return not (self._bitmap >> offset) & 1

    def mark(self, seq: int) -> None:
        """Record ``seq``; call only once its record authenticated (RFC 6347 §4.1.2.6)."""
        if not 0 <= seq <= MAX_SEQUENCE:
            raise ValueError(f"sequence number {seq} out of range")
        if seq > self._right:
            shift = seq - self._right
            self._bitmap = ((self._bitmap << shift) | 1) & self._mask if shift < self.size else 1
            self._right = seq
            return
        offset = self._right - seq
        if offset < self.size:
            self._bitmap |= 1 << offset

    def reset(self) -> None:
        """Forget everything (new epoch)."""
        self._right = -1
        self._bitmap = 0


def _aad(epoch: int, seq: int, content_type: int, version: int, length: int) -> bytes:
    """``seq_num + type + version + length`` where DTLS seq_num = epoch || seq (RFC 6347 §4.1.2.1,
    RFC 5246 §6.2.3.3)."""
    return Writer().u16(epoch).u48(seq).u8(content_type).u16(version).u16(length).getvalue()


class AEADProtection:
    """AEAD record protection for one direction (RFC 5246 §6.2.3.3).

    AES-128-CCM_8 / AES-128-GCM: nonce = salt(4) || explicit(8) (RFC 5288 §3, RFC 6655 §3);
    the explicit part is the 64-bit DTLS sequence number epoch || seq, which never repeats
    under one key (RFC 6655 §3, RFC 6347 §4.1.2.1).
    ChaCha20-Poly1305: a 32-byte key, a 12-byte fixed IV XORed with the left-padded 64-bit
    epoch || seq, and no explicit nonce on the wire (RFC 7905 §2).
    """

    __slots__ = ("_aead", "_salt", "explicit_nonce_length", "suite", "tag_length")

    def __init__(self, suite: CipherSuite, key: bytes, salt: bytes) -> None:
        suite = CipherSuite(suite)
        self.suite = suite
        self._aead: AESCCM | AESGCM | ChaCha20Poly1305
        if suite in CHACHA20_SUITES:
            if len(key) != 32:
                raise ValueError("ChaCha20-Poly1305 key must be 32 bytes")
            if len(salt) != 12:
                raise ValueError("ChaCha20-Poly1305 fixed IV must be 12 bytes")
            self.tag_length = 16  # RFC 7905 §2 (RFC 8439 §2.8: 16-octet tag)
            self.explicit_nonce_length = 0
            self._aead = ChaCha20Poly1305(bytes(key))
            self._salt = bytes(salt)
            return
        if len(key) != 16:
            raise ValueError("AES-128 key must be 16 bytes")
        if len(salt) != 4:
            raise ValueError("implicit nonce salt must be 4 bytes")
        self.explicit_nonce_length = EXPLICIT_NONCE_LEN
        if suite in CCM8_SUITES:
            self.tag_length = 8  # RFC 6655 §4: CCM_8 has an 8-octet ICV
            self._aead = AESCCM(bytes(key), tag_length=8)
        else:
            self.tag_length = 16  # RFC 5288 §3: GCM tag is 16 octets
            self._aead = AESGCM(bytes(key))
        self._salt = bytes(salt)

    def _nonce(self, explicit: bytes) -> bytes:
        """The per-record nonce from the 8-byte epoch || seq (RFC 5288 §3, RFC 7905 §2)."""
        if self.explicit_nonce_length:
            return self._salt + explicit
        padded = bytes(4) + explicit
        return bytes(a ^ b for a, b in zip(self._salt, padded, strict=True))

    def __repr__(self) -> str:
        return f"AEADProtection({self.suite.name}, <key redacted>)"

    @property
    def overhead(self) -> int:
        """Bytes added to each plaintext: explicit nonce (if any) + tag."""
        return self.explicit_nonce_length + self.tag_length

    def seal(
        self, content_type: int, version: int, epoch: int, seq: int, plaintext: bytes
    ) -> bytes:
        """Encrypt one record's plaintext; returns the fragment ``explicit_nonce || ciphertext``."""
        if len(plaintext) > MAX_PLAINTEXT:
            raise ValueError("plaintext exceeds 2^14 bytes (RFC 5246 §6.2.1)")
        explicit = Writer().u16(epoch).u48(seq).getvalue()
        aad = _aad(epoch, seq, content_type, version, len(plaintext))
        sealed = self._aead.encrypt(self._nonce(explicit), bytes(plaintext), aad)
        return explicit[: self.explicit_nonce_length] + sealed

    def open(self, record: Record) -> bytes:
        """Decrypt and authenticate a record's fragment; any failure is a :class:`RecordError`."""
        fragment = record.fragment
        if len(fragment) < self.overhead:
            raise RecordError("fragment too short for explicit nonce and tag")
        if not (
            0 <= record.epoch <= _MAX_EPOCH
            and 0 <= record.sequence_number <= MAX_SEQUENCE
            and 0 <= record.content_type <= 0xFF
            and 0 <= record.version <= _MAX_U16
        ):
            raise RecordError("record header field out of range")
        if self.explicit_nonce_length:
            explicit = bytes(fragment[: self.explicit_nonce_length])
        else:  # RFC 7905 §2: the nonce comes from the record header
            explicit = Writer().u16(record.epoch).u48(record.sequence_number).getvalue()
        ciphertext = bytes(fragment[self.explicit_nonce_length :])
        aad = _aad(
            record.epoch,
            record.sequence_number,
            record.content_type,
            record.version,
            len(ciphertext) - self.tag_length,
        )
        try:
            return self._aead.decrypt(self._nonce(explicit), ciphertext, aad)
        except (InvalidTag, ValueError, OverflowError) as exc:
            raise RecordError("bad record MAC") from exc


@dataclass(eq=False)
class EpochState:
    """Record-layer state of one direction in one epoch (RFC 6347 §4.1).

    The write side uses :meth:`next_sequence`; the read side uses :attr:`replay`. Epoch 0 has
    the NULL cipher (``protection=None``); every later epoch must be protected.
    """

    epoch: int
    protection: AEADProtection | None = None
    #: Sequence number of the next record written in this epoch.
    write_seq: int = 0
    replay: ReplayWindow = field(default_factory=ReplayWindow)

    def __post_init__(self) -> None:
        if not 0 <= self.epoch <= _MAX_EPOCH:
            raise ValueError(f"epoch {self.epoch} out of range")
        if (self.epoch == 0) != (self.protection is None):
            raise ValueError("epoch 0 is unprotected and only epoch 0 (RFC 6347 §4.1)")

    def next_sequence(self) -> int:
        """Take the next write sequence number; it must never wrap (RFC 6347 §4.1)."""
        seq = self.write_seq
        if seq > MAX_SEQUENCE:
            raise ProtocolError(
                f"sequence numbers of epoch {self.epoch} exhausted", AlertDescription.INTERNAL_ERROR
            )
        self.write_seq = seq + 1
        return seq


def protect(state: EpochState, content_type: int, payload: bytes, version: int = DTLS_1_2) -> bytes:
    """Build one complete record carrying ``payload`` in ``state``'s epoch (RFC 6347 §4.1)."""
    if len(payload) > MAX_PLAINTEXT:
        raise ValueError("payload exceeds 2^14 bytes (RFC 5246 §6.2.1)")
    seq = state.next_sequence()
    if state.protection is None:
        fragment = bytes(payload)
    else:
        fragment = state.protection.seal(content_type, version, state.epoch, seq, payload)
    return encode_record(Record(content_type, version, state.epoch, seq, fragment))


def unprotect(state: EpochState, record: Record) -> bytes:
    """Authenticate and decrypt ``record`` under ``state``; returns the plaintext.

    Raises :class:`RecordError` for every record to discard silently (RFC 6347 §4.1.2.7): wrong
    epoch, replayed or too old (checked before decryption, RFC 6347 §4.1.2.6), bad MAC, or
    plaintext over 2^14 bytes (RFC 5246 §6.2.1). The window is updated only afterwards.
    """
    if record.epoch != state.epoch:
        raise RecordError(f"record of epoch {record.epoch}, expected {state.epoch}")
    seq = record.sequence_number
    if not state.replay.is_acceptable(seq):
        raise RecordError(f"replayed or too old record (seq {seq})")
    if state.protection is None:
        plaintext = bytes(record.fragment)
    else:
        plaintext = state.protection.open(record)
    if len(plaintext) > MAX_PLAINTEXT:
        raise RecordError("plaintext exceeds 2^14 bytes")
    state.replay.mark(seq)
    return plaintext
