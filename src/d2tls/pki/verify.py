"""Loading of keys, certificates and PSKs, and certificate chain verification.

Chains are verified with ``cryptography.x509.verification`` (RFC 5280 path building with the
CA/B-style profile of that library). A failure raises :class:`~d2tls.errors.CertificateError`
whose alert follows RFC 5246 §7.2.2 (and OpenSSL's choices where the RFC is vague):

* empty or too long chain, undecodable DER: ``bad_certificate``;
* leaf or CA outside its validity period: ``certificate_expired``;
* no path to a trust anchor: ``unknown_ca``;
* issuer signature does not verify: ``bad_certificate``;
* name mismatch, CA used as leaf, other profile errors: ``bad_certificate``;
* leaf key not ECDSA P-256, EKU not serverAuth/clientAuth: ``unsupported_certificate``.

Undecodable DER is ``bad_certificate`` rather than ``decode_error``: the Certificate message
itself was well formed, only a certificate inside it is corrupt (RFC 5246 §7.2.2).

``verify_server_chain`` always checks the server identity: ``server_name=None`` raises
:class:`~d2tls.errors.ConfigurationError` instead of silently skipping the name check. Pass
the IP literal (``"127.0.0.1"``, ``"::1"``) when connecting by address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from cryptography.x509.verification import (
    ClientVerifier,
    PolicyBuilder,
    ServerVerifier,
    Store,
    VerificationError,
)

from d2tls.dtls.constants import AlertDescription
from d2tls.errors import CertificateError, ConfigurationError

#: Most certificates accepted in one peer chain (leaf included).
MAX_CHAIN_LENGTH = 8
#: PSK identity length bounds (RFC 4279 §5.3: identities up to 128 octets must be supported).
MAX_PSK_IDENTITY_LEN = 128
#: PSK length bounds: at least 128 bits; RFC 4279 §5.3 requires support up to 64 octets.
MIN_PSK_LEN = 16
MAX_PSK_LEN = 64


# --------------------------------------------------------------------------- files


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def _load_pem_certificates(path: Path, what: str) -> list[x509.Certificate]:
    data = _read(path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigurationError(f"{what} {path} holds no valid PEM certificate") from exc
    if not certs:
        raise ConfigurationError(f"{what} {path} holds no certificate")
    return certs


def load_certificate_chain(path: Path) -> list[bytes]:
    """Read a PEM file of one or more certificates (leaf first) as a list of DER blobs."""
    certs = _load_pem_certificates(path, "certificate file")
    if len(certs) > MAX_CHAIN_LENGTH:
        raise ConfigurationError(f"certificate file {path} holds more than {MAX_CHAIN_LENGTH}")
    return [c.public_bytes(Encoding.DER) for c in certs]


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Read an unencrypted PEM private key; anything but ECDSA P-256 is refused."""
    data = _read(path, "private key")
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigurationError(
            f"private key {path} is not an unencrypted PEM private key: {exc}"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigurationError(f"private key {path} is not an ECDSA P-256 key")
    return key


def load_trust_store(path: Path) -> Store:
    """Read a PEM file of one or more trusted CA certificates into a verification store."""
    certs = _load_pem_certificates(path, "CA file")
    try:
        return Store(certs)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigurationError(f"CA file {path} cannot be used as trust store: {exc}") from exc


def parse_psk(text: str) -> tuple[bytes, bytes]:
    """Parse ``IDENTITY:HEXKEY`` into ``(identity, key)``.

    The identity is UTF-8 (1..128 bytes) and may itself contain ``:`` (the key is after the
    last one); the key is 16..64 bytes of hex.
    """
    identity_text, sep, hex_key = text.strip().rpartition(":")
    if not sep:
        raise ConfigurationError("PSK must be written IDENTITY:HEXKEY")
    identity = identity_text.encode("utf-8")
    if not 1 <= len(identity) <= MAX_PSK_IDENTITY_LEN:
        raise ConfigurationError(f"PSK identity must be 1..{MAX_PSK_IDENTITY_LEN} bytes")
    try:
        key = bytes.fromhex(hex_key.strip())
    except ValueError as exc:
        raise ConfigurationError(f"PSK key for {identity_text!r} is not hex") from exc
    if not MIN_PSK_LEN <= len(key) <= MAX_PSK_LEN:
        raise ConfigurationError(
            f"PSK key for {identity_text!r} must be {MIN_PSK_LEN}..{MAX_PSK_LEN} bytes"
        )
    return identity, key


def load_psk_file(path: Path) -> dict[bytes, bytes]:
    """Read ``IDENTITY:HEXKEY`` lines (blank lines and ``#`` comments ignored)."""
    try:
        text = _read(path, "PSK file").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"PSK file {path} is not UTF-8") from exc
    table: dict[bytes, bytes] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            identity, key = parse_psk(line)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{path}:{number}: {exc}") from exc
        if identity in table:
            raise ConfigurationError(f"{path}:{number}: duplicate PSK identity")
        table[identity] = key
    return table


