"""The messages of the TwinPeaks key-server hierarchy (spec/twinpeaks.md §8).

Section 2.4 of "A New Certificateless Public Key Distribution and Lightweight Secure
Communication" (Eunsang Cho, Seoul National University): a child registers its key with its
parent key server (2.4.2), a client looks a key up from the roots down with key requests and
signed key responses (2.4.1), a member's key is updated (2.4.3), a cached key is reported
outdated and invalidated (2.4.4), and a client may cross-check several roots (2.4.5, 2.5.1).

Every message is a CBOR map (RFC 8949, deterministic encoding) whose key 0 gives its kind
(:class:`MessageKind`, 5 and up; 1 to 4 are the structures of :mod:`~d2tls.core.twinpeaks.clpkc`).
Decoders treat input as hostile: more than :data:`MAX_MESSAGE_SIZE` bytes, undecodable CBOR,
unknown or missing keys, wrong types or sizes and non-deterministic encodings all raise
:class:`~d2tls.core.twinpeaks.errors.EncodingError` (or a subclass). This module only encodes,
decodes, signs and checks; the roles that send the messages are not here (sans-IO, no state).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar, Final, Protocol, TypeAlias, TypeVar

import cbor2

from d2tls.core.twinpeaks import clpkc, curve
from d2tls.core.twinpeaks.clpkc import FullPrivateKey, Params, PartialPrivateKey, PublicKey
from d2tls.core.twinpeaks.curve import Point, RandomSource, system_random
from d2tls.core.twinpeaks.errors import (
    CrossCheckError,
    EncodingError,
    ResponseMismatch,
    StaleRecord,
    TwinPeaksError,
)
from d2tls.core.twinpeaks.identity import (
    Identity,
    IPAddress,
    normalize_name,
    parse_address,
)

MAX_MESSAGE_SIZE: Final = 2048
"""Largest encoded message accepted (the largest legal key response is about 1500 bytes)."""
REQUEST_ID_SIZE: Final = 8
MAX_TTL: Final = 604800
"""Longest cache lifetime of a key record, in seconds (one week)."""
MAX_CLOCK_SKEW: Final = 300
"""How far in the future a record's issue time may be, in seconds (§8.5)."""
MAX_DETAIL_LENGTH: Final = 256
MAX_UINT32: Final = 2**32 - 1
MAX_UINT64: Final = 2**64 - 1
RECORD_CONTEXT: Final = b"D2TLS-TWINPEAKS-V1 key-record\x00"
"""Prefix of the signed bytes of a key record (domain separation from other signatures)."""


class MessageKind(IntEnum):
    """Value of key 0 of each hierarchy message (spec/twinpeaks.md §8)."""

    REGISTRATION_REQUEST = 5
    REGISTRATION_RESPONSE = 6
    KEY_REQUEST = 7
    KEY_RESPONSE = 8
    KEY_RECORD = 9
    KEY_UPDATE = 10
    STATUS = 11
    OUTDATED_KEY = 12
    INVALIDATE = 13
    TRUST_ANCHOR = 14


class RecordType(IntEnum):
    """What a key record says (§8.4)."""

    ANSWER = 1
    """The key of the name and address asked for."""
    REFERRAL = 2
    """Not authoritative: the key and parameters of the child key server to ask next."""
    DENIAL = 3
    """No key for that name and address in the responder's zone."""


class DenialReason(IntEnum):
    UNKNOWN_NAME = 1
    """No member of that name."""
    UNKNOWN_ADDRESS = 2
    """The name is a member, but has no key for this address (a DNS answer to doubt)."""
    NOT_IN_ZONE = 3
    """The name is not in the responder's zone."""


class UpdateReason(IntEnum):
    """Why a member replaces its key (section 2.4.3 of the dissertation)."""

    ADDRESS_CHANGED = 1
    ROLLOVER = 2
    MEMBER_COMPROMISED = 3
    PARENT_REKEYED = 4


class OutdatedReason(IntEnum):
    """Why a key is reported outdated (section 2.4.4 of the dissertation)."""

    ADDRESS_CHANGED = 1
    KEY_UPDATED = 2
    PARAMS_CHANGED = 3
    KEY_COMPROMISED = 4


class StatusCode(IntEnum):
    """Result of a registration, a key update or an invalidation (§8.7)."""

    OK = 0
    MALFORMED = 1
    UNAUTHORISED = 2
    NOT_IN_ZONE = 3
    CONFLICT = 4
    SERVER_FAILURE = 5
    RATE_LIMITED = 6


