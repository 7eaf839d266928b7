"""Client certificates a server refuses although their chain verifies: CRLs (RFC 5280 §5).

A server loads the CRLs its CAs publish (``openssl ca -gencrl`` makes one) together with the CA
certificates that signed them. Each CRL's signature is checked against its issuer when it is
loaded (RFC 5280 §6.3.3 (f), (g)); a certificate is revoked when a CRL of *its* issuer lists
its serial number (RFC 5280 §5.3.3: serials are unique per issuer only).

The object is immutable: an operator who publishes a new CRL builds a new one and assigns it
to ``ServerConfig.revocations`` (``d2tls server --crl`` reads the files at start). Lookups are
a set membership per certificate, so the server checks revocation on every full handshake
*and every resumption* and never caches the answer (docs/security.md, "Verdict cache").

A CRL past its ``nextUpdate`` is still used, with a warning when it is loaded: refusing every
device because a CRL was not refreshed in time would be a fallback of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from d2tls.core.clock import utc_now
from d2tls.core.errors import ConfigurationError

log = logging.getLogger(__name__)


class ClientRevocations:
    """Revoked (issuer name, serial number) pairs from CRLs whose signatures were checked."""

    def __init__(self, revoked: Iterable[tuple[bytes, int]] = ()) -> None:
        self._revoked = frozenset(revoked)

    @classmethod
    def from_crls(
        cls,
        crls: Sequence[x509.CertificateRevocationList],
        issuers: Sequence[x509.Certificate],
        now: datetime | None = None,
    ) -> ClientRevocations:
        """Check each CRL against the issuer whose subject is its issuer, then index it.

        Raises :class:`ConfigurationError` for a CRL with no such issuer or a bad signature.
        """
        moment = now or utc_now()
        revoked: set[tuple[bytes, int]] = set()
        for number, crl in enumerate(crls, start=1):
            issuer = next((c for c in issuers if c.subject == crl.issuer), None)
            if issuer is None:
                raise ConfigurationError(
                    f"CRL {number} is issued by {crl.issuer.rfc4514_string()}, which is not "
                    "among the trusted CAs (--ca)"
                )
            key = issuer.public_key()
            if not isinstance(key, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(key):
                raise ConfigurationError(
                    f"CRL {number} is not signed by {issuer.subject.rfc4514_string()} "
                    "(RFC 5280 §6.3.3)"
                )
            next_update = crl.next_update_utc
            if next_update is not None and next_update < moment:
                log.warning(
                    "CRL of %s is out of date (nextUpdate %s); it is used until replaced",
                    crl.issuer.rfc4514_string(),
                    next_update.isoformat(),
                )
            name = crl.issuer.public_bytes()
            revoked.update((name, entry.serial_number) for entry in crl)
        return cls(revoked)

    @classmethod
    def load(cls, crl_paths: Sequence[Path], ca_path: Path) -> ClientRevocations:
        """Read PEM or DER CRLs and the PEM CA file that signed them."""
        try:
            issuers = x509.load_pem_x509_certificates(Path(ca_path).read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot read CA file {ca_path}: {exc}") from exc
        crls = []
        for path in crl_paths:
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise ConfigurationError(f"cannot read CRL {path}: {exc.strerror or exc}") from exc
            try:
                if b"-----BEGIN" in data:
                    crls.append(x509.load_pem_x509_crl(data))
                else:
                    crls.append(x509.load_der_x509_crl(data))
            except ValueError as exc:
                raise ConfigurationError(f"{path} holds no valid CRL: {exc}") from exc
        return cls.from_crls(crls, issuers)

    def revoked(self, chain: Sequence[x509.Certificate]) -> x509.Certificate | None:
        """The first certificate of ``chain`` that a CRL of its issuer lists, else None."""
        for cert in chain:
            if (cert.issuer.public_bytes(), cert.serial_number) in self._revoked:
                return cert
        return None

    def __len__(self) -> int:
        return len(self._revoked)
