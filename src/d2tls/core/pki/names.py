"""Does a certificate name a server? RFC 6125 §6 matching without chain verification.

The device uses this in bound mode (spec/delegation.md §6) to check that the server
Certificate in the transcript it signs is for the server it asked for. It does not verify
the chain: that stays the agent's job. Rules (RFC 6125 §6.4, as the CA/Browser Forum profile
and ``cryptography``'s verifier apply them, so every certificate the agent accepts for a name
passes here too):

* an IP literal (``127.0.0.1``, ``::1``, ``[::1]``) matches only an ``iPAddress`` SAN with the
  same address (RFC 6125 §1.7.2, RFC 5280 §4.2.1.6);
* a DNS name matches a ``dNSName`` SAN case-insensitively (RFC 6125 §6.4.1), a trailing dot
  ignored; a wildcard is allowed only as the whole left-most label (``*.example.com``) and
  matches exactly one label (RFC 6125 §6.4.3), never an IP literal;
* the subject CN is not used (RFC 6125 §6.4.4: only for certificates without a DNS-ID; the
  agent's verifier never uses it, so neither does the device).

A pin is the SHA-256 of the leaf's DER SubjectPublicKeyInfo (RFC 7469 §2.4, ``pin-sha256``).
"""

from __future__ import annotations

import hashlib
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from d2tls.core.errors import CertificateError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _load(der: bytes) -> x509.Certificate:
    try:
        cert = x509.load_der_x509_certificate(bytes(der))
        cert.version  # noqa: B018 - force the lazily parsed version field
    except Exception as exc:  # cryptography raises ValueError and others on corrupt DER
        raise CertificateError(f"server certificate is not valid DER: {exc}") from exc
    return cert


def _ip_literal(name: str) -> IPAddress | None:
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _dns_matches(pattern: str, name: str) -> bool:
    """RFC 6125 §6.4.1 and §6.4.3: case-insensitive; ``*`` only as the whole left-most label."""
    pattern = pattern.rstrip(".").lower()
    name = name.rstrip(".").lower()
    if not pattern or not name:
        return False
    if not pattern.startswith("*."):
        return "*" not in pattern and pattern == name
    suffix = pattern[2:]
    if "*" in suffix or suffix.count(".") < 1:  # no "*.com": at least two labels after it
        return False
    first, dot, rest = name.partition(".")
    return bool(first) and bool(dot) and rest == suffix


def subject_alt_names(der: bytes) -> tuple[list[str], list[IPAddress]]:
    """The ``dNSName`` and ``iPAddress`` entries of the certificate's subjectAltName."""
    cert = _load(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    except Exception as exc:
        raise CertificateError(f"server certificate extensions undecodable: {exc}") from exc
    addresses = [
        a
        for a in san.get_values_for_type(x509.IPAddress)
        if isinstance(a, ipaddress.IPv4Address | ipaddress.IPv6Address)
    ]
    return san.get_values_for_type(x509.DNSName), addresses


def names_server(der: bytes, server_name: str) -> bool:
    """Whether the certificate ``der`` is for ``server_name`` (rules in the module docstring).

    Raises ``CertificateError`` when the certificate cannot be decoded.
    """
    dns_names, addresses = subject_alt_names(der)
    address = _ip_literal(server_name.strip())
    if address is not None:
        return address in addresses
    return any(_dns_matches(pattern, server_name.strip()) for pattern in dns_names)


def spki_sha256(der: bytes) -> bytes:
    """RFC 7469 §2.4 pin: SHA-256 of the DER SubjectPublicKeyInfo of certificate ``der``."""
    cert = _load(der)
    try:
        spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    except Exception as exc:
        raise CertificateError(f"server certificate public key unusable: {exc}") from exc
    return hashlib.sha256(spki).digest()


__all__ = ["names_server", "spki_sha256", "subject_alt_names"]
