"""Device<->agent delegation messages: the CBOR wire format of spec/delegation.md.

Every message is one CBOR map (RFC 8949) with small unsigned-integer keys, in the deterministic
encoding of RFC 8949 §4.2.1. ``decode_message`` treats its input as hostile: it first checks the
structure without allocating (``_Scanner``), then lets ``cbor2`` build the values, checks every
field, and finally requires the input to be byte-for-byte the deterministic encoding of the
decoded message. That last step rejects duplicate keys, non-minimal lengths and unsorted keys,
which ``cbor2`` accepts silently.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar, Final, TypeAlias

import cbor2

from d2tls.core.dtls.rawpk import load_raw_public_key
from d2tls.core.errors import CertificateError, D2TLSError
from d2tls.core.errors import (
    DelegationProtocolError as DelegationProtocolError,  # re-exported from d2tls.core.errors
)

MAX_MESSAGE_SIZE: Final = 16384
"""Largest encoded message: one DTLS record's plaintext (2^14 bytes, RFC 6347 §4.1)."""
MAX_REQUEST_ID: Final = 2**32 - 1
NO_REQUEST_ID: Final = 0
"""The request_id of a DelegationError answering a message whose request_id was unreadable."""
MAX_LIFETIME: Final = 7 * 24 * 3600
MAX_CERTIFICATE_SIZE: Final = 4096
MAX_RAW_PUBLIC_KEY_SIZE: Final = 256
"""A DER SubjectPublicKeyInfo of a P-256 key is 91 bytes (RFC 5480); 256 leaves room only for
a refusal that names the key, not for a large allocation."""
MAX_TRANSCRIPT_SIZE: Final = 65536
MAX_REASON_LENGTH: Final = 256


class MessageType(IntEnum):
    """Value of key 0."""

    DELEGATION_REQUEST = 1
    SIGN_REQUEST = 2
    SIGN_RESPONSE = 3
    SESSION_CONTEXT = 4
    DELEGATION_ERROR = 5
    WIPED = 6


class DelegationMode(IntEnum):
    """Bound: the device chooses the ClientHello random and checks the transcript it signs.

    Blind: the device signs the digest it is given (the D2TLS paper's behaviour).
    """

    BOUND = 0
    BLIND = 1


class OcspStatus(IntEnum):
    """What the agent learnt about the server certificate's revocation status (RFC 6960)."""

    NOT_CHECKED = 0
    GOOD = 1


class DelegationErrorCode(IntEnum):
    """Why a delegation ended (spec/delegation.md, "Error codes")."""

    MALFORMED = 1
    UNEXPECTED_MESSAGE = 2
    SERVER_UNREACHABLE = 3
    HANDSHAKE_FAILED = 4
    SERVER_CERTIFICATE_INVALID = 5
    SERVER_CERTIFICATE_REVOKED = 6
    SIGNING_REFUSED = 7
    BUSY = 8
    INTERNAL = 9
    TIMEOUT = 10
    UNSUPPORTED = 11
    UNKNOWN_CHAIN = 12


@dataclass(frozen=True)
class DelegationRequest:
    """Device -> agent: run a full handshake with this server on my behalf.

    The device's credential is either ``certificate_chain`` (X.509) or ``raw_public_key`` (the
    DER SubjectPublicKeyInfo of its TwinPeaks member key, presented as an RFC 7250 raw public
    key; ``certificate_chain`` is then empty): spec/delegation.md §5.1.
    """

    TYPE: ClassVar[MessageType] = MessageType.DELEGATION_REQUEST
    request_id: int
    server_host: str
    server_port: int
    server_name: str
    cipher_suites: tuple[int, ...]
    certificate_chain: tuple[bytes, ...]
    mode: DelegationMode
    client_random: bytes | None = None
    raw_public_key: bytes | None = None
    #: SHA-256 of the DER certificates of ``certificate_chain`` (:func:`chain_hash`), sent
    #: instead of the chain when the agent already holds it (spec/delegation.md §5.2).
    certificate_chain_hash: bytes | None = None
    #: Bound mode: SHA-256 of the server Certificate message body the device holds for
    #: server_name (from a transcript it checked); the agent may then leave that message out
    #: of the compact transcript (spec/delegation.md §6).
    server_certificate_hash: bytes | None = None


