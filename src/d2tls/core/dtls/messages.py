"""Handshake, alert and ChangeCipherSpec codecs (RFC 5246 §7, RFC 6347 §4.2-4.3).

Every handshake message is a frozen dataclass whose ``encode`` returns the handshake *body*
(no header) and whose ``decode`` parses one. Decoders treat their input as hostile: they raise
only :class:`~d2tls.core.errors.DecodeError` (bad lengths, truncation, trailing bytes) or
:class:`~d2tls.core.errors.IllegalParameter` (well-formed but forbidden values); dispatching an
unknown message type raises :class:`~d2tls.core.errors.UnexpectedMessage`.

Encoders check only what is needed to produce *syntactically* valid bytes (vector bounds,
integer widths) and raise ``ValueError`` otherwise. They do not enforce semantic rules (null
compression offered, unique extensions, ...), so tests can build well-formed but forbidden
messages; ``decode(m.encode()) == m`` holds for every message the decoder accepts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar, Self, TypeAlias

from d2tls.core.dtls.buffer import Reader, Writer
from d2tls.core.dtls.constants import (
    COMPRESSION_NULL,
    CURVE_TYPE_NAMED,
    POINT_FORMAT_UNCOMPRESSED,
    AlertLevel,
    CertificateType,
    ExtensionType,
    HandshakeType,
)
from d2tls.core.errors import DecodeError, IllegalParameter, UnexpectedMessage

__all__ = [
    "CHANGE_CIPHER_SPEC_BODY",
    "Alert",
    "Certificate",
    "CertificateRequest",
    "CertificateVerify",
    "ClientHello",
    "ClientKeyExchangeECDHE",
    "ClientKeyExchangeECDHEPSK",
    "ClientKeyExchangePSK",
    "Extension",
    "Finished",
    "HandshakeMessage",
    "HelloRequest",
    "HelloVerifyRequest",
    "RawPublicKeyCertificate",
    "ServerHello",
    "ServerHelloDone",
    "ServerKeyExchangeECDHE",
    "ServerKeyExchangeECDHEPSK",
    "ServerKeyExchangePSK",
    "TwinPeaksHello",
    "decode_alert",
    "decode_change_cipher_spec",
    "decode_extensions",
    "decode_handshake_body",
    "ec_point_formats_extension",
    "encode_alert",
    "encode_certificate_type",
    "encode_certificate_types",
    "encode_ec_point_formats",
    "encode_extended_master_secret",
    "encode_extensions",
    "encode_handshake",
    "encode_renegotiation_info",
    "encode_server_name",
    "encode_signature_algorithms",
    "encode_supported_groups",
    "extended_master_secret_extension",
    "message_name",
    "parse_certificate_type",
    "parse_certificate_types",
    "parse_ec_point_formats",
    "parse_extended_master_secret",
    "parse_renegotiation_info",
    "parse_server_name",
    "parse_signature_algorithms",
    "parse_supported_groups",
    "renegotiation_info_extension",
    "server_name_extension",
    "signature_algorithms_extension",
    "supported_groups_extension",
]

#: Length of Random (RFC 5246 §7.4.1.2).
RANDOM_LEN = 32
#: Longest SessionID (RFC 5246 §7.4.1.2: opaque SessionID<0..32>).
MAX_SESSION_ID = 32
#: Longest cookie (RFC 6347 §4.2.1: opaque cookie<0..2^8-1>).
MAX_COOKIE = 255
#: verify_data length of every cipher suite we implement (RFC 5246 §7.4.9).
VERIFY_DATA_LEN = 12

_U8_MAX = 0xFF
_U16_MAX = 0xFFFF
_U24_MAX = 0xFFFFFF


# --------------------------------------------------------------------------- encoding helpers


def _check_uint(value: int, width: int, what: str) -> None:
    if not 0 <= value < 1 << (8 * width):
        raise ValueError(f"{what}={value} does not fit in {width} byte(s)")


def _put_vector(w: Writer, data: bytes, width: int, minimum: int, maximum: int, what: str) -> None:
    """Write ``opaque data<minimum..maximum>`` with a ``width``-byte length (RFC 5246 §4.3)."""
    if not minimum <= len(data) <= maximum:
        raise ValueError(f"{what}: length {len(data)} outside <{minimum}..{maximum}>")
    w.vector(data, width)


def _pack_uints(values: Iterable[int], width: int, what: str) -> bytes:
    w = Writer()
    for v in values:
        _check_uint(v, width, what)
        w.uint(v, width)
    return w.getvalue()


def _unpack_uints(data: bytes, width: int, what: str) -> tuple[int, ...]:
    if len(data) % width:
        raise DecodeError(f"{what}: length {len(data)} is not a multiple of {width}")
    return tuple(int.from_bytes(data[i : i + width], "big") for i in range(0, len(data), width))


def _read_uint_list(
    r: Reader, len_width: int, item_width: int, minimum: int, what: str
) -> tuple[int, ...]:
    """Read a vector of ``item_width``-byte integers, ``<minimum..2^(8*len_width)-1>`` bytes."""
    return _unpack_uints(r.vector(len_width, minimum), item_width, what)


# --------------------------------------------------------------------------- extensions


@dataclass(frozen=True)
class Extension:
    """One hello extension: ``ExtensionType extension_type; opaque extension_data<0..2^16-1>``
    (RFC 5246 §7.4.1.4)."""

    type: int
    data: bytes


def encode_extensions(extensions: Iterable[Extension]) -> bytes:
    """Encode ``Extension extensions<0..2^16-1>`` with its length (RFC 5246 §7.4.1.2)."""
    if isinstance(extensions, tuple):
        try:
            return _encode_extension_tuple(extensions)
        except TypeError:  # unhashable (a bytearray body): encode without the memo
            pass
    return _encode_extensions(extensions)


@lru_cache(maxsize=32)
def _encode_extension_tuple(extensions: tuple[Extension, ...]) -> bytes:
    """The same extensions give the same bytes (a client's, a server's every hello)."""
    return _encode_extensions(extensions)


def _encode_extensions(extensions: Iterable[Extension]) -> bytes:
    inner = Writer()
    for ext in extensions:
        _check_uint(ext.type, 2, "extension type")
        inner.u16(ext.type)
        _put_vector(inner, ext.data, 2, 0, _U16_MAX, "extension_data")
    w = Writer()
    _put_vector(w, inner.getvalue(), 2, 0, _U16_MAX, "extensions")
    return w.getvalue()


def decode_extensions(block: bytes) -> tuple[Extension, ...]:
    """Parse the contents of an extensions block (without its length prefix).

    Duplicate types are IllegalParameter (RFC 5246 §7.4.1.4: "There MUST NOT be more than one
    extension of the same type").
    """
    r = Reader(block)
    out: list[Extension] = []
    seen: set[int] = set()
    while not r.eof():
        ext_type = r.u16()
        data = r.vector(2)
        if ext_type in seen:
            raise IllegalParameter(f"duplicate extension type {ext_type}")
        seen.add(ext_type)
        out.append(Extension(ext_type, data))
    return tuple(out)


def _read_optional_extensions(r: Reader, what: str) -> tuple[Extension, ...]:
    """Read the optional trailing extensions of a hello and require the end of the body.

    RFC 5246 §7.4.1.2: the presence of extensions is detected by bytes following the
    compression method(s); if present, the block must span exactly the rest of the message.
    """
    if r.eof():
        return ()
    block = r.vector(2)
    r.expect_end(what)
    return _decode_extension_block(block)


@lru_cache(maxsize=32)
def _decode_extension_block(block: bytes) -> tuple[Extension, ...]:
    """:func:`decode_extensions`, remembered for the last blocks seen: a peer sends the same
    extensions in every hello (an invalid block raises, and is not remembered)."""
    return decode_extensions(block)


def encode_server_name(host_name: str) -> bytes:
    """ServerNameList with a single host_name entry (RFC 6066 §3)."""
    try:
        name = host_name.encode("ascii")
    except UnicodeEncodeError as exc:
        raise ValueError("host_name must be ASCII (RFC 6066 §3)") from exc
    entry = Writer().u8(0)
    _put_vector(entry, name, 2, 1, _U16_MAX, "HostName")
    w = Writer()
    _put_vector(w, entry.getvalue(), 2, 1, _U16_MAX, "server_name_list")
    return w.getvalue()


def parse_server_name(data: bytes) -> str:
    """Parse a client's ServerNameList and return its host_name (RFC 6066 §3).

    Only name_type host_name(0) is defined; any other type, or more than one host_name ("MUST
    NOT contain more than one name of the same name_type"), is IllegalParameter. A host name
    that is not ASCII is IllegalParameter.
    """
    r = Reader(data)
    names = Reader(r.vector(2, 1))
    r.expect_end("server_name extension")
    host: bytes | None = None
    while not names.eof():
        name_type = names.u8()
        if name_type != 0:
            raise IllegalParameter(f"unsupported server name type {name_type}")
        value = names.vector(2, 1)
        if host is not None:
            raise IllegalParameter("more than one host_name in server_name")
        host = value
    if host is None:  # pragma: no cover - vector(2, 1) guarantees at least one entry
        raise DecodeError("empty server_name list")
    try:
        return host.decode("ascii")
    except UnicodeDecodeError as exc:
        raise IllegalParameter("host_name is not ASCII (RFC 6066 §3)") from exc


def encode_supported_groups(groups: Iterable[int]) -> bytes:
    """``NamedCurve named_curve_list<2..2^16-1>`` (RFC 8422 §5.1.1)."""
    w = Writer()
    _put_vector(w, _pack_uints(groups, 2, "group"), 2, 2, _U16_MAX - 1, "named_curve_list")
    return w.getvalue()


def parse_supported_groups(data: bytes) -> tuple[int, ...]:
    """Parse the supported_groups extension (RFC 8422 §5.1.1)."""
    r = Reader(data)
    groups = _read_uint_list(r, 2, 2, 2, "named_curve_list")
    r.expect_end("supported_groups extension")
    return groups


def encode_ec_point_formats(formats: Iterable[int]) -> bytes:
    """``ECPointFormat ec_point_format_list<1..2^8-1>`` (RFC 8422 §5.1.2)."""
    w = Writer()
    _put_vector(w, _pack_uints(formats, 1, "point format"), 1, 1, _U8_MAX, "ec_point_format_list")
    return w.getvalue()


def parse_ec_point_formats(data: bytes) -> tuple[int, ...]:
    """Parse the ec_point_formats extension (RFC 8422 §5.1.2, §5.2).

    The list "MUST contain the value 0 (uncompressed)"; a list without it is IllegalParameter
    (RFC 8422 §5.1.2 names illegal_parameter for this case).
    """
    r = Reader(data)
    formats = _read_uint_list(r, 1, 1, 1, "ec_point_format_list")
    r.expect_end("ec_point_formats extension")
    if POINT_FORMAT_UNCOMPRESSED not in formats:
        raise IllegalParameter("ec_point_formats lacks the uncompressed format")
    return formats


def encode_signature_algorithms(algorithms: Iterable[int]) -> bytes:
    """``SignatureAndHashAlgorithm supported_signature_algorithms<2..2^16-2>``
    (RFC 5246 §7.4.1.4.1)."""
    w = Writer()
    body = _pack_uints(algorithms, 2, "signature algorithm")
    _put_vector(w, body, 2, 2, _U16_MAX - 1, "supported_signature_algorithms")
    return w.getvalue()


def parse_signature_algorithms(data: bytes) -> tuple[int, ...]:
    """Parse the signature_algorithms extension (RFC 5246 §7.4.1.4.1)."""
    r = Reader(data)
    algorithms = _read_uint_list(r, 2, 2, 2, "supported_signature_algorithms")
    r.expect_end("signature_algorithms extension")
    return algorithms


def encode_extended_master_secret() -> bytes:
    """The extended_master_secret extension has empty data (RFC 7627 §5.1)."""
    return b""


def parse_extended_master_secret(data: bytes) -> None:
    """Require empty extension_data (RFC 7627 §5.1), else DecodeError."""
    if data:
        raise DecodeError("extended_master_secret extension must be empty (RFC 7627 §5.1)")


def encode_renegotiation_info(renegotiated_connection: bytes = b"") -> bytes:
    """``opaque renegotiated_connection<0..255>`` (RFC 5746 §3.2)."""
    w = Writer()
    _put_vector(w, renegotiated_connection, 1, 0, _U8_MAX, "renegotiated_connection")
    return w.getvalue()


def parse_renegotiation_info(data: bytes) -> bytes:
    """Parse renegotiation_info and return renegotiated_connection (RFC 5746 §3.2)."""
    r = Reader(data)
    value = r.vector(1)
    r.expect_end("renegotiation_info extension")
    return value


def encode_certificate_types(types: Iterable[int]) -> bytes:
    """A client's ``CertificateType client_certificate_types<1..2^8-1>`` (or the server
    variant), in preference order (RFC 7250 §3)."""
    w = Writer()
    _put_vector(w, _pack_uints(types, 1, "certificate type"), 1, 1, _U8_MAX, "certificate_types")
    return w.getvalue()


def parse_certificate_types(data: bytes) -> tuple[int, ...]:
    """Parse a ClientHello's client_/server_certificate_type list (RFC 7250 §3)."""
    r = Reader(data)
    types = tuple(r.vector(1, 1))
    r.expect_end("certificate_type extension")
    return types


def encode_certificate_type(cert_type: int) -> bytes:
    """A ServerHello's ``CertificateType`` (one value, RFC 7250 §3)."""
    return _pack_uints((cert_type,), 1, "certificate type")


def parse_certificate_type(data: bytes) -> int:
    """Parse a ServerHello's client_/server_certificate_type: exactly one byte (RFC 7250 §3)."""
    if len(data) != 1:
        raise DecodeError(f"a ServerHello certificate_type is 1 byte, not {len(data)}")
    return data[0]


#: Length of h(public key || params) in the TwinPeaks extension (SHA-256).
TWINPEAKS_KEY_HASH_LEN = 32


@dataclass(frozen=True)
class TwinPeaksHello:
    """The TwinPeaks ClientHello extension (spec/twinpeaks.md §9.2)::

    struct {
        opaque host_name<1..2^8-1>;   /* normalised domain name, ASCII */
        opaque address<4..16>;        /* 4 (IPv4) or 16 (IPv6) bytes */
        opaque key_hash[32];          /* h(public key || params) */
    } TwinPeaksHello;
    """

    host_name: str
    address: bytes
    key_hash: bytes

    def encode(self) -> bytes:
        try:
            name = self.host_name.encode("ascii")
        except UnicodeEncodeError as exc:
            raise ValueError("host_name must be ASCII") from exc
        if len(self.address) not in (4, 16):
            raise ValueError("address must be 4 or 16 bytes")
        if len(self.key_hash) != TWINPEAKS_KEY_HASH_LEN:
            raise ValueError(f"key_hash must be {TWINPEAKS_KEY_HASH_LEN} bytes")
        w = Writer()
        _put_vector(w, name, 1, 1, _U8_MAX, "host_name")
        _put_vector(w, self.address, 1, 4, 16, "address")
        return w.raw(self.key_hash).getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Decode; wrong lengths are DecodeError, a name that is not lowercase ASCII
        letters, digits, hyphens and dots is IllegalParameter (spec/twinpeaks.md §9.2)."""
        r = Reader(data)
        name = r.vector(1, 1)
        address = r.vector(1, 4, 16)
        if len(address) not in (4, 16):
            raise DecodeError(f"TwinPeaks address is {len(address)} bytes, not 4 or 16")
        key_hash = r.read(TWINPEAKS_KEY_HASH_LEN)
        r.expect_end("TwinPeaks extension")
        if not all(c in _TWINPEAKS_NAME_CHARS for c in name):
            raise IllegalParameter("TwinPeaks host_name is not a normalised domain name")
        return cls(name.decode("ascii"), bytes(address), bytes(key_hash))


_TWINPEAKS_NAME_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-.")


def server_name_extension(host_name: str) -> Extension:
    """A client's server_name extension (RFC 6066 §3)."""
    return Extension(ExtensionType.SERVER_NAME, encode_server_name(host_name))


def supported_groups_extension(groups: Iterable[int]) -> Extension:
    """A supported_groups extension (RFC 8422 §5.1.1)."""
    return Extension(ExtensionType.SUPPORTED_GROUPS, encode_supported_groups(groups))


def ec_point_formats_extension(formats: Iterable[int] = (POINT_FORMAT_UNCOMPRESSED,)) -> Extension:
    """An ec_point_formats extension, uncompressed only by default (RFC 8422 §5.1.2)."""
    return Extension(ExtensionType.EC_POINT_FORMATS, encode_ec_point_formats(formats))


def signature_algorithms_extension(algorithms: Iterable[int]) -> Extension:
    """A signature_algorithms extension (RFC 5246 §7.4.1.4.1)."""
    return Extension(ExtensionType.SIGNATURE_ALGORITHMS, encode_signature_algorithms(algorithms))


def extended_master_secret_extension() -> Extension:
    """An extended_master_secret extension (RFC 7627 §5.1)."""
    return Extension(ExtensionType.EXTENDED_MASTER_SECRET, encode_extended_master_secret())


def renegotiation_info_extension(renegotiated_connection: bytes = b"") -> Extension:
    """A renegotiation_info extension (RFC 5746 §3.2); empty on an initial handshake."""
    return Extension(
        ExtensionType.RENEGOTIATION_INFO, encode_renegotiation_info(renegotiated_connection)
    )


def _validate_known_extensions(extensions: tuple[Extension, ...], *, client: bool) -> None:
    """Parse the bodies of the extensions we understand so that malformed ones fail at decode
    (the verdict on a tuple of extensions already accepted once is remembered)."""
    try:
        _validate_extensions(extensions, client)
    except TypeError:  # unhashable (hand-built with a bytearray): check without the memo
        _validate_extensions.__wrapped__(extensions, client)


@lru_cache(maxsize=32)
def _validate_extensions(extensions: tuple[Extension, ...], client: bool) -> None:
    for ext in extensions:
        if ext.type == ExtensionType.SERVER_NAME:
            if client:
                parse_server_name(ext.data)
            elif ext.data:
                # RFC 6066 §3: the server's "extension_data field ... SHALL be empty".
                raise DecodeError("server's server_name extension must be empty")
        elif ext.type == ExtensionType.SUPPORTED_GROUPS:
            parse_supported_groups(ext.data)
        elif ext.type == ExtensionType.EC_POINT_FORMATS:
            parse_ec_point_formats(ext.data)
        elif ext.type == ExtensionType.SIGNATURE_ALGORITHMS:
            parse_signature_algorithms(ext.data)
        elif ext.type == ExtensionType.EXTENDED_MASTER_SECRET:
            parse_extended_master_secret(ext.data)
        elif ext.type == ExtensionType.RENEGOTIATION_INFO:
            parse_renegotiation_info(ext.data)
        elif ext.type in (
            ExtensionType.CLIENT_CERTIFICATE_TYPE,
            ExtensionType.SERVER_CERTIFICATE_TYPE,
        ):
            if client:
                parse_certificate_types(ext.data)
            else:
                parse_certificate_type(ext.data)
        elif ext.type == ExtensionType.TWINPEAKS and client:
            TwinPeaksHello.decode(ext.data)


class _HelloExtensions:
    """Extension accessors shared by ClientHello and ServerHello (RFC 5246 §7.4.1.4).

    On a decoded message the typed accessors never raise: ``decode`` already validated the
    bodies. On a hand-built message a malformed body raises DecodeError/IllegalParameter.
    """

    extensions: tuple[Extension, ...]

    def extension(self, ext_type: int) -> bytes | None:
        """The extension_data of ``ext_type``, or None when absent."""
        for ext in self.extensions:
            if ext.type == ext_type:
                return ext.data
        return None

    @property
    def supported_groups(self) -> tuple[int, ...] | None:
        """The supported_groups list (RFC 8422 §5.1.1), or None when absent."""
        data = self.extension(ExtensionType.SUPPORTED_GROUPS)
        return None if data is None else parse_supported_groups(data)

    @property
    def signature_algorithms(self) -> tuple[int, ...] | None:
        """The signature_algorithms list (RFC 5246 §7.4.1.4.1), or None when absent."""
        data = self.extension(ExtensionType.SIGNATURE_ALGORITHMS)
        return None if data is None else parse_signature_algorithms(data)

    @property
    def ec_point_formats(self) -> tuple[int, ...] | None:
        """The ec_point_formats list (RFC 8422 §5.1.2), or None when absent."""
        data = self.extension(ExtensionType.EC_POINT_FORMATS)
        return None if data is None else parse_ec_point_formats(data)

    @property
    def has_extended_master_secret(self) -> bool:
        """True when the extended_master_secret extension is present (RFC 7627 §5.1)."""
        data = self.extension(ExtensionType.EXTENDED_MASTER_SECRET)
        if data is None:
            return False
        parse_extended_master_secret(data)
        return True

    @property
    def renegotiation_info(self) -> bytes | None:
        """renegotiated_connection of renegotiation_info (RFC 5746 §3.2), or None when absent."""
        data = self.extension(ExtensionType.RENEGOTIATION_INFO)
        return None if data is None else parse_renegotiation_info(data)


# --------------------------------------------------------------------------- hello messages


@dataclass(frozen=True)
class HelloRequest:
    """HelloRequest: an empty body (RFC 5246 §7.4.1.1)."""

    msg_type: ClassVar[HandshakeType] = HandshakeType.HELLO_REQUEST

    def encode(self) -> bytes:
        return b""

    @classmethod
    def decode(cls, body: bytes) -> Self:
        if body:
            raise DecodeError("HelloRequest must be empty")
        return cls()


@dataclass(frozen=True)
class ClientHello(_HelloExtensions):
    """ClientHello with the DTLS cookie (RFC 5246 §7.4.1.2, RFC 6347 §4.2.1)."""

    msg_type: ClassVar[HandshakeType] = HandshakeType.CLIENT_HELLO

    client_version: int
    random: bytes
    session_id: bytes
    cookie: bytes
    cipher_suites: tuple[int, ...]
    compression_methods: tuple[int, ...]
    extensions: tuple[Extension, ...] = ()

    @property
    def server_name(self) -> str | None:
        """The requested host_name (RFC 6066 §3), or None when absent."""
        data = self.extension(ExtensionType.SERVER_NAME)
        return None if data is None else parse_server_name(data)

    @property
    def server_certificate_types(self) -> tuple[int, ...] | None:
        """Server certificate types the client can process, preferred first (RFC 7250 §4.1),
        or None when absent (X.509 only)."""
        data = self.extension(ExtensionType.SERVER_CERTIFICATE_TYPE)
        return None if data is None else parse_certificate_types(data)

    @property
    def client_certificate_types(self) -> tuple[int, ...] | None:
        """Certificate types the client can send, preferred first (RFC 7250 §4.1), or None."""
        data = self.extension(ExtensionType.CLIENT_CERTIFICATE_TYPE)
        return None if data is None else parse_certificate_types(data)

    @property
    def twinpeaks(self) -> TwinPeaksHello | None:
        """The TwinPeaks extension (spec/twinpeaks.md §9.2), or None when absent."""
        data = self.extension(ExtensionType.TWINPEAKS)
        return None if data is None else TwinPeaksHello.decode(data)

    def encode(self) -> bytes:
        """Encode the body; extensions are omitted entirely when there are none."""
        _check_uint(self.client_version, 2, "client_version")
        if len(self.random) != RANDOM_LEN:
            raise ValueError("random must be 32 bytes")
        w = Writer().u16(self.client_version).raw(self.random)
        _put_vector(w, self.session_id, 1, 0, MAX_SESSION_ID, "session_id")
        _put_vector(w, self.cookie, 1, 0, MAX_COOKIE, "cookie")
        suites = _pack_uints(self.cipher_suites, 2, "cipher suite")
        _put_vector(w, suites, 2, 2, _U16_MAX - 1, "cipher_suites")
        methods = _pack_uints(self.compression_methods, 1, "compression method")
        _put_vector(w, methods, 1, 1, _U8_MAX, "compression_methods")
        if self.extensions:
            w.raw(encode_extensions(self.extensions))
        return w.getvalue()

    @classmethod
    def decode(cls, body: bytes) -> Self:
        """Decode; compression_methods without null is IllegalParameter (RFC 5246 §7.4.1.2:
        the vector "MUST contain ... CompressionMethod.null")."""
        r = Reader(body)
        client_version = r.u16()
        random = r.read(RANDOM_LEN)
        session_id = r.vector(1, 0, MAX_SESSION_ID)
        cookie = r.vector(1, 0, MAX_COOKIE)
        cipher_suites = _unpack_uints(r.vector(2, 2, _U16_MAX - 1), 2, "cipher_suites")
        compression_methods = tuple(r.vector(1, 1))
        extensions = _read_optional_extensions(r, "ClientHello")
        r.expect_end("ClientHello")
        if COMPRESSION_NULL not in compression_methods:
            raise IllegalParameter("ClientHello does not offer null compression")
        _validate_known_extensions(extensions, client=True)
        return cls(
            client_version,
            random,
            session_id,
            cookie,
            cipher_suites,
            compression_methods,
            extensions,
        )


@dataclass(frozen=True)
class HelloVerifyRequest:
    """HelloVerifyRequest (RFC 6347 §4.2.1): server_version and cookie<0..2^8-1>."""

    msg_type: ClassVar[HandshakeType] = HandshakeType.HELLO_VERIFY_REQUEST

    server_version: int
    cookie: bytes

    def encode(self) -> bytes:
        _check_uint(self.server_version, 2, "server_version")
        w = Writer().u16(self.server_version)
        _put_vector(w, self.cookie, 1, 0, MAX_COOKIE, "cookie")
        return w.getvalue()

    @classmethod
    def decode(cls, body: bytes) -> Self:
        r = Reader(body)
        server_version = r.u16()
        cookie = r.vector(1, 0, MAX_COOKIE)
        r.expect_end("HelloVerifyRequest")
        return cls(server_version, cookie)


@dataclass(frozen=True)
class ServerHello(_HelloExtensions):
    """ServerHello (RFC 5246 §7.4.1.3)."""

    msg_type: ClassVar[HandshakeType] = HandshakeType.SERVER_HELLO

    server_version: int
    random: bytes
    session_id: bytes
    cipher_suite: int
    compression_method: int
    extensions: tuple[Extension, ...] = ()

    @property
    def server_name_acknowledged(self) -> bool:
        """True when the server sent an (empty) server_name extension (RFC 6066 §3)."""
        return self.extension(ExtensionType.SERVER_NAME) is not None

    @property
    def server_certificate_type(self) -> int | None:
        """The type of the server's Certificate (RFC 7250 §4.2); None: X.509."""
        data = self.extension(ExtensionType.SERVER_CERTIFICATE_TYPE)
        return None if data is None else parse_certificate_type(data)

    @property
    def client_certificate_type(self) -> int | None:
        """The type the client's Certificate must have (RFC 7250 §4.2); None: X.509."""
        data = self.extension(ExtensionType.CLIENT_CERTIFICATE_TYPE)
        return None if data is None else parse_certificate_type(data)

    def encode(self) -> bytes:
        """Encode the body; extensions are omitted entirely when there are none."""
        _check_uint(self.server_version, 2, "server_version")
        _check_uint(self.cipher_suite, 2, "cipher_suite")
        _check_uint(self.compression_method, 1, "compression_method")
        if len(self.random) != RANDOM_LEN:
            raise ValueError("random must be 32 bytes")
        w = Writer().u16(self.server_version).raw(self.random)
        _put_vector(w, self.session_id, 1, 0, MAX_SESSION_ID, "session_id")
        w.u16(self.cipher_suite).u8(self.compression_method)
        if self.extensions:
            w.raw(encode_extensions(self.extensions))
        return w.getvalue()

    @classmethod
    def decode(cls, body: bytes) -> Self:
        """Decode. Whether the suite/compression were offered is the engine's check."""
        r = Reader(body)
        server_version = r.u16()
        random = r.read(RANDOM_LEN)
        session_id = r.vector(1, 0, MAX_SESSION_ID)
        cipher_suite = r.u16()
        compression_method = r.u8()
        extensions = _read_optional_extensions(r, "ServerHello")
        r.expect_end("ServerHello")
        _validate_known_extensions(extensions, client=False)
        return cls(server_version, random, session_id, cipher_suite, compression_method, extensions)


# --------------------------------------------------------------------------- server flight


@dataclass(frozen=True)
class Certificate:
    """``ASN.1Cert certificate_list<0..2^24-1>``, each ``opaque ASN.1Cert<1..2^24-1>``
    (RFC 5246 §7.4.2). An empty list is allowed (a client without a certificate, §7.4.6)."""

    msg_type: ClassVar[HandshakeType] = HandshakeType.CERTIFICATE

    certificates: tuple[bytes, ...]

    def encode(self) -> bytes:
        inner = Writer()
        for cert in self.certificates:
            _put_vector(inner, cert, 3, 1, _U24_MAX, "ASN.1Cert")
        w = Writer()
        _put_vector(w, inner.getvalue(), 3, 0, _U24_MAX, "certificate_list")
        return w.getvalue()

    @classmethod
    def decode(cls, body: bytes) -> Self:
        r = Reader(body)
        certs = Reader(r.vector(3))
        r.expect_end("Certificate")
        out: list[bytes] = []
        while not certs.eof():
            out.append(certs.vector(3, 1))
        return cls(tuple(out))


@dataclass(frozen=True)
class RawPublicKeyCertificate:
    """Certificate carrying a raw public key (RFC 7250 §3): for the type RawPublicKey the body
    is ``opaque ASN.1_subjectPublicKeyInfo<1..2^24-1>`` (DER, RFC 5280 §4.1.2.7). Whether a
    Certificate has this form follows from the negotiated certificate type."""

    msg_type: ClassVar[HandshakeType] = HandshakeType.CERTIFICATE
    certificate_type: ClassVar[CertificateType] = CertificateType.RAW_PUBLIC_KEY

    subject_public_key_info: bytes

    def encode(self) -> bytes:
        w = Writer()
        _put_vector(w, self.subject_public_key_info, 3, 1, _U24_MAX, "subjectPublicKeyInfo")
        return w.getvalue()

    @classmethod
    def decode(cls, body: bytes) -> Self:
        r = Reader(body)
        spki = r.vector(3, 1)
        r.expect_end("Certificate")
        return cls(bytes(spki))


def _encode_digitally_signed(w: Writer, algorithm: int, signature: bytes) -> None:
    """``digitally-signed``: SignatureAndHashAlgorithm + opaque signature<0..2^16-1>
    (RFC 5246 §4.7)."""
    _check_uint(algorithm, 2, "signature_algorithm")
    w.u16(algorithm)
    _put_vector(w, signature, 2, 0, _U16_MAX, "signature")


@dataclass(frozen=True)
class ServerKeyExchangeECDHE:
    """ServerKeyExchange for ECDHE_ECDSA: ServerECDHParams + digitally-signed
    (RFC 8422 §5.4)."""

    msg_type: ClassVar[HandshakeType] = HandshakeType.SERVER_KEY_EXCHANGE

    named_curve: int
    public_point: bytes
    signature_algorithm: int
    signature: bytes

    def params_bytes(self) -> bytes:
        """ServerECDHParams: curve_type named_curve(3), NamedCurve, ``opaque point<1..2^8-1>``
        — the bytes the signature covers after client_random + server_random (RFC 8422 §5.4)."""
        _check_uint(self.named_curve, 2, "named_curve")
        w = Writer().u8(CURVE_TYPE_NAMED).u16(self.named_curve)
        _put_vector(w, self.public_point, 1, 1, _U8_MAX, "ECPoint")
        return w.getvalue()

    def encode(self) -> bytes:
        w = Writer().raw(self.params_bytes())
        _encode_digitally_signed(w, self.signature_algorithm, self.signature)
        return w.getvalue()

    @classmethod
    def decode(cls, body: bytes) -> Self:
        """Decode; a curve_type other than named_curve is IllegalParameter (RFC 8422 §5.4
        deprecates explicit curves; we cannot parse them)."""
        r = Reader(body)
        curve_type = r.u8()
        if curve_type != CURVE_TYPE_NAMED:
            raise IllegalParameter(f"unsupported ECCurveType {curve_type}")
        named_curve = r.u16()
        point = r.vector(1, 1)
        algorithm = r.u16()
        signature = r.vector(2)
        r.expect_end("ServerKeyExchange")
        return cls(named_curve, point, algorithm, signature)


@dataclass(frozen=True)
class ServerKeyExchangePSK:
    """ServerKeyExchange for plain PSK: ``opaque psk_identity_hint<0..2^16-1>`` (RFC 4279 §2)."""

    msg_type: ClassVar[HandshakeType] = HandshakeType.SERVER_KEY_EXCHANGE

    identity_hint: bytes

    def encode(self) -> bytes:
        w = Writer()
        _put_vector(w, self.identity_hint, 2, 0, _U16_MAX, "psk_identity_hint")
        return w.getvalue()

    @classmethod
    def decode(cls, body: bytes) -> Self:
        r = Reader(body)
        hint = r.vector(2)
        r.expect_end("ServerKeyExchange")
        return cls(hint)


#: Longest PSK identity hint we accept: RFC 4279 §5.3 asks for support of hints and identities
#: up to 128 octets; a longer hint is refused (illegal_parameter) rather than buffered.
MAX_PSK_HINT = 128


@dataclass(frozen=True)
class ServerKeyExchangeECDHEPSK:
    """ServerKeyExchange for ECDHE_PSK: ``opaque psk_identity_hint<0..2^16-1>`` followed by
    ServerECDHParams, unsigned (RFC 5489 §2)."""

    msg_type: ClassVar[HandshakeType] = HandshakeType.SERVER_KEY_EXCHANGE

    identity_hint: bytes
    named_curve: int
    public_point: bytes

    def encode(self) -> bytes:
        w = Writer()
        _put_vector(w, self.identity_hint, 2, 0, _U16_MAX, "psk_identity_hint")
        _check_uint(self.named_curve, 2, "named_curve")
        w.u8(CURVE_TYPE_NAMED).u16(self.named_curve)
        _put_vector(w, self.public_point, 1, 1, _U8_MAX, "ECPoint")
        return w.getvalue()

    @classmethod
    def decode(cls, body: bytes) -> Self:
        """Decode; a hint over :data:`MAX_PSK_HINT` bytes or a curve_type other than
        named_curve is IllegalParameter (RFC 4279 §5.3, RFC 8422 §5.4)."""
        r = Reader(body)
        hint = r.vector(2)
        if len(hint) > MAX_PSK_HINT:
            raise IllegalParameter(
                f"PSK identity hint of {len(hint)} bytes exceeds {MAX_PSK_HINT} (RFC 4279 §5.3)"
            )
        curve_type = r.u8()
        if curve_type != CURVE_TYPE_NAMED:
            raise IllegalParameter(f"unsupported ECCurveType {curve_type}")
        named_curve = r.u16()
        point = r.vector(1, 1)
        r.expect_end("ServerKeyExchange")
        return cls(hint, named_curve, point)


@dataclass(frozen=True)
class CertificateRequest:
    """CertificateRequest (RFC 5246 §7.4.4): certificate_types<1..2^8-1>,
    supported_signature_algorithms<2..2^16-2>, certificate_authorities<0..2^16-1> of
    ``opaque DistinguishedName<1..2^16-1>``."""

    msg_type: ClassVar[HandshakeType] = HandshakeType.CERTIFICATE_REQUEST

    certificate_types: tuple[int, ...]
    signature_algorithms: tuple[int, ...]
    certificate_authorities: tuple[bytes, ...] = ()

    def encode(self) -> bytes:
        w = Writer()
        types = _pack_uints(self.certificate_types, 1, "certificate type")
        _put_vector(w, types, 1, 1, _U8_MAX, "certificate_types")
        algs = _pack_uints(self.signature_algorithms, 2, "signature algorithm")
        _put_vector(w, algs, 2, 2, _U16_MAX - 1, "supported_signature_algorithms")
        names = Writer()
        for dn in self.certificate_authorities:
            _put_vector(names, dn, 2, 1, _U16_MAX, "DistinguishedName")
        _put_vector(w, names.getvalue(), 2, 0, _U16_MAX, "certificate_authorities")
        return w.getvalue()

    @classmethod
    def decode(cls, body: bytes) -> Self:
        r = Reader(body)
        types = tuple(r.vector(1, 1))
        algs = _unpack_uints(r.vector(2, 2, _U16_MAX - 1), 2, "supported_signature_algorithms")
        names = Reader(r.vector(2))
        r.expect_end("CertificateRequest")
        authorities: list[bytes] = []
        while not names.eof():
            authorities.append(names.vector(2, 1))
        return cls(types, algs, tuple(authorities))


@dataclass(frozen=True)
class ServerHelloDone:
    """ServerHelloDone: an empty body (RFC 5246 §7.4.5)."""

    msg_type: ClassVar[HandshakeType] = HandshakeType.SERVER_HELLO_DONE

    def encode(self) -> bytes:
        return b""

    @classmethod
    def decode(cls, body: bytes) -> Self:
        if body:
            raise DecodeError("ServerHelloDone must be empty")
        return cls()


# --------------------------------------------------------------------------- client flight


@dataclass(frozen=True)
class ClientKeyExchangeECDHE:
    """ClientKeyExchange for ECDHE: explicit ``opaque point<1..2^8-1>`` (RFC 8422 §5.7)."""

    msg_type: ClassVar[HandshakeType] = HandshakeType.CLIENT_KEY_EXCHANGE

    public_point: bytes

    def encode(self) -> bytes:
        w = Writer()
        _put_vector(w, self.public_point, 1, 1, _U8_MAX, "ECPoint")
        return w.getvalue()

    @classmethod
    def decode(cls, body: bytes) -> Self:
        r = Reader(body)
        point = r.vector(1, 1)
        r.expect_end("ClientKeyExchange")
        return cls(point)


@dataclass(frozen=True)
class ClientKeyExchangePSK:
    """ClientKeyExchange for plain PSK: ``opaque psk_identity<0..2^16-1>`` (RFC 4279 §2)."""

    msg_type: ClassVar[HandshakeType] = HandshakeType.CLIENT_KEY_EXCHANGE

    identity: bytes

    def encode(self) -> bytes:
        w = Writer()
        _put_vector(w, self.identity, 2, 0, _U16_MAX, "psk_identity")
        return w.getvalue()

    @classmethod
    def decode(cls, body: bytes) -> Self:
        r = Reader(body)
        identity = r.vector(2)
        r.expect_end("ClientKeyExchange")
        return cls(identity)


@dataclass(frozen=True)
class ClientKeyExchangeECDHEPSK:
    """ClientKeyExchange for ECDHE_PSK: ``opaque psk_identity<0..2^16-1>`` followed by
    ClientECDiffieHellmanPublic, ``opaque point<1..2^8-1>`` (RFC 5489 §2)."""

    msg_type: ClassVar[HandshakeType] = HandshakeType.CLIENT_KEY_EXCHANGE

    identity: bytes
    public_point: bytes

    def encode(self) -> bytes:
        w = Writer()
        _put_vector(w, self.identity, 2, 0, _U16_MAX, "psk_identity")
        _put_vector(w, self.public_point, 1, 1, _U8_MAX, "ECPoint")
        return w.getvalue()

    @classmethod
    def decode(cls, body: bytes) -> Self:
        r = Reader(body)
        identity = r.vector(2)
        point = r.vector(1, 1)
        r.expect_end("ClientKeyExchange")
        return cls(identity, point)


@dataclass(frozen=True)
class CertificateVerify:
    """CertificateVerify: a digitally-signed handshake transcript (RFC 5246 §7.4.8, §4.7)."""

    msg_type: ClassVar[HandshakeType] = HandshakeType.CERTIFICATE_VERIFY

    signature_algorithm: int
    signature: bytes

    def encode(self) -> bytes:
        w = Writer()
        _encode_digitally_signed(w, self.signature_algorithm, self.signature)
        return w.getvalue()

    @classmethod
    def decode(cls, body: bytes) -> Self:
        r = Reader(body)
        algorithm = r.u16()
        signature = r.vector(2)
        r.expect_end("CertificateVerify")
        return cls(algorithm, signature)


@dataclass(frozen=True)
class Finished:
    """Finished: ``opaque verify_data[12]`` for every suite we implement (RFC 5246 §7.4.9)."""

    msg_type: ClassVar[HandshakeType] = HandshakeType.FINISHED

    verify_data: bytes

    def encode(self) -> bytes:
        if len(self.verify_data) != VERIFY_DATA_LEN:
            raise ValueError("verify_data must be 12 bytes")
        return bytes(self.verify_data)

    @classmethod
    def decode(cls, body: bytes) -> Self:
        if len(body) != VERIFY_DATA_LEN:
            raise DecodeError(f"Finished is {len(body)} bytes, expected {VERIFY_DATA_LEN}")
        return cls(bytes(body))


HandshakeMessage: TypeAlias = (
    HelloRequest
    | ClientHello
    | HelloVerifyRequest
    | ServerHello
    | Certificate
    | RawPublicKeyCertificate
    | ServerKeyExchangeECDHE
    | ServerKeyExchangePSK
    | ServerKeyExchangeECDHEPSK
    | CertificateRequest
    | ServerHelloDone
    | ClientKeyExchangeECDHE
    | ClientKeyExchangePSK
    | ClientKeyExchangeECDHEPSK
    | CertificateVerify
    | Finished
)

_SIMPLE_DECODERS: dict[int, type[HandshakeMessage]] = {
    HandshakeType.HELLO_REQUEST: HelloRequest,
    HandshakeType.CLIENT_HELLO: ClientHello,
    HandshakeType.SERVER_HELLO: ServerHello,
    HandshakeType.HELLO_VERIFY_REQUEST: HelloVerifyRequest,
    HandshakeType.CERTIFICATE: Certificate,
    HandshakeType.CERTIFICATE_REQUEST: CertificateRequest,
    HandshakeType.SERVER_HELLO_DONE: ServerHelloDone,
    HandshakeType.CERTIFICATE_VERIFY: CertificateVerify,
    HandshakeType.FINISHED: Finished,
}

_NAMES: dict[int, str] = {
    HandshakeType.HELLO_REQUEST: "HelloRequest",
    HandshakeType.CLIENT_HELLO: "ClientHello",
    HandshakeType.SERVER_HELLO: "ServerHello",
    HandshakeType.HELLO_VERIFY_REQUEST: "HelloVerifyRequest",
    HandshakeType.CERTIFICATE: "Certificate",
    HandshakeType.SERVER_KEY_EXCHANGE: "ServerKeyExchange",
    HandshakeType.CERTIFICATE_REQUEST: "CertificateRequest",
    HandshakeType.SERVER_HELLO_DONE: "ServerHelloDone",
    HandshakeType.CERTIFICATE_VERIFY: "CertificateVerify",
    HandshakeType.CLIENT_KEY_EXCHANGE: "ClientKeyExchange",
    HandshakeType.FINISHED: "Finished",
}


def message_name(msg_type: int) -> str:
    """CamelCase name of a handshake type ("ClientHello", ...); ``Unknown<n>`` otherwise."""
    return _NAMES.get(msg_type, f"Unknown{msg_type}")


def decode_handshake_body(
    msg_type: int,
    body: bytes,
    *,
    psk: bool,
    raw_public_key: bool = False,
    ecdhe_psk: bool = False,
) -> HandshakeMessage:
    """Decode a reassembled handshake body of type ``msg_type``.

    ``psk`` selects the RFC 4279 ServerKeyExchange/ClientKeyExchange variants instead of the
    RFC 8422 ECDHE ones, ``ecdhe_psk`` the RFC 5489 ones; ``raw_public_key`` the RFC 7250
    Certificate (an empty one, three zero bytes, is an empty :class:`Certificate`: a client
    without a key, RFC 5246 §7.4.6).
    Unknown or unsupported types raise UnexpectedMessage (RFC 5246 §7.4).
    """
    if msg_type == HandshakeType.CERTIFICATE and raw_public_key and body != bytes(3):
        return RawPublicKeyCertificate.decode(body)
    if ecdhe_psk and msg_type == HandshakeType.SERVER_KEY_EXCHANGE:
        return ServerKeyExchangeECDHEPSK.decode(body)
    if ecdhe_psk and msg_type == HandshakeType.CLIENT_KEY_EXCHANGE:
        return ClientKeyExchangeECDHEPSK.decode(body)
    if msg_type == HandshakeType.SERVER_KEY_EXCHANGE:
        return ServerKeyExchangePSK.decode(body) if psk else ServerKeyExchangeECDHE.decode(body)
    if msg_type == HandshakeType.CLIENT_KEY_EXCHANGE:
        return ClientKeyExchangePSK.decode(body) if psk else ClientKeyExchangeECDHE.decode(body)
    cls = _SIMPLE_DECODERS.get(msg_type)
    if cls is None:
        raise UnexpectedMessage(f"unsupported handshake message type {msg_type}")
    return cls.decode(body)


def encode_handshake(msg_type: int, message_seq: int, body: bytes) -> bytes:
    """The unfragmented DTLS handshake message: 12-byte header (fragment_offset 0,
    fragment_length = length) + body — the form hashed into the transcript (RFC 6347 §4.2.6)."""
    _check_uint(msg_type, 1, "msg_type")
    _check_uint(message_seq, 2, "message_seq")
    _check_uint(len(body), 3, "length")
    length = len(body).to_bytes(3, "big")
    return b"".join(
        (bytes((msg_type,)), length, message_seq.to_bytes(2, "big"), b"\0\0\0", length, body)
    )


# --------------------------------------------------------------------------- alerts and CCS


@dataclass(frozen=True)
class Alert:
    """Alert: AlertLevel level; AlertDescription description (RFC 5246 §7.2).

    Unknown descriptions are kept as plain ints; levels other than warning/fatal fail to decode.
    """

    level: int
    description: int

    @property
    def fatal(self) -> bool:
        """True for a fatal alert (RFC 5246 §7.2)."""
        return self.level == AlertLevel.FATAL

    def encode(self) -> bytes:
        _check_uint(self.level, 1, "alert level")
        _check_uint(self.description, 1, "alert description")
        return bytes((self.level, self.description))

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        if len(payload) != 2:
            raise DecodeError(f"alert is {len(payload)} bytes, expected 2")
        level, description = payload[0], payload[1]
        if level not in (AlertLevel.WARNING, AlertLevel.FATAL):
            raise DecodeError(f"unknown alert level {level}")
        return cls(level, description)


def encode_alert(level: int, description: int) -> bytes:
    """The 2-byte alert record payload (RFC 5246 §7.2)."""
    return Alert(level, description).encode()


def decode_alert(payload: bytes) -> Alert:
    """Parse an alert record payload; see :meth:`Alert.decode`."""
    return Alert.decode(payload)


#: The only ChangeCipherSpec payload: ``enum { change_cipher_spec(1) }`` (RFC 5246 §7.1).
CHANGE_CIPHER_SPEC_BODY = b"\x01"


def decode_change_cipher_spec(payload: bytes) -> None:
    """Accept exactly ``b"\\x01"`` (RFC 5246 §7.1), else DecodeError."""
    if bytes(payload) != CHANGE_CIPHER_SPEC_BODY:
        raise DecodeError("malformed ChangeCipherSpec")