def new_request_id(rng: RandomSource = system_random) -> bytes:
    """A fresh 8-byte request ID (§8.1): random, so an off-path party cannot guess it."""
    data = rng(REQUEST_ID_SIZE)
    if not isinstance(data, bytes) or len(data) != REQUEST_ID_SIZE:
        raise TwinPeaksError(f"the random source must return {REQUEST_ID_SIZE} bytes")
    return data


# --------------------------------------------------------------------------- field checks
class _Fields:
    """The fields of one decoded map, with typed accessors that raise EncodingError."""

    def __init__(self, items: dict[Any, Any], what: str) -> None:
        self.items = items
        self.what = what

    def _fail(self, key: int, message: str) -> EncodingError:
        return EncodingError(f"{self.what}: field {key} {message}")

    def has(self, key: int) -> bool:
        return key in self.items

    def uint(self, key: int, maximum: int = MAX_UINT64) -> int:
        value = self.items[key]
        if type(value) is not int or not 0 <= value <= maximum:
            raise self._fail(key, f"must be an unsigned integer up to {maximum}")
        return value

    def enum(self, key: int, kind: type[IntEnum]) -> Any:
        value = self.items[key]
        if type(value) is not int or value not in {int(m) for m in kind}:
            raise self._fail(key, f"is not a known {kind.__name__}")
        return kind(value)

    def bstr(self, key: int, sizes: tuple[int, int]) -> bytes:
        value = self.items[key]
        if type(value) is not bytes or not sizes[0] <= len(value) <= sizes[1]:
            raise self._fail(key, f"must be a byte string of {sizes[0]}..{sizes[1]} bytes")
        return value

    def tstr(self, key: int, maximum: int) -> str:
        value = self.items[key]
        if type(value) is not str or len(value) > maximum:
            raise self._fail(key, f"must be a text string of at most {maximum} characters")
        return value

    def request_id(self, key: int = 1) -> bytes:
        return self.bstr(key, (REQUEST_ID_SIZE, REQUEST_ID_SIZE))

    def identity(self, key: int) -> Identity:
        return Identity.decode(self.bstr(key, (40, 304)))

    def point(self, key: int) -> Point:
        return curve.decode_point(self.bstr(key, (65, 65)))

    def scalar(self, key: int) -> int:
        return curve.decode_scalar(self.bstr(key, (32, 32)))

    def params(self, key: int) -> Params:
        return Params.decode(self.bstr(key, (1, clpkc.MAX_ENCODED_SIZE)))

    def name(self, key: int) -> str:
        text = self.tstr(key, 253)
        if normalize_name(text) != text:
            raise self._fail(key, "is not a name in normalised form")
        return text

    def address(self, key: int) -> IPAddress:
        return parse_address(self.bstr(key, (4, 16)))

    def port(self, key: int) -> int:
        value = self.uint(key, 65535)
        if value == 0:
            raise self._fail(key, "must be a port in 1..65535")
        return value

    def map(self, key: int, what: str, required: set[int], optional: set[int]) -> _Fields:
        value = self.items[key]
        if type(value) is not dict:
            raise self._fail(key, "must be a map")
        _check_keys(value, f"{self.what}: {what}", required, optional)
        return _Fields(value, f"{self.what}: {what}")


def _check_keys(items: dict[Any, Any], what: str, required: set[int], optional: set[int]) -> None:
    if not all(type(k) is int for k in items):
        raise EncodingError(f"{what}: every key must be an integer")
    keys = set(items)
    if not required <= keys or not keys <= required | optional:
        missing, unknown = sorted(required - keys), sorted(keys - required - optional)
        raise EncodingError(f"{what}: missing keys {missing}, unknown keys {unknown}")


def _load(data: bytes, kind: MessageKind, required: set[int], optional: set[int]) -> _Fields:
    """The fields of a CBOR map of the given kind; structure only, values unchecked."""
    what = kind.name.lower().replace("_", " ")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EncodingError(f"{what}: must be bytes")
    if len(data) > MAX_MESSAGE_SIZE:
        raise EncodingError(f"{what}: longer than {MAX_MESSAGE_SIZE} bytes")
    items = _loads(bytes(data), what)
    if type(items) is not dict:
        raise EncodingError(f"{what}: not a CBOR map")
    found = items.get(0)
    if type(found) is not int or found != kind:
        raise EncodingError(f"{what}: key 0 is not {int(kind)}")
    _check_keys(items, what, {0, *required}, optional)
    return _Fields(items, what)


