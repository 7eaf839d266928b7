"""Protocol numbers of DTLS 1.2 (RFC 6347, RFC 5246 and extensions)."""

from __future__ import annotations

from enum import IntEnum

#: DTLS 1.2 wire version {254, 253} (RFC 6347 §4.1).
DTLS_1_2 = 0xFEFD
#: DTLS 1.0 wire version, allowed in the record header of a first ClientHello (RFC 6347 §4.1).
DTLS_1_0 = 0xFEFF

#: Length of a record header: type(1) version(2) epoch(2) sequence_number(6) length(2).
RECORD_HEADER_LEN = 13
#: Handshake header: type(1) length(3) message_seq(2) fragment_offset(3) fragment_length(3).
HANDSHAKE_HEADER_LEN = 12
#: Largest plaintext in one record (RFC 5246 §6.2.1).
MAX_PLAINTEXT = 2**14
#: Largest protected fragment accepted (RFC 5246 §6.2.3: 2^14 + 2048).
MAX_CIPHERTEXT = 2**14 + 2048
#: Largest 48-bit record sequence number (RFC 6347 §4.1).
MAX_SEQUENCE = 2**48 - 1
#: Largest handshake message we accept (defensive bound on reassembly memory).
MAX_HANDSHAKE_MESSAGE = 2**16


class ContentType(IntEnum):
    """TLS record content types (RFC 5246 §6.2.1)."""

    CHANGE_CIPHER_SPEC = 20
    ALERT = 21
    HANDSHAKE = 22
    APPLICATION_DATA = 23


class HandshakeType(IntEnum):
    """Handshake message types (RFC 5246 §7.4, RFC 6347 §4.3.2)."""

    HELLO_REQUEST = 0
    CLIENT_HELLO = 1
    SERVER_HELLO = 2
    HELLO_VERIFY_REQUEST = 3
    CERTIFICATE = 11
    SERVER_KEY_EXCHANGE = 12
    CERTIFICATE_REQUEST = 13
    SERVER_HELLO_DONE = 14
    CERTIFICATE_VERIFY = 15
    CLIENT_KEY_EXCHANGE = 16
    FINISHED = 20


class AlertLevel(IntEnum):
    """Alert levels (RFC 5246 §7.2)."""

    WARNING = 1
    FATAL = 2


class AlertDescription(IntEnum):
    """Alert descriptions (RFC 5246 §7.2, RFC 5746, RFC 6066, RFC 4279)."""

    CLOSE_NOTIFY = 0
    UNEXPECTED_MESSAGE = 10
    BAD_RECORD_MAC = 20
    RECORD_OVERFLOW = 22
    HANDSHAKE_FAILURE = 40
    BAD_CERTIFICATE = 42
    UNSUPPORTED_CERTIFICATE = 43
    CERTIFICATE_REVOKED = 44
    CERTIFICATE_EXPIRED = 45
    CERTIFICATE_UNKNOWN = 46
    ILLEGAL_PARAMETER = 47
    UNKNOWN_CA = 48
    ACCESS_DENIED = 49
    DECODE_ERROR = 50
    DECRYPT_ERROR = 51
    PROTOCOL_VERSION = 70
    INSUFFICIENT_SECURITY = 71
    INTERNAL_ERROR = 80
    USER_CANCELED = 90
    NO_RENEGOTIATION = 100
    UNSUPPORTED_EXTENSION = 110
    UNRECOGNIZED_NAME = 112
    UNKNOWN_PSK_IDENTITY = 115


class CipherSuite(IntEnum):
    """The cipher suites d2tls implements (RFC 7251, RFC 5289, RFC 6655, RFC 7905, RFC 8442)."""

    TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 = 0xC0AE
    TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 = 0xC02B
    TLS_PSK_WITH_AES_128_CCM_8 = 0xC0A8
    #: ECDHE-PSK (RFC 5489 §2) with ChaCha20-Poly1305 records (RFC 7905 §2).
    TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256 = 0xCCAC
    #: ECDHE-PSK (RFC 5489 §2) with AES-128-GCM records (RFC 8442 §2, nonce of RFC 5288 §3).
    TLS_ECDHE_PSK_WITH_AES_128_GCM_SHA256 = 0xD001