@dataclass(frozen=True)
class SignRequest:
    """Agent -> device: sign the CertificateVerify (the transcript only in bound mode).

    ``compact_transcript`` is the transcript without the device's own Certificate message,
    which the device rebuilds (spec/delegation.md §6); at most one of the two is sent.
    """

    TYPE: ClassVar[MessageType] = MessageType.SIGN_REQUEST
    request_id: int
    digest: bytes
    transcript: bytes | None = None
    compact_transcript: bytes | None = None


@dataclass(frozen=True)
class SignResponse:
    """Device -> agent: the DER ECDSA signature for the CertificateVerify."""

    TYPE: ClassVar[MessageType] = MessageType.SIGN_RESPONSE
    request_id: int
    signature: bytes


@dataclass(frozen=True)
class SessionContext:
    """Agent -> device: the session to resume. ``repr`` never shows the master secret."""

    TYPE: ClassVar[MessageType] = MessageType.SESSION_CONTEXT
    request_id: int
    session_id: bytes
    master_secret: bytes = field(repr=False)
    cipher_suite: int
    extended_master_secret: bool
    server_certificates: tuple[bytes, ...]
    lifetime: int
    ocsp_status: int


@dataclass(frozen=True)
class DelegationError:
    """Either direction: the delegation ``request_id`` ended (0: request_id was unreadable)."""

    TYPE: ClassVar[MessageType] = MessageType.DELEGATION_ERROR
    request_id: int
    code: DelegationErrorCode
    reason: str


@dataclass(frozen=True)
class Wiped:
    """Agent -> device: the agent has overwritten its copy of the session context."""

    TYPE: ClassVar[MessageType] = MessageType.WIPED
    request_id: int


DelegationMessage: TypeAlias = (
    DelegationRequest | SignRequest | SignResponse | SessionContext | DelegationError | Wiped
)


def chain_hash(certificate_chain: Sequence[bytes]) -> bytes:
    """The certificate_chain_hash of a chain: SHA-256 over each DER certificate prefixed by
    its 3-byte length, leaf first (the RFC 5246 §7.4.2 certificate_list body)."""
    digest = hashlib.sha256()
    for der in certificate_chain:
        digest.update(len(der).to_bytes(3, "big"))
        digest.update(der)
    return digest.digest()


def error_for(exc: DelegationProtocolError) -> DelegationError:
    """The DelegationError to send back for ``exc``."""
    request_id = NO_REQUEST_ID if exc.request_id is None else exc.request_id
    return DelegationError(request_id, exc.code, exc.reason[:MAX_REASON_LENGTH])


# --------------------------------------------------------------------------- field checks


class _Invalid(D2TLSError):
    """A field or structure violates the format; ``args[0]`` says how."""


_Check: TypeAlias = Callable[[object], object]


def _is_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _uint(low: int, high: int) -> _Check:
    def check(value: object) -> object:
        if not _is_uint(value):
            raise _Invalid("must be an unsigned integer")
        assert isinstance(value, int)
        if not low <= value <= high:
            raise _Invalid(f"must be in {low}..{high}")
        return int(value)

    return check


def _enum(kind: type[IntEnum]) -> _Check:
    def check(value: object) -> object:
        if not _is_uint(value):
            raise _Invalid("must be an unsigned integer")
        assert isinstance(value, int)
        try:
            return kind(value)
        except ValueError:
            raise _Invalid(f"unknown {kind.__name__} {value}") from None

    return check


def _bstr(low: int, high: int) -> _Check:
    def check(value: object) -> object:
        if not isinstance(value, bytes):
            raise _Invalid("must be a byte string")
        if not low <= len(value) <= high:
            raise _Invalid(f"length must be in {low}..{high}")
        return bytes(value)

    return check


def _tstr(low: int, high: int) -> _Check:
    def check(value: object) -> object:
        if not isinstance(value, str):
            raise _Invalid("must be a text string")
        if not low <= len(value) <= high:
            raise _Invalid(f"length must be in {low}..{high} characters")
        return str(value)

    return check


def _bool(value: object) -> object:
    if not isinstance(value, bool):
        raise _Invalid("must be a boolean")
    return value


def _array(element: _Check, low: int, high: int) -> _Check:
    def check(value: object) -> object:
        if not isinstance(value, list | tuple):
            raise _Invalid("must be an array")
        if not low <= len(value) <= high:
            raise _Invalid(f"must have {low}..{high} entries")
        return tuple(element(item) for item in value)

    return check


