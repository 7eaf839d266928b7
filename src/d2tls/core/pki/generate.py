"""Test PKI generation: a P-256 CA, a server certificate, device certificates and PSKs.

Every key is ECDSA P-256 and every signature ECDSA-SHA256. Certificates follow the RFC 5280
profile that ``cryptography.x509.verification``, OpenSSL 3 and GnuTLS all accept: the CA has a
critical ``basicConstraints CA:TRUE`` and ``keyUsage keyCertSign, cRLSign``; leaves have
``basicConstraints CA:FALSE``, a critical ``keyUsage digitalSignature``, an EKU, a SAN, and all
certificates carry SKI/AKI.

Certificate files written by :func:`init_pki` hold the *leaf only* (no CA): the peer already has
the CA as trust anchor, and a one-certificate flight keeps the DTLS handshake small.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from d2tls.core.clock import utc_now
from d2tls.core.errors import (
    PKIExistsError as PKIExistsError,  # re-exported: its home is d2tls.core.errors
)
from d2tls.core.randomness import SYSTEM, system_random

#: Backdating of ``notBefore`` so that small clock skews do not reject fresh certificates.
CLOCK_SKEW = timedelta(hours=1)
#: DNS suffix of device SANs (``.invalid`` is reserved, RFC 2606).
DEVICE_DOMAIN = "d2tls.invalid"


@dataclass(frozen=True)
class DevicePaths:
    """Files of one device identity."""

    name: str
    cert: Path
    key: Path


@dataclass(frozen=True)
class PKIPaths:
    """Files written by :func:`init_pki`.

    ``server_chain`` is the same leaf-only PEM as ``server_cert`` (kept as a separate name so
    callers can say "the chain to send"). ``other_ca_*`` is an unrelated CA for negative tests.
    """

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    server_chain: Path
    devices: tuple[DevicePaths, ...]
    psk_file: Path
    #: The agent's PSK file: the same keys, each bound to its device certificate.
    agent_psk_file: Path
    other_ca_cert: Path
    other_ca_key: Path


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 private key from the system generator
    (:data:`d2tls.core.randomness.SYSTEM`)."""
    return SYSTEM.ec_private_key()


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "d2tls"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _validity(
    not_before: datetime | None, not_after: datetime | None, validity_days: int
) -> tuple[datetime, datetime]:
    now = utc_now()
    start = not_before if not_before is not None else now - CLOCK_SKEW
    end = not_after if not_after is not None else now + timedelta(days=validity_days)
    return start, end


def create_ca(
    common_name: str = "d2tls test CA",
    *,
    validity_days: int = 365,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed root CA certificate and its key."""
    key = key if key is not None else generate_key()
    start, end = _validity(None, None, validity_days)
    name = _name(common_name)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def issue_certificate(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    *,
    server_names: Sequence[str] = (),
    client: bool,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
    validity_days: int = 365,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Issue an end-entity certificate signed by ``ca_cert``/``ca_key``.

    ``server_names`` become SAN entries (IP literals as iPAddress, others as dNSName); at
    least one is required because RFC 5280 verifiers want a SAN. ``client`` selects the EKU
    (clientAuth, else serverAuth). ``key`` defaults to a fresh P-256 key.
    """
    if not server_names:
        raise ValueError("issue_certificate needs at least one SAN in server_names")
    key = key if key is not None else generate_key()
    start, end = _validity(not_before, not_after, validity_days)
    eku = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in server_names]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 (also when the file already exists)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def write_pem_certificate(path: Path, *certs: x509.Certificate) -> None:
    """Write one or more certificates (leaf first) as PEM, mode 0600."""
    if not certs:
        raise ValueError("write_pem_certificate needs at least one certificate")
    _write_private(path, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))


def write_pem_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write an unencrypted PKCS#8 PEM private key, mode 0600."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(path, pem)


def device_name(index: int) -> str:
    """Common name of device ``index`` (1-based): ``device-N``."""
    return f"device-{index}"