# --------------------------------------------------------------------------- verification


def _hostile(exc: BaseException) -> bool:
    """Whether ``exc`` may come from parsing attacker-controlled certificate bytes.

    ``cryptography`` parses lazily and raises ValueError, KeyError, InvalidVersion, ... on
    corrupt fields; a Rust panic surfaces as ``PanicException`` (a ``BaseException``).
    """
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def _decode(der: bytes, index: int) -> x509.Certificate:
    try:
        cert = x509.load_der_x509_certificate(bytes(der))
        cert.version  # noqa: B018 - force the lazily parsed version field
    except BaseException as exc:
        if not _hostile(exc):
            raise
        raise CertificateError(f"certificate {index} is not valid DER: {exc}") from exc
    return cert


def _decode_chain(chain: Sequence[bytes]) -> list[x509.Certificate]:
    if not chain:
        raise CertificateError("peer sent an empty certificate chain")
    if len(chain) > MAX_CHAIN_LENGTH:
        raise CertificateError(f"certificate chain longer than {MAX_CHAIN_LENGTH}")
    return [_decode(der, i) for i, der in enumerate(chain)]


def _check_leaf_key(leaf: x509.Certificate) -> None:
    try:
        key = leaf.public_key()
    except BaseException as exc:
        if not _hostile(exc):
            raise
        raise CertificateError(
            f"leaf public key unusable: {exc}", AlertDescription.UNSUPPORTED_CERTIFICATE
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise CertificateError(
            "leaf certificate key is not ECDSA P-256", AlertDescription.UNSUPPORTED_CERTIFICATE
        )


def _alert_for(message: str) -> AlertDescription:
    """Map a ``VerificationError`` message of ``cryptography`` to an alert."""
    if "not valid at validation time" in message:
        return AlertDescription.CERTIFICATE_EXPIRED
    if "required EKU not found" in message:
        return AlertDescription.UNSUPPORTED_CERTIFICATE
    if "candidates exhausted" in message and "signature does not match" not in message:
        # No issuer candidate led to a trust anchor (none at all, or only unusable ones,
        # e.g. an untrusted root sent along whose path length forbids going on).
        return AlertDescription.UNKNOWN_CA
    return AlertDescription.BAD_CERTIFICATE


def _subject_for(server_name: str) -> x509.DNSName | x509.IPAddress:
    name = server_name.strip()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    try:
        return x509.DNSName(name)
    except ValueError as exc:
        raise ConfigurationError(f"invalid server name {server_name!r}: {exc}") from exc


def _builder(store: Store, now: datetime | None) -> PolicyBuilder:
    builder = PolicyBuilder().store(store).max_chain_depth(MAX_CHAIN_LENGTH)
    return builder.time(now) if now is not None else builder


def _verify(verifier: ServerVerifier | ClientVerifier, chain: Sequence[bytes]) -> x509.Certificate:
    leaf, *intermediates = _decode_chain(chain)
    _check_leaf_key(leaf)
    try:
        verifier.verify(leaf, intermediates)
    except VerificationError as exc:
        message = str(exc)
        raise CertificateError(
            f"certificate verification failed: {message}", _alert_for(message)
        ) from exc
    except BaseException as exc:
        if not _hostile(exc):
            raise
        raise CertificateError(f"certificate rejected: {exc}") from exc
    return leaf


def verify_server_chain(
    chain: Sequence[bytes],
    store: Store,
    server_name: str | None,
    now: datetime | None = None,
) -> x509.Certificate:
    """Verify a server chain (leaf first, EKU serverAuth) for ``server_name``; return the leaf.

    ``server_name`` is a DNS name or an IP literal. Raises :class:`CertificateError` with the
    alert to send, or :class:`ConfigurationError` if ``server_name`` is missing or invalid.
    """
    if server_name is None:
        raise ConfigurationError("a server name is required to verify a server certificate")
    subject = _subject_for(server_name)
    try:
        verifier = _builder(store, now).build_server_verifier(subject)
    except ValueError as exc:
        raise ConfigurationError(f"invalid server name {server_name!r}: {exc}") from exc
    return _verify(verifier, chain)


def verify_client_chain(
    chain: Sequence[bytes], store: Store, now: datetime | None = None
) -> x509.Certificate:
    """Verify a client chain (leaf first, EKU clientAuth); return the leaf.

    Raises :class:`CertificateError` with the alert to send.
    """
    return _verify(_builder(store, now).build_client_verifier(), chain)


def certificate_subject(der: bytes) -> str:
    """The RFC 4514 subject of a DER certificate (``CertificateError`` if undecodable)."""
    cert = _decode(der, 0)
    try:
        return cert.subject.rfc4514_string()
    except BaseException as exc:
        if not _hostile(exc):
            raise
        raise CertificateError(f"certificate subject undecodable: {exc}") from exc
