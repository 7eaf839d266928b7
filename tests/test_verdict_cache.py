"""The client-chain verdict cache of resumptions (issue 23 item 4) and CRL revocation.

Certificates, revocations and CRLs are made by the ``openssl`` command line (``openssl ca
-revoke`` / ``-gencrl``). The cache is tested directly (hits, trust-store change, expiry at
``max_age`` and at ``notAfter``, LRU bound), then over real UDP: a device whose certificate is
revoked, or whose CA is removed from the trust store, can no longer resume although its chain's
acceptance is cached.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from d2tls.core.dtls.client import DTLSClient
from d2tls.core.dtls.config import ClientAuth, ClientConfig, ServerConfig
from d2tls.core.dtls.constants import AlertDescription
from d2tls.core.dtls.events import ConnectionTerminated, HandshakeCompleted
from d2tls.core.dtls.session import Session
from d2tls.core.errors import CertificateError, ConfigurationError
from d2tls.core.pki.revocation import ClientRevocations
from d2tls.core.pki.verdict_cache import VerdictCache, chain_digest
from d2tls.core.pki.verify import load_certificate_chain, load_private_key, load_trust_store
from openssl_pki import DEVICE_EXT, Identity, OpenSSLPKI, openssl
from test_interop import InProcessServer
from test_resume_without_cookie import run_client, udp_socket

SERVER_NAME = "localhost"


@pytest.fixture(scope="module")
def opki(tmp_path_factory: pytest.TempPathFactory) -> OpenSSLPKI:
    return OpenSSLPKI(tmp_path_factory.mktemp("openssl-pki"))


def chain_of(identity: Identity) -> tuple[bytes, ...]:
    return tuple(load_certificate_chain(identity.cert))


def not_after(identity: Identity) -> float:
    cert = x509.load_pem_x509_certificate(identity.cert.read_bytes())
    return cert.not_valid_after_utc.timestamp()


def revoke_and_publish(opki: OpenSSLPKI, revoked: Identity, name: str) -> Path:
    """``openssl ca -revoke`` the certificate, then ``openssl ca -gencrl``: the CRL file."""
    config = opki._ca_db(name)
    ca = ["-config", str(config), "-cert", str(opki.ca.cert), "-keyfile", str(opki.ca.key)]
    openssl("ca", *ca, "-revoke", str(revoked.cert), "-crl_reason", "keyCompromise", cwd=opki.dir)
    crl = opki.dir / f"{name}.crl.pem"
    openssl("ca", *ca, "-gencrl", "-crldays", "1", "-out", str(crl), cwd=opki.dir)
    return crl


# --------------------------------------------------------------------------- the cache itself


def test_acceptance_is_cached_per_chain(opki: OpenSSLPKI) -> None:
    store = load_trust_store(opki.ca.cert)
    cache = VerdictCache()
    now = time.time()
    path = cache.verify(chain_of(opki.device), store, now)
    assert path[0].subject.rfc4514_string() == "CN=sensor-42"
    assert path[-1].subject.rfc4514_string() == "CN=Test Device CA"  # the trust anchor
    assert (cache.hits, cache.misses) == (0, 1)
    assert cache.verify(chain_of(opki.device), store, now + 1) == path
    assert (cache.hits, cache.misses) == (1, 1)
    assert chain_digest(chain_of(opki.device)) != chain_digest(chain_of(opki.server))


def test_refusals_are_not_cached(opki: OpenSSLPKI) -> None:
    cache = VerdictCache()
    store = load_trust_store(opki.other_ca.cert)
    for _ in range(2):
        with pytest.raises(CertificateError) as caught:
            cache.verify(chain_of(opki.device), store, time.time())
        assert caught.value.alert is AlertDescription.UNKNOWN_CA
    assert len(cache) == 0 and cache.misses == 2


def test_another_trust_store_empties_the_cache(opki: OpenSSLPKI) -> None:
    """The trust-store version is the immutable Store object: a reload is a new one."""
    cache = VerdictCache()
    now = time.time()
    cache.verify(chain_of(opki.device), load_trust_store(opki.ca.cert), now)
    reloaded = load_trust_store(opki.ca.cert)  # same content, new version
    cache.verify(chain_of(opki.device), reloaded, now)
    assert (cache.hits, cache.misses, cache.store_changes) == (0, 2, 1)
    without_ca = load_trust_store(opki.other_ca.cert)
    with pytest.raises(CertificateError):
        cache.verify(chain_of(opki.device), without_ca, now)
    assert len(cache) == 0 and cache.store_changes == 2


def test_entry_expires_after_max_age(opki: OpenSSLPKI) -> None:
    store = load_trust_store(opki.ca.cert)
    cache = VerdictCache(max_age=60.0)
    now = time.time()
    cache.verify(chain_of(opki.device), store, now)
    cache.verify(chain_of(opki.device), store, now + 59.0)
    cache.verify(chain_of(opki.device), store, now + 60.0)
    assert (cache.hits, cache.misses) == (1, 2)


def test_entry_expires_at_the_earliest_not_after(opki: OpenSSLPKI) -> None:
    """Past the device certificate's notAfter the cached acceptance is gone, and the chain
    is refused as expired (the max age alone would have kept it)."""
    store = load_trust_store(opki.ca.cert)
    cache = VerdictCache(max_age=10 * 365 * 86400.0)
    cache.verify(chain_of(opki.device), store, time.time())
    expiry = min(not_after(opki.device), not_after(opki.ca))
    cache.verify(chain_of(opki.device), store, expiry - 1)
    assert cache.hits == 1
    with pytest.raises(CertificateError) as caught:
        cache.verify(chain_of(opki.device), store, expiry + 1)
    assert caught.value.alert is AlertDescription.CERTIFICATE_EXPIRED
    assert len(cache) == 0


def test_least_recently_used_entry_is_dropped(opki: OpenSSLPKI) -> None:
    store = load_trust_store(opki.ca.cert)
    devices = [opki.issue(f"lru-{i}", f"lru-{i}", DEVICE_EXT) for i in range(3)]
    cache = VerdictCache(max_entries=2)
    now = time.time()
    cache.verify(chain_of(devices[0]), store, now)
    cache.verify(chain_of(devices[1]), store, now)
    cache.verify(chain_of(devices[0]), store, now)  # 0 is now the most recently used
    cache.verify(chain_of(devices[2]), store, now)  # evicts 1
    assert len(cache) == 2
    misses = cache.misses
    cache.verify(chain_of(devices[0]), store, now)
    assert cache.misses == misses
    cache.verify(chain_of(devices[1]), store, now)
    assert cache.misses == misses + 1


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError):
        VerdictCache(max_entries=0)
    with pytest.raises(ConfigurationError):
        ServerConfig(verdict_cache_size=-1).validate()


# --------------------------------------------------------------------------- CRLs


def test_crl_from_openssl_revokes_by_issuer_and_serial(opki: OpenSSLPKI) -> None:
    device = opki.issue("crl-unit", "sensor-crl", DEVICE_EXT)
    crl = revoke_and_publish(opki, device, "crl-unit")
    revocations = ClientRevocations.load([crl], opki.ca.cert)
    assert len(revocations) == 1
    cert = x509.load_pem_x509_certificate(device.cert.read_bytes())
    other = x509.load_pem_x509_certificate(opki.device.cert.read_bytes())
    assert revocations.revoked([cert]) == cert
    assert revocations.revoked([other]) is None


def test_crl_signed_by_an_untrusted_ca_is_refused(opki: OpenSSLPKI, tmp_path: Path) -> None:
    device = opki.issue("crl-forged", "sensor-forged", DEVICE_EXT)
    crl = revoke_and_publish(opki, device, "crl-forged")
    with pytest.raises(ConfigurationError, match="not among the trusted CAs"):
        ClientRevocations.load([crl], opki.other_ca.cert)
    with pytest.raises(ConfigurationError, match="not signed by"):
        ClientRevocations.load([crl], opki.forged_ca.cert)  # same name, other key


# --------------------------------------------------------------------------- over real UDP


def server_config(opki: OpenSSLPKI, **overrides: Any) -> ServerConfig:
    settings: dict[str, Any] = {
        "certificate_chain": load_certificate_chain(opki.server.cert),
        "private_key": load_private_key(opki.server.key),
        "trust_store": load_trust_store(opki.ca.cert),
        "client_auth": ClientAuth.REQUIRED,
    }
    settings.update(overrides)
    return ServerConfig(**settings)


def full_config(opki: OpenSSLPKI, device: Identity) -> ClientConfig:
    return ClientConfig(
        trust_store=load_trust_store(opki.ca.cert),
        server_name=SERVER_NAME,
        certificate_chain=load_certificate_chain(device.cert),
        private_key=load_private_key(device.key),
    )


def resume_config(session: Session) -> ClientConfig:
    return ClientConfig(
        cipher_suites=(session.cipher_suite,),
        server_name=SERVER_NAME,
        session=session,
        resume_only=True,
    )


def handshake(config: ClientConfig, port: int) -> HandshakeCompleted | ConnectionTerminated:
    with udp_socket() as sock:
        return run_client(DTLSClient(config), sock, port)[0]


@pytest.fixture
def device(opki: OpenSSLPKI, request: pytest.FixtureRequest) -> Identity:
    """A fresh device certificate per test (revoking it must not affect other tests)."""
    name = f"dev-{request.node.name}".replace("[", "-").replace("]", "")
    return opki.issue(name, name, DEVICE_EXT)


@pytest.fixture
def server(opki: OpenSSLPKI) -> Iterator[InProcessServer]:
    with InProcessServer(server_config(opki)) as running:
        yield running


def established_session(server: InProcessServer, opki: OpenSSLPKI, device: Identity) -> Session:
    """A full handshake, then two resumptions: the second uses the cached verdict."""
    done = handshake(full_config(opki, device), server.port)
    assert isinstance(done, HandshakeCompleted) and not done.resumed, done
    for _ in range(2):
        again = handshake(resume_config(done.session), server.port)
        assert isinstance(again, HandshakeCompleted) and again.resumed, again
    verdicts = server.engine.verdicts
    assert (verdicts.misses, verdicts.hits) == (1, 1)
    return done.session


def test_revoked_device_cannot_resume(
    opki: OpenSSLPKI, server: InProcessServer, device: Identity
) -> None:
    session = established_session(server, opki, device)
    crl = revoke_and_publish(opki, device, f"udp-{device.cert.stem}")
    server.engine.config.revocations = ClientRevocations.load([crl], opki.ca.cert)

    refused = handshake(resume_config(session), server.port)
    assert isinstance(refused, ConnectionTerminated) and refused.error, refused
    assert "resum" in (refused.reason or ""), refused  # the server offered a full handshake
    assert server.engine.verdicts.hits == 2  # the cached acceptance did not save it

    full = handshake(full_config(opki, device), server.port)
    assert isinstance(full, ConnectionTerminated), full
    assert full.by_peer and full.alert is AlertDescription.CERTIFICATE_REVOKED, full

    other = handshake(full_config(opki, opki.device), server.port)  # not revoked
    assert isinstance(other, HandshakeCompleted), other


def test_device_cannot_resume_once_its_ca_is_removed(
    opki: OpenSSLPKI, server: InProcessServer, device: Identity
) -> None:
    session = established_session(server, opki, device)
    server.engine.config.trust_store = load_trust_store(opki.other_ca.cert)  # CA removed

    refused = handshake(resume_config(session), server.port)
    assert isinstance(refused, ConnectionTerminated) and refused.error, refused
    assert server.engine.verdicts.store_changes == 1
    assert len(server.engine.verdicts) == 0

    full = handshake(full_config(opki, device), server.port)
    assert isinstance(full, ConnectionTerminated), full
    assert full.by_peer and full.alert is AlertDescription.UNKNOWN_CA, full


def test_cache_off_verifies_every_resumption(opki: OpenSSLPKI, device: Identity) -> None:
    with InProcessServer(server_config(opki, verdict_cache_size=0)) as running:
        done = handshake(full_config(opki, device), running.port)
        assert isinstance(done, HandshakeCompleted)
        for _ in range(2):
            again = handshake(resume_config(done.session), running.port)
            assert isinstance(again, HandshakeCompleted) and again.resumed
        assert (running.engine.verdicts.hits, running.engine.verdicts.misses) == (0, 0)


def test_cli_server_refuses_a_certificate_its_crl_revokes(
    opki: OpenSSLPKI, device: Identity
) -> None:
    """``d2tls server --crl`` (a CRL from ``openssl ca -gencrl``) refuses the revoked device."""
    from test_interop import CLIServer

    crl = revoke_and_publish(opki, device, f"cli-{device.cert.stem}")
    argv = ["--cert", str(opki.server.cert), "--key", str(opki.server.key)]
    argv += ["--ca", str(opki.ca.cert), "--require-client-cert", "--crl", str(crl)]
    with CLIServer(*argv) as running:
        refused = handshake(full_config(opki, device), running.port)
        assert isinstance(refused, ConnectionTerminated), refused
        assert refused.alert is AlertDescription.CERTIFICATE_REVOKED, refused
        accepted = handshake(full_config(opki, opki.device), running.port)
        assert isinstance(accepted, HandshakeCompleted), accepted
