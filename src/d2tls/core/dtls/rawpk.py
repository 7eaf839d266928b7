"""Raw public keys in DTLS 1.2 (RFC 7250): SubjectPublicKeyInfo handling and type negotiation.

A raw public key is the DER SubjectPublicKeyInfo of RFC 5280 §4.1.2.7, carried alone in the
Certificate message (RFC 7250 §3). d2tls accepts only ECDSA P-256 keys, like its certificates.
Trust is by the key itself: a set of pinned keys, or a callback returning the key expected for
a server name (the hook TwinPeaks uses, :mod:`d2tls.core.dtls.twinpeaks`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_public_key,
    load_pem_public_key,
)

from d2tls.core.dtls.constants import AlertDescription, CertificateType
from d2tls.core.errors import CertificateError, ConfigurationError

PublicOrPrivate = ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey

_PEM_BLOCK = b"-----BEGIN PUBLIC KEY-----"


def spki_of(key: PublicOrPrivate) -> bytes:
    """The DER SubjectPublicKeyInfo of ``key`` (of its public half)."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def fingerprint(spki: bytes) -> str:
    """``sha256:<hex>`` of a SubjectPublicKeyInfo, for logs and reports."""
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def load_raw_public_key(spki: bytes, whose: str) -> tuple[ec.EllipticCurvePublicKey, bytes]:
    """Parse a received SubjectPublicKeyInfo; return the key and its canonical DER.

    Alerts (RFC 5246 §7.2.2): bytes that are no SubjectPublicKeyInfo are bad_certificate; a
    key of another algorithm or curve is unsupported_certificate.
    """
    try:
        key = load_der_public_key(spki)
    except UnsupportedAlgorithm:
        raise CertificateError(
            f"{whose} raw public key uses an unsupported algorithm",
            AlertDescription.UNSUPPORTED_CERTIFICATE,
        ) from None
    except ValueError:
        raise CertificateError(
            f"{whose} raw public key is not a DER SubjectPublicKeyInfo",
            AlertDescription.BAD_CERTIFICATE,
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise CertificateError(
            f"{whose} raw public key is not ECDSA P-256", AlertDescription.UNSUPPORTED_CERTIFICATE
        )
    return key, spki_of(key)


def canonical_spkis(keys: Iterable[bytes], what: str) -> frozenset[bytes]:
    """Configured SubjectPublicKeyInfos (DER) in canonical form; a key that is not P-256 or
    not parseable is a ConfigurationError naming ``what``."""
    out: set[bytes] = set()
    for spki in keys:
        try:
            _, canonical = load_raw_public_key(bytes(spki), what)
        except CertificateError as exc:
            raise ConfigurationError(str(exc)) from None
        out.add(canonical)
    return frozenset(out)


def load_spki_file(path: Path) -> tuple[bytes, ...]:
    """The public keys in ``path``: one or more PEM ``PUBLIC KEY`` blocks, or one DER
    SubjectPublicKeyInfo. Each must be a P-256 key (ConfigurationError otherwise)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}") from None
    keys: list[bytes] = []
    try:
        if _PEM_BLOCK in data:
            for part in data.split(_PEM_BLOCK)[1:]:
                keys.append(spki_of_any(load_pem_public_key(_PEM_BLOCK + part), path))
        else:
            keys.append(spki_of_any(load_der_public_key(data), path))
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigurationError(f"{path}: not a PEM/DER public key ({exc})") from None
    return tuple(sorted(canonical_spkis(keys, str(path))))


def spki_of_any(key: object, path: Path) -> bytes:
    """The SPKI of a loaded key, which must be ECDSA P-256."""
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ConfigurationError(f"{path}: only ECDSA P-256 public keys are supported")
    return spki_of(key)


def choose_type(offered: Sequence[int] | None, supported: Sequence[CertificateType]) -> int | None:
    """RFC 7250 §4.2: the first type of the peer's list (its preference order) that we
    support; an absent list means X.509 only (RFC 7250 §4.1). None: no type in common."""
    for cert_type in offered if offered is not None else (CertificateType.X509,):
        if cert_type in supported:
            return cert_type
    return None