def _loads(data: bytes, what: str) -> Any:
    try:
        return cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types on malformed input
        raise EncodingError(f"{what}: undecodable CBOR ({type(exc).__name__})") from None


def _dump(kind: MessageKind, fields: dict[int, Any]) -> bytes:
    data: bytes = cbor2.dumps({0: int(kind), **fields}, canonical=True)
    if len(data) > MAX_MESSAGE_SIZE:
        raise EncodingError(f"{kind.name.lower()}: encoding exceeds {MAX_MESSAGE_SIZE} bytes")
    return data


class _Encodable(Protocol):
    def encode(self) -> bytes: ...


_M = TypeVar("_M", bound=_Encodable)


def _finish(data: bytes, message: _M) -> _M:
    """Refuse an input that is not the deterministic encoding of what it decoded to."""
    if message.encode() != bytes(data):
        raise EncodingError("not the deterministic CBOR encoding (RFC 8949 §4.2.1)")
    return message


def _check_uint(value: int, maximum: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise EncodingError(f"{what} must be an integer in 0..{maximum}")


def _check_enum(value: int, kind: type[IntEnum]) -> None:
    if isinstance(value, bool) or value not in {int(m) for m in kind}:
        raise EncodingError(f"{value!r} is not a known {kind.__name__}")


def _check_request_id(value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != REQUEST_ID_SIZE:
        raise EncodingError(f"a request ID is {REQUEST_ID_SIZE} bytes")


def _check_name_and_address(name: str, address: IPAddress) -> None:
    """The name in normalised form and the address in canonical form (§3, §8.1)."""
    if normalize_name(name) != name:
        raise EncodingError(f"{name!r} is not a name in normalised form")
    if parse_address(address) != address:
        raise EncodingError("address is not in canonical form")


def _check_key_server(identity: Identity, params: Params | None, port: int | None) -> None:
    """A child key server names its zone params and port together; its name is its zone."""
    if (params is None) != (port is None):
        raise EncodingError("zone params and port come together (a child key server)")
    if params is not None and params.zone != identity.name:
        raise EncodingError(f"a key server's zone {params.zone!r} is not its name")
    if port is not None and not 1 <= port <= 65535:
        raise EncodingError("a port is in 1..65535")


def _in_zone(name: str, zone: str) -> bool:
    return zone == "." or name == zone or name.endswith("." + zone)


# --------------------------------------------------------------------------- registration
@dataclass(frozen=True, slots=True)
class RegistrationRequest:
    """Child to parent over DTLS-PSK (§8.2): ``{0: 5, 1: rid, 2: ID, 3: U, ?4: params, ?5:
    port}``. A child key server adds its own params as KGC of the zone that is its name."""

    KIND: ClassVar = MessageKind.REGISTRATION_REQUEST
    request_id: bytes
    identity: Identity
    u: Point
    zone_params: Params | None = None
    port: int | None = None

    def __post_init__(self) -> None:
        _check_request_id(self.request_id)
        _check_key_server(self.identity, self.zone_params, self.port)

    @classmethod
    def for_secret(
        cls,
        request_id: bytes,
        secret: clpkc.SecretValue,
        zone_params: Params | None = None,
        port: int | None = None,
    ) -> RegistrationRequest:
        """The request carrying Set-Secret-Value's (ID, U)."""
        return cls(request_id, secret.identity, secret.u, zone_params, port)

    def partial_key_request(self) -> clpkc.PartialKeyRequest:
        """The CL-PKC input of Partial-Private-Key-Extract (spec §4.3)."""
        return clpkc.PartialKeyRequest(self.identity, self.u)

    def encode(self) -> bytes:
        fields: dict[int, Any] = {1: self.request_id, 2: self.identity.encode(), 3: self.u.encode()}
        if self.zone_params is not None and self.port is not None:
            fields |= {4: self.zone_params.encode(), 5: self.port}
        return _dump(self.KIND, fields)

    @classmethod
    def decode(cls, data: bytes) -> RegistrationRequest:
        f = _load(data, cls.KIND, {1, 2, 3}, {4, 5})
        return _finish(
            data,
            cls(
                f.request_id(),
                f.identity(2),
                f.point(3),
                f.params(4) if f.has(4) else None,
                f.port(5) if f.has(5) else None,
            ),
        )


@dataclass(frozen=True, slots=True)
class KeyUpdate:
    """Child to parent over DTLS-PSK (§8.6; section 2.4.3 of the dissertation): a new (ID, U)
    replacing the key with serial ``replaces``. ``{0: 10, 1: rid, 2: ID, 3: U, 4: replaces,
    5: reason, ?6: params, ?7: port}``."""

    KIND: ClassVar = MessageKind.KEY_UPDATE
    request_id: bytes
    identity: Identity
    u: Point
    replaces: int
    reason: UpdateReason
    zone_params: Params | None = None
    port: int | None = None

    def __post_init__(self) -> None:
        _check_request_id(self.request_id)
        _check_uint(self.replaces, MAX_UINT32, "the serial replaced")
        _check_enum(self.reason, UpdateReason)
        _check_key_server(self.identity, self.zone_params, self.port)

    def partial_key_request(self) -> clpkc.PartialKeyRequest:
        return clpkc.PartialKeyRequest(self.identity, self.u)

    def encode(self) -> bytes:
        fields: dict[int, Any] = {
            1: self.request_id,
            2: self.identity.encode(),
            3: self.u.encode(),
            4: self.replaces,
            5: int(self.reason),
        }
        if self.zone_params is not None and self.port is not None:
            fields |= {6: self.zone_params.encode(), 7: self.port}
        return _dump(self.KIND, fields)

    @classmethod
    def decode(cls, data: bytes) -> KeyUpdate:
        f = _load(data, cls.KIND, {1, 2, 3, 4, 5}, {6, 7})
        return _finish(
            data,
            cls(
                f.request_id(),
                f.identity(2),
                f.point(3),
                f.uint(4, MAX_UINT32),
                f.enum(5, UpdateReason),
                f.params(6) if f.has(6) else None,
                f.port(7) if f.has(7) else None,
            ),
        )


@dataclass(frozen=True, slots=True)
class RegistrationResponse:
    """Parent to child over DTLS-PSK (§8.2): the partial private key (X, d) with the serial
    and validity the parent will publish. ``{0: 6, 1: rid, 2: ID, 3: X, 4: d, 5: serial,
    6: not-before, 7: not-after}``. d is secret: the channel must be confidential."""

    KIND: ClassVar = MessageKind.REGISTRATION_RESPONSE
    request_id: bytes
    identity: Identity
    x_point: Point
    d: int = field(repr=False)
    serial: int
    not_before: int
    not_after: int

    def __post_init__(self) -> None:
        _check_request_id(self.request_id)
        curve.check_scalar(self.d)
        _check_uint(self.serial, MAX_UINT32, "a serial")
        _check_uint(self.not_before, MAX_UINT64, "not-before")
        _check_uint(self.not_after, MAX_UINT64, "not-after")
        if self.not_after < self.not_before:
            raise EncodingError("not-after is before not-before")

    @classmethod
    def for_partial(
        cls,
        request_id: bytes,
        partial: PartialPrivateKey,
        serial: int,
        not_before: int,
        not_after: int,
    ) -> RegistrationResponse:
        return cls(
            request_id, partial.identity, partial.x_point, partial.d, serial, not_before, not_after
        )

    def partial_private_key(self) -> PartialPrivateKey:
        """The CL-PKC input of Set-Private-Key (spec §4.3)."""
        return PartialPrivateKey(self.identity, self.x_point, self.d)

    def encode(self) -> bytes:
        return _dump(
            self.KIND,
            {
                1: self.request_id,
                2: self.identity.encode(),
                3: self.x_point.encode(),
                4: curve.encode_scalar(self.d),
                5: self.serial,
                6: self.not_before,
                7: self.not_after,
            },
        )

    @classmethod
    def decode(cls, data: bytes) -> RegistrationResponse:
        f = _load(data, cls.KIND, {1, 2, 3, 4, 5, 6, 7}, set())
        return _finish(
            data,
            cls(
                f.request_id(),
                f.identity(2),
                f.point(3),
                f.scalar(4),
                f.uint(5, MAX_UINT32),
                f.uint(6),
                f.uint(7),
            ),
        )


# --------------------------------------------------------------------------- key lookup
@dataclass(frozen=True, slots=True)
class KeyRequest:
    """Client or resolver to a key server (§8.3): the key of ``name`` at ``address`` (the
    address the DNS gave; section 2.7 of the dissertation). ``{0: 7, 1: rid, 2: name,
    3: address}``."""

    KIND: ClassVar = MessageKind.KEY_REQUEST
    request_id: bytes
    name: str
    address: IPAddress

    def __post_init__(self) -> None:
        _check_request_id(self.request_id)
        _check_name_and_address(self.name, self.address)

    @classmethod
    def of(cls, request_id: bytes, name: str, address: str | bytes | IPAddress) -> KeyRequest:
        return cls(request_id, normalize_name(name), parse_address(address))

    def encode(self) -> bytes:
        return _dump(self.KIND, {1: self.request_id, 2: self.name, 3: self.address.packed})

    @classmethod
    def decode(cls, data: bytes) -> KeyRequest:
        f = _load(data, cls.KIND, {1, 2, 3}, set())
        return _finish(data, cls(f.request_id(), f.name(2), f.address(3)))


@dataclass(frozen=True, slots=True)
class Subject:
    """The key a record vouches for (§8.4): its ID, X, Q, serial and validity; for a key
    server, also its own params (as KGC of the zone that is its name) and its port."""

    identity: Identity
    x_point: Point
    q: Point
    serial: int
    not_before: int
    not_after: int
    zone_params: Params | None = None
    port: int | None = None

    def __post_init__(self) -> None:
        _check_uint(self.serial, MAX_UINT32, "a serial")
        _check_uint(self.not_before, MAX_UINT64, "not-before")
        _check_uint(self.not_after, MAX_UINT64, "not-after")
        if self.not_after < self.not_before:
            raise EncodingError("not-after is before not-before")
        _check_key_server(self.identity, self.zone_params, self.port)

    @property
    def public_key(self) -> PublicKey:
        return PublicKey(self.identity, self.x_point)

    def fields(self) -> dict[int, Any]:
        out: dict[int, Any] = {
            1: self.identity.encode(),
            2: self.x_point.encode(),
            3: self.q.encode(),
            4: self.serial,
            5: self.not_before,
            6: self.not_after,
        }
        if self.zone_params is not None and self.port is not None:
            out |= {7: self.zone_params.encode(), 8: self.port}
        return out

    @classmethod
    def from_fields(cls, f: _Fields) -> Subject:
        return cls(
            f.identity(1),
            f.point(2),
            f.point(3),
            f.uint(4, MAX_UINT32),
            f.uint(5),
            f.uint(6),
            f.params(7) if f.has(7) else None,
            f.port(8) if f.has(8) else None,
        )


def subject_from_map(value: Any, what: str) -> Subject:
    """A :class:`Subject` from its decoded CBOR map (a key server's saved state); any defect
    is an EncodingError."""
    if type(value) is not dict:
        raise EncodingError(f"{what}: not a map")
    _check_keys(value, what, {1, 2, 3, 4, 5, 6}, {7, 8})
    return Subject.from_fields(_Fields(value, what))


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What a key server signs (§8.4): ``{0: 9, 1: type, 2: name, 3: address, 4: signer ID,
    5: issuer params, 6: issued-at, 7: ttl, ?8: subject, ?9: denial reason}``. The issuer
    params are the responder's own, as KGC of its zone: the subject's ID names them."""

    KIND: ClassVar = MessageKind.KEY_RECORD
    record_type: RecordType
    name: str
    address: IPAddress
    signer: Identity
    issuer_params: Params
    issued_at: int
    ttl: int
    subject: Subject | None = None
    denial: DenialReason | None = None

    def __post_init__(self) -> None:
        _check_enum(self.record_type, RecordType)
        _check_name_and_address(self.name, self.address)
        _check_uint(self.issued_at, MAX_UINT64, "issued-at")
        _check_uint(self.ttl, MAX_TTL, "a TTL")
        zone = self.issuer_params.zone
        if self.record_type == RecordType.DENIAL:
            if self.subject is not None or self.denial is None:
                raise EncodingError("a denial has a reason and no subject")
            _check_enum(self.denial, DenialReason)
            if self.denial != DenialReason.NOT_IN_ZONE and not _in_zone(self.name, zone):
                raise EncodingError(f"{self.name} is not in zone {zone!r}")
            return
        subject = self.subject
        if subject is None or self.denial is not None:
            raise EncodingError("an answer or a referral has a subject and no denial reason")
        if subject.identity.params_hash != self.issuer_params.digest():
            raise EncodingError("the subject's ID does not name the issuer params")
        if not _in_zone(subject.identity.name, zone) or subject.identity.name == zone:
            raise EncodingError(f"the subject {subject.identity.name} is not below zone {zone!r}")
        if self.record_type == RecordType.ANSWER:
            if (subject.identity.name, subject.identity.address) != (self.name, self.address):
                raise EncodingError("an answer's subject is not the name and address asked")
        else:
            child = subject.identity.name
            if subject.zone_params is None or not self.name.endswith("." + child):
                raise EncodingError(f"a referral to {child} must be a key server above the name")

    @property
    def expires(self) -> int:
        """The end of the record's cache lifetime (issued-at + ttl)."""
        return self.issued_at + self.ttl

    def encode(self) -> bytes:
        fields: dict[int, Any] = {
            1: int(self.record_type),
            2: self.name,
            3: self.address.packed,
            4: self.signer.encode(),
            5: self.issuer_params.encode(),
            6: self.issued_at,
            7: self.ttl,
        }
        if self.subject is not None:
            fields[8] = self.subject.fields()
        if self.denial is not None:
            fields[9] = int(self.denial)
        return _dump(self.KIND, fields)

    @classmethod
    def decode(cls, data: bytes) -> KeyRecord:
        f = _load(data, cls.KIND, {1, 2, 3, 4, 5, 6, 7}, {8, 9})
        record = cls(
            f.enum(1, RecordType),
            f.name(2),
            f.address(3),
            f.identity(4),
            f.params(5),
            f.uint(6),
            f.uint(7, MAX_TTL),
            Subject.from_fields(f.map(8, "subject", {1, 2, 3, 4, 5, 6}, {7, 8}))
            if f.has(8)
            else None,
            f.enum(9, DenialReason) if f.has(9) else None,
        )
        return _finish(data, record)

    def signed_bytes(self) -> bytes:
        """What the responder signs: :data:`RECORD_CONTEXT` || the record's encoding."""
        return RECORD_CONTEXT + self.encode()


@dataclass(frozen=True, slots=True)
class KeyResponse:
    """Key server to client (§8.4): ``{0: 8, 1: rid, 2: bstr .cbor record, 3: signature}``,
    the signature the responder's certificateless signature (spec §4.4) over
    :meth:`KeyRecord.signed_bytes`. Records carry no request ID, so they can be cached and
    served again by a key resolver (section 2.4.4 of the dissertation)."""

    KIND: ClassVar = MessageKind.KEY_RESPONSE
    request_id: bytes
    record: KeyRecord
    signature: bytes

    def __post_init__(self) -> None:
        _check_request_id(self.request_id)
        if not isinstance(self.signature, bytes) or len(self.signature) != 64:
            raise EncodingError("a signature is 64 bytes")

    @classmethod
    def signed(cls, request_id: bytes, record: KeyRecord, key: FullPrivateKey) -> KeyResponse:
        """Sign ``record`` with the responder's TwinPeaks key (its ID must be the signer)."""
        if key.identity != record.signer:
            raise ResponseMismatch("the record names another signer than this key's identity")
        return cls(request_id, record, clpkc.sign(key, record.signed_bytes()))

    def encode(self) -> bytes:
        return _dump(self.KIND, {1: self.request_id, 2: self.record.encode(), 3: self.signature})

    @classmethod
    def decode(cls, data: bytes) -> KeyResponse:
        f = _load(data, cls.KIND, {1, 2, 3}, set())
        record = KeyRecord.decode(f.bstr(2, (1, MAX_MESSAGE_SIZE)))
        return _finish(data, cls(f.request_id(), record, f.bstr(3, (64, 64))))

    def verify(
        self,
        request: KeyRequest,
        signer_params: Params,
        signer: PublicKey,
        now: int,
        *,
        issuer_params: Params | None = None,
    ) -> KeyRecord:
        """The checks of §8.5, in order; returns the record or raises.

        ``signer`` is the key of the server asked (from a trust anchor or the referral that
        led to it) and ``signer_params`` the params of its own KGC; ``issuer_params``, when
        known from that referral, are the params the record must carry."""
        record = self.record
        if self.request_id != request.request_id:
            raise ResponseMismatch("the response carries another request ID")
        if (record.name, record.address) != (request.name, request.address):
            raise ResponseMismatch("the record answers another name or address")
        if record.signer != signer.identity:
            raise ResponseMismatch(f"the record is signed by {record.signer.name}, not the server")
        clpkc.verify(signer_params, signer, record.signed_bytes(), self.signature)
        if issuer_params is not None and record.issuer_params != issuer_params:
            raise ResponseMismatch("the record carries other issuer params than the referral")
        if record.issued_at > now + MAX_CLOCK_SKEW:
            raise StaleRecord("the record is issued in the future")
        if now >= record.expires:
            raise StaleRecord("the record's TTL has run out")
        subject = record.subject
        if subject is not None:
            clpkc.check_binding(record.issuer_params, subject.public_key, subject.q)
            if not subject.not_before <= now <= subject.not_after:
                raise StaleRecord(f"the key of {subject.identity.name} is outside its validity")
        return record


# --------------------------------------------------------------------------- status, caching
@dataclass(frozen=True, slots=True)
class Status:
    """Result of a registration, key update or invalidation that carries no key, and every
    refusal (§8.7): ``{0: 11, 1: rid, 2: code, ?3: detail}``."""

    KIND: ClassVar = MessageKind.STATUS
    request_id: bytes
    code: StatusCode
    detail: str = ""

    def __post_init__(self) -> None:
        _check_request_id(self.request_id)
        _check_enum(self.code, StatusCode)
        try:
            size = len(self.detail.encode("utf-8"))
        except (AttributeError, UnicodeError):
            raise EncodingError("a detail is a text string") from None
        if size > MAX_DETAIL_LENGTH:
            raise EncodingError(f"a detail is at most {MAX_DETAIL_LENGTH} bytes of UTF-8")

    def encode(self) -> bytes:
        fields: dict[int, Any] = {1: self.request_id, 2: int(self.code)}
        if self.detail:
            fields[3] = self.detail
        return _dump(self.KIND, fields)

    @classmethod
    def decode(cls, data: bytes) -> Status:
        f = _load(data, cls.KIND, {1, 2}, {3})
        detail = f.tstr(3, 4 * MAX_DETAIL_LENGTH) if f.has(3) else ""
        return _finish(data, cls(f.request_id(), f.enum(2, StatusCode), detail))


@dataclass(frozen=True, slots=True)
class OutdatedKey:
    """ "Outdated public key" (§8.6; section 2.4.4 of the dissertation): a member tells a
    client that the key it used is no longer its key, or a parent tells a child that its
    params changed. ``{0: 12, 1: rid, 2: ID used, 3: reason, ?4: current serial}``.
    Unsigned: it only makes the receiver fetch a signed record again."""

    KIND: ClassVar = MessageKind.OUTDATED_KEY
    request_id: bytes
    identity: Identity
    reason: OutdatedReason
    serial: int | None = None

    def __post_init__(self) -> None:
        _check_request_id(self.request_id)
        _check_enum(self.reason, OutdatedReason)
        if self.serial is not None:
            _check_uint(self.serial, MAX_UINT32, "a serial")

    def encode(self) -> bytes:
        fields: dict[int, Any] = {
            1: self.request_id,
            2: self.identity.encode(),
            3: int(self.reason),
        }
        if self.serial is not None:
            fields[4] = self.serial
        return _dump(self.KIND, fields)

    @classmethod
    def decode(cls, data: bytes) -> OutdatedKey:
        f = _load(data, cls.KIND, {1, 2, 3}, {4})
        serial = f.uint(4, MAX_UINT32) if f.has(4) else None
        message = cls(f.request_id(), f.identity(2), f.enum(3, OutdatedReason), serial)
        return _finish(data, message)


@dataclass(frozen=True, slots=True)
class Invalidate:
    """Client to its local key resolver (§8.6): drop the cached records for ``name`` at
    ``address`` and fetch them again. ``{0: 13, 1: rid, 2: name, 3: address}``."""

    KIND: ClassVar = MessageKind.INVALIDATE
    request_id: bytes
    name: str
    address: IPAddress

    def __post_init__(self) -> None:
        _check_request_id(self.request_id)
        _check_name_and_address(self.name, self.address)

    def encode(self) -> bytes:
        return _dump(self.KIND, {1: self.request_id, 2: self.name, 3: self.address.packed})

    @classmethod
    def decode(cls, data: bytes) -> Invalidate:
        f = _load(data, cls.KIND, {1, 2, 3}, set())
        return _finish(data, cls(f.request_id(), f.name(2), f.address(3)))


# --------------------------------------------------------------------------- roots
@dataclass(frozen=True, slots=True)
class TrustAnchor:
    """A pre-loaded root key server (§8.8; sections 2.4.1 and 2.4.5 of the dissertation):
    ``{0: 14, 1: params, 2: ID, 3: X, 4: port, ?5: key params}``. ``params`` are the root's
    own, as KGC of its zone (``"."``, or any zone for a local root of an island); its key
    (ID, X) is self-issued under them, or else issued under ``key_params``."""

    KIND: ClassVar = MessageKind.TRUST_ANCHOR
    params: Params
    identity: Identity
    x_point: Point
    port: int
    key_params: Params | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise EncodingError("a port is in 1..65535")
        if self.identity.params_hash != self.signer_params.digest():
            raise EncodingError("the anchor's ID does not name the params of its key")
        if self.key_params == self.params:
            raise EncodingError("a self-issued anchor omits its key params")
        clpkc.public_point(self.signer_params, self.public_key)

    @property
    def signer_params(self) -> Params:
        """The params under which the anchor's key verifies (its own when self-issued)."""
        return self.params if self.key_params is None else self.key_params

    @property
    def public_key(self) -> PublicKey:
        return PublicKey(self.identity, self.x_point)

    def encode(self) -> bytes:
        fields: dict[int, Any] = {
            1: self.params.encode(),
            2: self.identity.encode(),
            3: self.x_point.encode(),
            4: self.port,
        }
        if self.key_params is not None:
            fields[5] = self.key_params.encode()
        return _dump(self.KIND, fields)

    @classmethod
    def decode(cls, data: bytes) -> TrustAnchor:
        f = _load(data, cls.KIND, {1, 2, 3, 4}, {5})
        key_params = f.params(5) if f.has(5) else None
        anchor = cls(f.params(1), f.identity(2), f.point(3), f.port(4), key_params)
        return _finish(data, anchor)


def cross_check(records: Sequence[KeyRecord]) -> KeyRecord:
    """Cross-verification among roots (§8.8; section 2.5.1 of the dissertation): the final
    records that lookups from several roots gave for one name and address must agree on the
    type, the issuer params, the subject (ID, X, Q, serial) or the denial. Returns the first
    record; raises CrossCheckError naming the first disagreement."""
    if not records:
        raise CrossCheckError("no records to cross-check")
    first = records[0]
    for index, other in enumerate(records[1:], start=1):
        for what, mine, theirs in (
            ("name and address", (first.name, first.address), (other.name, other.address)),
            ("record type", first.record_type, other.record_type),
            ("issuer params", first.issuer_params, other.issuer_params),
            ("denial", first.denial, other.denial),
            ("key", _key_of(first.subject), _key_of(other.subject)),
        ):
            if mine != theirs:
                raise CrossCheckError(f"root 0 and root {index} disagree on the {what}")
    return first


def _key_of(subject: Subject | None) -> tuple[Any, ...] | None:
    if subject is None:
        return None
    return (subject.identity, subject.x_point, subject.q, subject.serial, subject.zone_params)


Message: TypeAlias = (
    RegistrationRequest
    | RegistrationResponse
    | KeyRequest
    | KeyResponse
    | KeyRecord
    | KeyUpdate
    | Status
    | OutdatedKey
    | Invalidate
    | TrustAnchor
)
_DECODERS: Final[dict[int, Any]] = {
    int(cls.KIND): cls.decode
    for cls in (
        RegistrationRequest,
        RegistrationResponse,
        KeyRequest,
        KeyResponse,
        KeyRecord,
        KeyUpdate,
        Status,
        OutdatedKey,
        Invalidate,
        TrustAnchor,
    )
}


def decode_message(data: bytes) -> Message:
    """Decode any hierarchy message by its key 0; raises EncodingError for anything else."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EncodingError("a message must be bytes")
    if len(data) > MAX_MESSAGE_SIZE:
        raise EncodingError(f"message longer than {MAX_MESSAGE_SIZE} bytes")
    items = _loads(bytes(data), "message")
    kind = items.get(0) if type(items) is dict else None
    if type(kind) is not int or kind not in _DECODERS:
        raise EncodingError("not a TwinPeaks hierarchy message (key 0 unknown or missing)")
    message: Message = _DECODERS[kind](data)
    return message


__all__ = [
    "MAX_MESSAGE_SIZE",
    "DenialReason",
    "Invalidate",
    "KeyRecord",
    "KeyRequest",
    "KeyResponse",
    "KeyUpdate",
    "Message",
    "MessageKind",
    "OutdatedKey",
    "OutdatedReason",
    "RecordType",
    "RegistrationRequest",
    "RegistrationResponse",
    "Status",
    "StatusCode",
    "Subject",
    "TrustAnchor",
    "UpdateReason",
    "cross_check",
    "decode_message",
    "new_request_id",
    "subject_from_map",
]