def _raw_public_key(value: object) -> object:
    """A DER SubjectPublicKeyInfo of an ECDSA P-256 key, in its canonical DER (RFC 7250 §3,
    RFC 5480): the bytes the agent puts in its Certificate and the device finds there."""
    spki = _bstr(1, MAX_RAW_PUBLIC_KEY_SIZE)(value)
    assert isinstance(spki, bytes)
    try:
        _, canonical = load_raw_public_key(spki, "device")
    except CertificateError as exc:
        raise _Invalid(str(exc).removeprefix("device raw public key ")) from None
    if canonical != spki:
        raise _Invalid("is not in canonical DER (RFC 5480 SubjectPublicKeyInfo)")
    return spki


@dataclass(frozen=True)
class _Field:
    key: int
    name: str
    check: _Check
    optional: bool = False
    #: The dataclass value standing for an absent optional field.
    absent: object = None


_REQUEST_ID = _Field(1, "request_id", _uint(1, MAX_REQUEST_ID))
_CERTIFICATE = _bstr(1, MAX_CERTIFICATE_SIZE)
_HOST = _tstr(1, 253)

_SCHEMA: Final[dict[MessageType, tuple[type[DelegationMessage], tuple[_Field, ...]]]] = {
    MessageType.DELEGATION_REQUEST: (
        DelegationRequest,
        (
            _REQUEST_ID,
            _Field(2, "server_host", _HOST),
            _Field(3, "server_port", _uint(1, 65535)),
            _Field(4, "server_name", _HOST),
            _Field(5, "cipher_suites", _array(_uint(0, 0xFFFF), 1, 16)),
            _Field(6, "certificate_chain", _array(_CERTIFICATE, 1, 4), optional=True, absent=()),
            _Field(7, "mode", _enum(DelegationMode)),
            _Field(8, "client_random", _bstr(32, 32), optional=True),
            _Field(21, "raw_public_key", _raw_public_key, optional=True),
            _Field(22, "certificate_chain_hash", _bstr(32, 32), optional=True),
            _Field(24, "server_certificate_hash", _bstr(32, 32), optional=True),
        ),
    ),
    MessageType.SIGN_REQUEST: (
        SignRequest,
        (
            _REQUEST_ID,
            _Field(9, "digest", _bstr(32, 32)),
            _Field(10, "transcript", _bstr(1, MAX_TRANSCRIPT_SIZE), optional=True),
            _Field(23, "compact_transcript", _bstr(1, MAX_TRANSCRIPT_SIZE), optional=True),
        ),
    ),
    MessageType.SIGN_RESPONSE: (
        SignResponse,
        (_REQUEST_ID, _Field(11, "signature", _bstr(8, 80))),
    ),
    MessageType.SESSION_CONTEXT: (
        SessionContext,
        (
            _REQUEST_ID,
            _Field(12, "session_id", _bstr(1, 32)),
            _Field(13, "master_secret", _bstr(48, 48)),
            _Field(14, "cipher_suite", _uint(0, 0xFFFF)),
            _Field(15, "extended_master_secret", _bool),
            _Field(16, "server_certificates", _array(_CERTIFICATE, 0, 4)),
            _Field(17, "lifetime", _uint(0, MAX_LIFETIME)),
            _Field(18, "ocsp_status", _enum(OcspStatus)),
        ),
    ),
    MessageType.DELEGATION_ERROR: (
        DelegationError,
        (
            _Field(1, "request_id", _uint(NO_REQUEST_ID, MAX_REQUEST_ID)),
            _Field(19, "code", _enum(DelegationErrorCode)),
            _Field(20, "reason", _tstr(0, MAX_REASON_LENGTH)),
        ),
    ),
    MessageType.WIPED: (Wiped, (_REQUEST_ID,)),
}

_KINDS: Final[dict[type, MessageType]] = {cls: kind for kind, (cls, _) in _SCHEMA.items()}