def pki_paths(directory: Path, devices: int = 1) -> PKIPaths:
    """The file paths of a PKI that :func:`init_pki` writes (or wrote) into ``directory``."""
    return PKIPaths(
        directory=directory,
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        server_chain=directory / "server-chain.pem",
        devices=tuple(
            DevicePaths(
                name=device_name(i),
                cert=directory / f"{device_name(i)}.pem",
                key=directory / f"{device_name(i)}.key",
            )
            for i in range(1, devices + 1)
        ),
        psk_file=directory / "psk.txt",
        agent_psk_file=directory / "agent-psk.txt",
        other_ca_cert=directory / "other-ca.pem",
        other_ca_key=directory / "other-ca.key",
    )


#: Files of a PKI directory besides the device files: what ``init_pki`` and the OCSP
#: responder (``revoked.json``) write.
PKI_FILES = (
    "ca.pem",
    "ca.key",
    "server.pem",
    "server.key",
    "server-chain.pem",
    "psk.txt",
    "agent-psk.txt",
    "other-ca.pem",
    "other-ca.key",
    "revoked.json",
)
_DEVICE_FILE = re.compile(r"device-[0-9]+\.(pem|key)")


def existing_pki_files(directory: Path) -> list[Path]:
    """The files of a PKI (as :func:`init_pki` writes them) present in ``directory``."""
    if not directory.is_dir():
        return []
    return sorted(
        path
        for path in directory.iterdir()
        if path.name in PKI_FILES or _DEVICE_FILE.fullmatch(path.name)
    )


def init_pki(
    directory: Path,
    server_name: str = "localhost",
    devices: int = 1,
    validity_days: int = 365,
    *,
    replace: bool = True,
) -> PKIPaths:
    """Create a complete test PKI in ``directory`` and return its file paths.

    The server SAN holds ``server_name`` plus IP 127.0.0.1 and ::1. Device ``N`` gets CN
    ``device-N`` and SAN ``device-N.d2tls.invalid``. ``psk.txt`` has one ``device-N:HEX`` line
    per device (32 random bytes each); ``agent-psk.txt`` the same keys bound to the device
    certificates (``cert-sha256=``, spec/delegation.md §9.1), for ``d2tls agent``.

    If ``directory`` already holds a PKI: with ``replace=False`` raise :class:`PKIExistsError`
    (``d2tls pki init`` without ``--force``); otherwise remove all of its files first, so that
    no device certificate of the old CA (or revocation list) is left behind.
    """
    if devices < 0:
        raise ValueError("devices must be >= 0")
    existing = existing_pki_files(directory)
    if existing and not replace:
        listed = ", ".join(p.name for p in existing[:6]) + (", ..." if len(existing) > 6 else "")
        raise PKIExistsError(
            f"{directory} already holds a PKI ({listed}); use --force to replace it (this "
            f"deletes its CA, keys, device certificates and PSKs)"
        )
    for path in existing:
        path.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = create_ca(validity_days=validity_days)
    other_cert, other_key = create_ca("d2tls unrelated CA", validity_days=validity_days)

    names = [server_name] + [n for n in ("127.0.0.1", "::1") if n != server_name]
    srv_cert, srv_key = issue_certificate(
        ca_cert,
        ca_key,
        server_name,
        server_names=names,
        client=False,
        validity_days=validity_days,
    )

    paths = pki_paths(directory, devices)
    write_pem_certificate(paths.ca_cert, ca_cert)
    write_pem_private_key(paths.ca_key, ca_key)
    write_pem_certificate(paths.other_ca_cert, other_cert)
    write_pem_private_key(paths.other_ca_key, other_key)
    write_pem_certificate(paths.server_cert, srv_cert)
    write_pem_certificate(paths.server_chain, srv_cert)
    write_pem_private_key(paths.server_key, srv_key)

    psk_lines, agent_lines = [], []
    for dev in paths.devices:
        cert, key = issue_certificate(
            ca_cert,
            ca_key,
            dev.name,
            server_names=[f"{dev.name}.{DEVICE_DOMAIN}"],
            client=True,
            validity_days=validity_days,
        )
        write_pem_certificate(dev.cert, cert)
        write_pem_private_key(dev.key, key)
        psk = system_random(32)
        psk_lines.append(f"{dev.name}:{psk.hex()}\n")
        binding = cert.fingerprint(hashes.SHA256()).hex()
        agent_lines.append(f"{dev.name}:{psk.hex()} cert-sha256={binding}\n")
    _write_private(paths.psk_file, "".join(psk_lines).encode("ascii"))
    _write_private(paths.agent_psk_file, "".join(agent_lines).encode("ascii"))
    return paths
