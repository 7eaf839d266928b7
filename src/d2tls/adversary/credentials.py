"""An in-memory test PKI for attacker models (no files): one CA, two servers, one device, a PSK."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.verification import Store

from d2tls.core.pki.generate import create_ca, issue_certificate

SERVER_NAME = "server.d2tls.test"
OTHER_SERVER_NAME = "other.d2tls.test"
PSK_IDENTITY = b"device-1"


@dataclass(frozen=True)
class Identity:
    chain: tuple[bytes, ...]
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Credentials:
    """Everything the simulated device, agent and servers need."""

    store: Store
    server: Identity
    other_server: Identity
    device: Identity
    #: The network adversary's own, legitimate client identity (it is a customer too).
    mallory: Identity
    psk_identity: bytes
    psk: bytes
    mallory_psk_identity: bytes
    mallory_psk: bytes


def _identity(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], name: str, *, client: bool
) -> Identity:
    ca_cert, ca_key = ca
    cert, key = issue_certificate(ca_cert, ca_key, name, server_names=[name], client=client)
    return Identity((cert.public_bytes(Encoding.DER),), key)


@functools.lru_cache(maxsize=1)
def credentials() -> Credentials:
    """One PKI per process (key generation is the slow part)."""
    ca = create_ca("d2tls adversary CA")
    return Credentials(
        store=Store([ca[0]]),
        server=_identity(ca, SERVER_NAME, client=False),
        other_server=_identity(ca, OTHER_SERVER_NAME, client=False),
        device=_identity(ca, "device-1.d2tls.invalid", client=True),
        mallory=_identity(ca, "mallory.d2tls.invalid", client=True),
        psk_identity=PSK_IDENTITY,
        psk=bytes(range(32)),
        mallory_psk_identity=b"mallory",
        mallory_psk=bytes(range(100, 132)),
    )
