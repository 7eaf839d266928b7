"""Loading of keys, certificates and PSKs, and certificate chain verification.

Chains are verified with ``cryptography.x509.verification`` (RFC 5280 path building with the
CA/B-style profile of that library). Server chains use that profile unchanged. Client (device)
chains use it with one end-entity difference: ``subjectAltName`` may be absent, as RFC 5280
§4.1.2.6 allows when the subject is not empty (what ``openssl req`` and many device CAs issue).
Chain, validity, signatures, basicConstraints, the clientAuth EKU (when an EKU is present) are
checked as before; a client leaf's keyUsage, when present, must assert digitalSignature (its key
signs CertificateVerify, RFC 5246 §7.4.8) and not keyCertSign. A device is identified by its SAN
when it has one, else by its subject CN (:func:`certificate_identity`).

A failure raises :class:`~d2tls.core.errors.CertificateError` whose message names the certificate
and the failed check in plain words (:mod:`d2tls.core.pki.explain`) and whose alert follows RFC 5246
§7.2.2 (and OpenSSL's choices where the RFC is vague):

* empty or too long chain, undecodable DER: ``bad_certificate``;
* leaf or CA outside its validity period: ``certificate_expired``;
* no path to a trust anchor: ``unknown_ca``;
* issuer signature does not verify: ``bad_certificate``;
* name mismatch, CA used as leaf, other profile errors: ``bad_certificate``;
* leaf key not ECDSA P-256, EKU not serverAuth/clientAuth, client keyUsage without
  digitalSignature: ``unsupported_certificate``.

Undecodable DER is ``bad_certificate`` rather than ``decode_error``: the Certificate message
itself was well formed, only a certificate inside it is corrupt (RFC 5246 §7.2.2).

``verify_server_chain`` always checks the server identity: ``server_name=None`` raises
:class:`~d2tls.core.errors.ConfigurationError` instead of silently skipping the name check. Pass
the IP literal (``"127.0.0.1"``, ``"::1"``) when connecting by address.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from cryptography.x509.verification import (
    ClientVerifier,
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    ServerVerifier,
    Store,
    VerificationError,
)

from d2tls.core.clock import utc_now
from d2tls.core.dtls.constants import AlertDescription
from d2tls.core.errors import CertificateError, ConfigurationError
from d2tls.core.pki.explain import explain, name_of

log = logging.getLogger(__name__)

#: Most certificates accepted in one peer chain (leaf included).
MAX_CHAIN_LENGTH = 8
#: PSK identity length bounds (RFC 4279 §5.3: identities up to 128 octets must be supported).
MAX_PSK_IDENTITY_LEN = 128
#: PSK length bounds: RFC 4279 sets no minimum; §5.3 requires support up to 64 octets.
MIN_PSK_LEN = 1
MAX_PSK_LEN = 64
#: Keys shorter than this (128 bits) are accepted with a warning: they can be brute-forced.
WEAK_PSK_LEN = 16


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


def check_psk(identity: bytes, key: bytes) -> None:
    """Refuse a PSK outside 1..64 bytes or an identity outside 1..128 bytes.

    RFC 4279 §5.3: implementations must support identities up to 128 octets and keys up to
    64 octets; the RFC sets no minimum key length.
    """
    shown = identity.decode("utf-8", "replace")
    if not 1 <= len(identity) <= MAX_PSK_IDENTITY_LEN:
        raise ConfigurationError(
            f"PSK identity {shown!r} is {len(identity)} bytes; it must be 1..{MAX_PSK_IDENTITY_LEN}"
        )
    if not MIN_PSK_LEN <= len(key) <= MAX_PSK_LEN:
        raise ConfigurationError(
            f"PSK key for {shown!r} is {len(key)} bytes; it must be {MIN_PSK_LEN}..{MAX_PSK_LEN} "
            f"bytes (RFC 4279 §5.3)"
        )


def warn_if_weak_psk(identity: bytes, key: bytes) -> bool:
    """Log a warning (stderr without logging configured) for a key under 16 bytes."""
    if len(key) >= WEAK_PSK_LEN:
        return False
    log.warning(
        "WARNING: PSK for identity %r is only %d bytes (%d bits); keys under %d bytes can be "
        "found by brute force. Use a random 32-byte key where the peer allows it.",
        identity.decode("utf-8", "replace"),
        len(key),
        8 * len(key),
        WEAK_PSK_LEN,
    )
    return True


def parse_psk(text: str) -> tuple[bytes, bytes]:
    """Parse ``IDENTITY:HEXKEY`` into ``(identity, key)``.

    The identity is UTF-8 (1..128 bytes) and may itself contain ``:`` (the key is after the
    last one); the key is 1..64 bytes of hex, with a warning below 16 bytes.
    """
    identity_text, sep, hex_key = text.strip().rpartition(":")
    if not sep:
        raise ConfigurationError("PSK must be written IDENTITY:HEXKEY")
    identity = identity_text.encode("utf-8")
    try:
        key = bytes.fromhex(hex_key.strip())
    except ValueError as exc:
        raise ConfigurationError(f"PSK key for {identity_text!r} is not hex") from exc
    check_psk(identity, key)
    warn_if_weak_psk(identity, key)
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
        kind = f"{key.curve.name} EC" if isinstance(key, ec.EllipticCurvePublicKey) else "non-EC"
        raise CertificateError(
            f"certificate {name_of(leaf.subject)} not accepted: it has a {kind} key; only "
            f"ECDSA P-256 is supported",
            AlertDescription.UNSUPPORTED_CERTIFICATE,
        )


def _alert_for(message: str) -> AlertDescription:
    """Map a ``VerificationError`` message of ``cryptography`` to an alert."""
    if "not valid at validation time" in message:
        return AlertDescription.CERTIFICATE_EXPIRED
    if "required EKU not found" in message or "does not assert digitalSignature" in message:
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


def _builder(store: Store, now: datetime) -> PolicyBuilder:
    """RFC 5280 §6.1.3 (a)(2): validity is checked at ``now``, always given explicitly."""
    return PolicyBuilder().store(store).max_chain_depth(MAX_CHAIN_LENGTH).time(now)


def _client_subject_alt_name(
    policy: Policy, cert: x509.Certificate, san: x509.SubjectAlternativeName | None
) -> None:
    """SAN optional on a client leaf (RFC 5280 §4.1.2.6); the Web-PKI criticality rule kept."""
    if san is None:
        if not cert.subject:
            raise ValueError("it has neither a subject nor a subjectAltName: no identity")
        return
    critical = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
    if not cert.subject and not critical:
        raise ValueError("EE subjectAltName MUST be critical when subject is empty")
    if cert.subject and critical:
        raise ValueError("EE subjectAltName MUST NOT be critical when subject is nonempty")


def _client_key_usage(policy: Policy, cert: x509.Certificate, usage: x509.KeyUsage | None) -> None:
    """RFC 5280 §4.2.1.3: a client key signs CertificateVerify, so digitalSignature."""
    if usage is None:
        return
    if usage.key_cert_sign:
        raise ValueError("keyUsage asserts keyCertSign, which an end-entity must not")
    if not usage.digital_signature:
        raise ValueError("keyUsage does not assert digitalSignature, needed to sign")


def client_leaf_policy() -> ExtensionPolicy:
    """The Web-PKI end-entity policy with an optional SAN and a signing keyUsage."""
    return (
        ExtensionPolicy.webpki_defaults_ee()
        .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, _client_subject_alt_name)
        .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _client_key_usage)
    )


def _verify(
    verifier: ServerVerifier | ClientVerifier,
    chain: Sequence[bytes],
    *,
    usage: str,
    expected_name: str | None = None,
    now: datetime | None = None,
) -> list[x509.Certificate]:
    """The verified path, leaf first and trust anchor last."""
    certs = _decode_chain(chain)
    leaf, *intermediates = certs
    _check_leaf_key(leaf)
    try:
        verified = verifier.verify(leaf, intermediates)
    except VerificationError as exc:
        message = str(exc)
        try:
            plain = explain(message, certs, usage=usage, expected_name=expected_name, now=now)
        except Exception:  # a hostile field must not hide the verdict
            plain = f"certificate not accepted: {message}"
        raise CertificateError(plain, _alert_for(message)) from exc
    except BaseException as exc:
        if not _hostile(exc):
            raise
        raise CertificateError(f"certificate rejected: {exc}") from exc
    path = verified if isinstance(verified, list) else verified.chain
    return list(path)


def verify_server_chain(
    chain: Sequence[bytes],
    store: Store,
    server_name: str | None,
    now: datetime | None = None,
) -> x509.Certificate:
    """Verify a server chain (leaf first, EKU serverAuth) for ``server_name``; return the leaf.

    Validity is checked at ``now`` (engines pass their injected wall clock; None reads the
    system clock through :func:`d2tls.core.clock.utc_now`).

    ``server_name`` is a DNS name or an IP literal. Raises :class:`CertificateError` with the
    alert to send, or :class:`ConfigurationError` if ``server_name`` is missing or invalid.
    """
    return verify_server_path(chain, store, server_name, now)[0]


def verify_server_path(
    chain: Sequence[bytes],
    store: Store,
    server_name: str | None,
    now: datetime | None = None,
) -> list[x509.Certificate]:
    """:func:`verify_server_chain`, returning the whole verified path (leaf first, trust
    anchor last): one signature verify per certificate below the anchor (RFC 5280 §6.1)."""
    if server_name is None:
        raise ConfigurationError("a server name is required to verify a server certificate")
    now = now if now is not None else utc_now()
    subject = _subject_for(server_name)
    try:
        verifier = _builder(store, now).build_server_verifier(subject)
    except ValueError as exc:
        raise ConfigurationError(f"invalid server name {server_name!r}: {exc}") from exc
    return _verify(verifier, chain, usage="serverAuth", expected_name=server_name, now=now)


def verify_client_chain(
    chain: Sequence[bytes], store: Store, now: datetime | None = None
) -> x509.Certificate:
    """Verify a client chain (leaf first, EKU clientAuth if any EKU, SAN optional); the leaf.

    Raises :class:`CertificateError` with the alert to send.
    """
    return verify_client_path(chain, store, now)[0]


def verify_client_path(
    chain: Sequence[bytes], store: Store, now: datetime | None = None
) -> list[x509.Certificate]:
    """:func:`verify_client_chain`, returning the whole verified path (leaf first, trust
    anchor last): its earliest ``notAfter`` bounds how long the verdict holds (RFC 5280 §6.1)."""
    now = now if now is not None else utc_now()
    builder = _builder(store, now).extension_policies(
        ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=client_leaf_policy()
    )
    return _verify(builder.build_client_verifier(), chain, usage="clientAuth", now=now)


def certificate_subject(der: bytes) -> str:
    """The RFC 4514 subject of a DER certificate (``CertificateError`` if undecodable)."""
    cert = _decode(der, 0)
    try:
        return cert.subject.rfc4514_string()
    except BaseException as exc:
        if not _hostile(exc):
            raise
        raise CertificateError(f"certificate subject undecodable: {exc}") from exc


def _general_name(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DNSName):
        return f"DNS:{name.value}"
    if isinstance(name, x509.IPAddress):
        return f"IP:{name.value}"
    if isinstance(name, x509.UniformResourceIdentifier):
        return f"URI:{name.value}"
    if isinstance(name, x509.RFC822Name):
        return f"email:{name.value}"
    return f"{type(name).__name__}:{name.value}"


def certificate_identity(der: bytes) -> str:
    """How a peer is identified: its first subjectAltName (``DNS:device-1.example``), else its
    subject CN (``CN=sensor-42``), else its whole RFC 4514 subject."""
    cert = _decode(der, 0)
    try:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = None
        if san is not None and len(san) > 0:
            return _general_name(next(iter(san)))
        common_names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        if common_names:
            return f"CN={common_names[0].value!s}"
        return cert.subject.rfc4514_string()
    except BaseException as exc:
        if not _hostile(exc):
            raise
        raise CertificateError(f"certificate identity undecodable: {exc}") from exc