def _check_fields(kind: MessageType, values: Mapping[str, object]) -> None:
    """Rules that involve more than one field."""
    if kind is MessageType.DELEGATION_REQUEST:
        bound = values["mode"] is DelegationMode.BOUND
        if bound and values["client_random"] is None:
            raise _Invalid("client_random is required in bound mode")
        if not bound and values["client_random"] is not None:
            raise _Invalid("client_random is forbidden in blind mode")
        if not bound and values["server_certificate_hash"] is not None:
            raise _Invalid("server_certificate_hash is forbidden in blind mode")
        chain, raw = values["certificate_chain"], values["raw_public_key"]
        hashed = values["certificate_chain_hash"]
        given = sum((bool(chain), raw is not None, hashed is not None))
        if given > 1:
            raise _Invalid(
                "certificate_chain, certificate_chain_hash and raw_public_key are mutually "
                "exclusive"
            )
        if given == 0:
            raise _Invalid(
                "a certificate_chain, certificate_chain_hash or raw_public_key is required"
            )
    elif (
        kind is MessageType.SIGN_REQUEST
        and values["transcript"] is not None
        and values["compact_transcript"] is not None
    ):
        raise _Invalid("transcript and compact_transcript are mutually exclusive")


def _to_wire(value: object) -> object:
    if isinstance(value, tuple):
        return [_to_wire(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    return value


# --------------------------------------------------------------------------- encoding


def encode_message(message: DelegationMessage) -> bytes:
    """The deterministic CBOR encoding of ``message``; ValueError if the message is invalid."""
    kind = _KINDS.get(type(message))
    if kind is None:
        raise TypeError(f"not a delegation message: {type(message).__name__}")
    wire: dict[int, object] = {0: int(kind)}
    values: dict[str, object] = {}
    for spec in _SCHEMA[kind][1]:
        value = getattr(message, spec.name)
        if spec.optional and value == spec.absent:
            values[spec.name] = spec.absent
            continue
        try:
            values[spec.name] = spec.check(value)
        except _Invalid as exc:
            raise ValueError(f"{type(message).__name__}.{spec.name} {exc.args[0]}") from None
        wire[spec.key] = _to_wire(values[spec.name])
    try:
        _check_fields(kind, values)
    except _Invalid as exc:
        raise ValueError(f"{type(message).__name__}: {exc.args[0]}") from None
    data: bytes = cbor2.dumps(wire, canonical=True)
    if len(data) > MAX_MESSAGE_SIZE:
        raise ValueError(f"encoded {type(message).__name__} exceeds {MAX_MESSAGE_SIZE} bytes")
    return data


def _canonical(kind: MessageType, values: dict[str, Any]) -> bytes:
    """The deterministic encoding of field values that passed their checks (what
    :func:`encode_message` gives for the message they make, without checking them again)."""
    wire: dict[int, object] = {0: int(kind)}
    for spec in _SCHEMA[kind][1]:
        value = values[spec.name]
        if not (spec.optional and value == spec.absent):
            wire[spec.key] = _to_wire(value)
    data: bytes = cbor2.dumps(wire, canonical=True)
    return data


# --------------------------------------------------------------------------- decoding


class _Scanner:
    """Checks, without building values, that ``data`` is one item of our CBOR profile.

    Profile: a definite-length map at the top level, with unsigned-integer keys, no key twice;
    values are unsigned integers, byte strings, UTF-8 text strings, true/false, or definite
    arrays of those scalars. Everything else (negative integers, tags, floats, null, undefined,
    other simple values, indefinite lengths, reserved encodings, deeper nesting, trailing bytes)
    is refused. Records the request_id (key 1) as soon as it is read, for error replies.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.request_id: int | None = None

    def scan(self) -> None:
        """Raise _Invalid unless the whole input is one item of the profile (one loop: this
        runs for every message the device and the agent receive)."""
        data = self.data
        end = len(data)
        from_bytes = int.from_bytes

        def head(pos: int) -> tuple[int, int, int, int]:
            """(major type, additional information, argument, next position)."""
            if pos >= end:
                raise _Invalid("truncated CBOR item")
            initial = data[pos]
            pos += 1
            major, info = initial >> 5, initial & 0x1F
            if info < 24:
                return major, info, info, pos
            if info == 31:
                raise _Invalid("indefinite-length items are not allowed")
            if info > 27:
                raise _Invalid("reserved CBOR additional information")
            size = 1 << (info - 24)
            if pos + size > end:
                raise _Invalid("truncated CBOR item")
            return major, info, from_bytes(data[pos : pos + size], "big"), pos + size

        def scalar(major: int, info: int, argument: int, pos: int) -> int:
            """Skip one scalar whose head ended at ``pos``; the position after it."""
            if major == 0:
                return pos
            if major == 2 or major == 3:
                if argument > end - pos:
                    raise _Invalid("truncated CBOR item")
                if major == 3:
                    try:
                        data[pos : pos + argument].decode("utf-8")
                    except UnicodeDecodeError:
                        raise _Invalid("text string is not valid UTF-8") from None
                return pos + argument
            if major == 7 and info in (20, 21):
                return pos
            raise _Invalid(_NOT_ALLOWED[major])

        major, _, count, pos = head(self.pos)
        if major == 6:
            raise _Invalid("CBOR tags are not allowed")
        if major != 5:
            raise _Invalid("a message must be a CBOR map")
        if 2 * count > end - pos:
            raise _Invalid("truncated CBOR map")
        seen: set[int] = set()
        for _ in range(count):
            major, _, key, pos = head(pos)
            if major != 0:
                raise _Invalid("map keys must be unsigned integers")
            if key in seen:
                raise _Invalid(f"duplicate map key {key}")
            seen.add(key)
            major, info, argument, pos = head(pos)
            if major == 4:
                if argument > end - pos:  # every element takes at least one byte
                    raise _Invalid("truncated CBOR array")
                for _ in range(argument):
                    pos = scalar(*head(pos))
            else:
                pos = scalar(major, info, argument, pos)
            if key == 1 and major == 0 and 1 <= argument <= MAX_REQUEST_ID:
                self.request_id = argument
        self.pos = pos
        if pos != end:
            raise _Invalid("trailing bytes after the message")


_NOT_ALLOWED: Final = {
    1: "negative integers are not allowed",
    4: "arrays nested in arrays are not allowed",
    5: "nested maps are not allowed",
    6: "CBOR tags are not allowed",
    7: "floats and simple values other than true/false are not allowed",
}


def decode_message(data: bytes) -> DelegationMessage:
    """Decode one message; any problem raises DelegationProtocolError (never anything else)."""
    malformed = DelegationErrorCode.MALFORMED
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DelegationProtocolError(malformed, "a message must be bytes")
    data = bytes(data)
    scanner = _Scanner(data[: MAX_MESSAGE_SIZE + 1])
    if len(data) > MAX_MESSAGE_SIZE:
        with contextlib.suppress(_Invalid):  # scan only to find the request_id for the reply
            scanner.scan()
        raise DelegationProtocolError(
            malformed, f"message exceeds {MAX_MESSAGE_SIZE} bytes", scanner.request_id
        )
    try:
        scanner.scan()
    except _Invalid as exc:
        raise DelegationProtocolError(malformed, exc.args[0], scanner.request_id) from None
    request_id = scanner.request_id
    try:
        items: Any = cbor2.loads(data)
    except Exception as exc:  # the scanner should make this unreachable; stay safe anyway
        raise DelegationProtocolError(malformed, f"undecodable CBOR: {exc}", request_id) from None
    if not isinstance(items, dict):
        raise DelegationProtocolError(malformed, "a message must be a CBOR map", request_id)

    raw_type: Any = items.get(0)
    if not _is_uint(raw_type):
        raise DelegationProtocolError(malformed, "missing or invalid message type", request_id)
    try:
        kind = MessageType(raw_type)
    except ValueError:
        raise DelegationProtocolError(
            DelegationErrorCode.UNSUPPORTED, f"unknown message type {raw_type}", request_id
        ) from None
    build, fields = _SCHEMA[kind]
    name = build.__name__

    unknown = sorted(set(items) - {0} - {spec.key for spec in fields})
    if unknown:
        raise DelegationProtocolError(malformed, f"{name}: unknown keys {unknown}", request_id)
    values: dict[str, Any] = {}
    for spec in fields:
        if spec.key not in items:
            if not spec.optional:
                raise DelegationProtocolError(
                    malformed, f"{name}: missing {spec.name} (key {spec.key})", request_id
                )
            values[spec.name] = spec.absent
            continue
        try:
            values[spec.name] = spec.check(items[spec.key])
        except _Invalid as exc:
            raise DelegationProtocolError(
                malformed, f"{name}.{spec.name} {exc.args[0]}", request_id
            ) from None
    try:
        _check_fields(kind, values)
    except _Invalid as exc:
        raise DelegationProtocolError(malformed, f"{name}: {exc.args[0]}", request_id) from None

    message = build(**values)
    if _canonical(kind, values) != data:
        raise DelegationProtocolError(
            malformed, "not the deterministic CBOR encoding (RFC 8949 §4.2.1)", request_id
        )
    return message