#: Short names accepted on the command line, mapped to suites.
CIPHER_SUITE_NAMES: dict[str, CipherSuite] = {
    "ECDHE-ECDSA-AES128-CCM8": CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,
    "ECDHE-ECDSA-AES128-GCM-SHA256": CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    "PSK-AES128-CCM8": CipherSuite.TLS_PSK_WITH_AES_128_CCM_8,
    "ECDHE-PSK-CHACHA20-POLY1305": CipherSuite.TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256,
    "ECDHE-PSK-AES128-GCM-SHA256": CipherSuite.TLS_ECDHE_PSK_WITH_AES_128_GCM_SHA256,
}

#: Plain PSK suites (RFC 4279 §2): no certificate, no ECDHE.
PSK_SUITES = frozenset({CipherSuite.TLS_PSK_WITH_AES_128_CCM_8})
#: ECDHE-PSK suites (RFC 5489 §2): an unsigned ephemeral ECDH exchange mixed with the PSK.
ECDHE_PSK_SUITES = frozenset(
    {
        CipherSuite.TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256,
        CipherSuite.TLS_ECDHE_PSK_WITH_AES_128_GCM_SHA256,
    }
)
#: Every suite keyed by a pre-shared key (plain PSK or ECDHE-PSK).
PSK_KEYED_SUITES = PSK_SUITES | ECDHE_PSK_SUITES
#: Suites protected with ChaCha20-Poly1305 (RFC 7905 §2).
CHACHA20_SUITES = frozenset({CipherSuite.TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256})
#: Certificate (ECDHE_ECDSA) suites.
ECDHE_SUITES = frozenset(
    {
        CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,
        CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    }
)
CCM8_SUITES = frozenset(
    {CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8, CipherSuite.TLS_PSK_WITH_AES_128_CCM_8}
)


class ExtensionType(IntEnum):
    """Hello extensions (RFC 6066, RFC 8422, RFC 5246, RFC 7250, RFC 7627, RFC 5746) and the
    TwinPeaks extension (spec/twinpeaks.md §9, a private-use code point)."""

    SERVER_NAME = 0
    SUPPORTED_GROUPS = 10
    EC_POINT_FORMATS = 11
    SIGNATURE_ALGORITHMS = 13
    CLIENT_CERTIFICATE_TYPE = 19
    SERVER_CERTIFICATE_TYPE = 20
    EXTENDED_MASTER_SECRET = 23
    RENEGOTIATION_INFO = 0xFF01
    #: 65370, in the range IANA reserves for private use (65280, 65282-65535; RFC 8446 §11).
    TWINPEAKS = 0xFF5A


class CertificateType(IntEnum):
    """Certificate types of RFC 7250 §3 (IANA "TLS Certificate Types"); the two we support."""

    X509 = 0
    RAW_PUBLIC_KEY = 2


#: secp256r1 NamedGroup (RFC 8422 §5.1.1).
SECP256R1 = 23
#: Uncompressed EC point format (RFC 8422 §5.1.2).
POINT_FORMAT_UNCOMPRESSED = 0
#: named_curve ECCurveType (RFC 8422 §5.4).
CURVE_TYPE_NAMED = 3
#: ecdsa_secp256r1_sha256 SignatureScheme, i.e. {sha256(4), ecdsa(3)} (RFC 5246 §7.4.1.4.1).
ECDSA_SECP256R1_SHA256 = 0x0403
#: ecdsa_sign ClientCertificateType (RFC 8422 §5.5).
CERT_TYPE_ECDSA_SIGN = 64
#: TLS_EMPTY_RENEGOTIATION_INFO_SCSV (RFC 5746 §3.3).
EMPTY_RENEGOTIATION_INFO_SCSV = 0x00FF
#: Null compression (RFC 5246 §6.2.2).
COMPRESSION_NULL = 0
