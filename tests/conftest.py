"""Shared fixtures: one temporary test PKI per session and builders of engine configurations.

Everything here is deterministic except key generation (fresh P-256 keys per test session),
which no test depends on. Handshakes run in :class:`d2tls.sim.Simulation` on a virtual clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from cryptography.x509.verification import Store

from d2tls.core.dtls.client import DTLSClient
from d2tls.core.dtls.config import ClientAuth, ClientConfig, ServerConfig
from d2tls.core.dtls.connection import Connection
from d2tls.core.dtls.constants import CipherSuite
from d2tls.core.dtls.events import (
    ApplicationDataReceived,
    ConnectionTerminated,
    Event,
    HandshakeCompleted,
)
from d2tls.core.dtls.server import DTLSServer
from d2tls.core.pki.generate import PKIPaths, init_pki, issue_certificate
from d2tls.core.pki.verify import load_certificate_chain, load_private_key, load_trust_store
from d2tls.sim import SERVER_ADDRESS, Impairments, Simulation, Tap

SERVER_NAME = "localhost"
CLIENT_ADDRESS = ("198.51.100.7", 50000)
PSK_IDENTITY = b"device-1"
PSK_KEY = bytes(range(32))


@dataclass(frozen=True)
class Identity:
    """A certificate chain (DER, leaf first) and its private key."""

    chain: tuple[bytes, ...]
    key: ec.EllipticCurvePrivateKey

    def __repr__(self) -> str:
        return f"Identity({self.leaf.subject.rfc4514_string()})"

    @property
    def leaf(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.chain[0])


@dataclass(frozen=True)
class LoadedPKI:
    """The loaded test PKI: trust stores, the server identity and device identities."""

    paths: PKIPaths
    ca_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    other_ca_cert: x509.Certificate
    other_ca_key: ec.EllipticCurvePrivateKey
    store: Store
    other_store: Store
    server: Identity
    device: Identity

    def __repr__(self) -> str:  # keep hypothesis and pytest reports readable
        return f"LoadedPKI({self.paths.directory})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis' pretty printer
        printer.text(repr(self))

    def issue(
        self,
        common_name: str,
        *,
        client: bool,
        names: tuple[str, ...],
        other_ca: bool = False,
        expired: bool = False,
    ) -> Identity:
        """Issue a fresh certificate from the test CA (or the unrelated one)."""
        ca_cert, ca_key = (
            (self.other_ca_cert, self.other_ca_key) if other_ca else (self.ca_cert, self.ca_key)
        )
        window: dict[str, Any] = {}
        if expired:
            now = datetime.now(UTC)
            window = {"not_before": now - timedelta(days=30), "not_after": now - timedelta(days=1)}
        cert, key = issue_certificate(
            ca_cert, ca_key, common_name, server_names=names, client=client, **window
        )
        return Identity((cert.public_bytes(Encoding.DER),), key)


@pytest.fixture(autouse=True)
def strict_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test fails on an engine bug: an exception the engine would catch and turn into
    an internal_error termination in production propagates instead."""
    monkeypatch.setattr(Connection, "raise_internal_errors", True)


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LoadedPKI:
    """A complete test PKI made once per test session with :func:`init_pki`."""
    paths = init_pki(tmp_path_factory.mktemp("pki"), server_name=SERVER_NAME, devices=1)
    device = paths.devices[0]
    return LoadedPKI(
        paths=paths,
        ca_cert=x509.load_pem_x509_certificate(paths.ca_cert.read_bytes()),
        ca_key=_load_key(paths.ca_key),
        other_ca_cert=x509.load_pem_x509_certificate(paths.other_ca_cert.read_bytes()),
        other_ca_key=_load_key(paths.other_ca_key),
        store=load_trust_store(paths.ca_cert),
        other_store=load_trust_store(paths.other_ca_cert),
        server=Identity(
            tuple(load_certificate_chain(paths.server_chain)), load_private_key(paths.server_key)
        ),
        device=Identity(tuple(load_certificate_chain(device.cert)), load_private_key(device.key)),
    )


def server_config(pki: LoadedPKI, **overrides: Any) -> ServerConfig:
    """A server with the test server identity that requires client certificates."""
    settings: dict[str, Any] = {
        "certificate_chain": pki.server.chain,
        "private_key": pki.server.key,
        "trust_store": pki.store,
        "client_auth": ClientAuth.REQUIRED,
    }
    settings.update(overrides)
    return ServerConfig(**settings)


def client_config(pki: LoadedPKI, **overrides: Any) -> ClientConfig:
    """A client that trusts the test CA and authenticates as device-1."""
    settings: dict[str, Any] = {
        "trust_store": pki.store,
        "server_name": SERVER_NAME,
        "certificate_chain": pki.device.chain,
        "private_key": pki.device.key,
    }
    settings.update(overrides)
    return ClientConfig(**settings)


def psk_server_config(**overrides: Any) -> ServerConfig:
    settings: dict[str, Any] = {
        "cipher_suites": (CipherSuite.TLS_PSK_WITH_AES_128_CCM_8,),
        "psk_keys": {PSK_IDENTITY: PSK_KEY},
    }
    settings.update(overrides)
    return ServerConfig(**settings)


def psk_client_config(**overrides: Any) -> ClientConfig:
    settings: dict[str, Any] = {
        "cipher_suites": (CipherSuite.TLS_PSK_WITH_AES_128_CCM_8,),
        "psk_identity": PSK_IDENTITY,
        "psk": PSK_KEY,
        "server_name": SERVER_NAME,
    }
    settings.update(overrides)
    return ClientConfig(**settings)


class Run:
    """One client and one server in a :class:`Simulation`, with event helpers."""

    def __init__(
        self,
        server_cfg: ServerConfig,
        client_cfg: ClientConfig,
        *,
        seed: int = 0,
        impairments: Impairments | None = None,
        tap: Tap | None = None,
        address: tuple[str, int] = CLIENT_ADDRESS,
        server: DTLSServer | None = None,
    ) -> None:
        self.server = server if server is not None else DTLSServer(server_cfg)
        self.client = DTLSClient(client_cfg)
        self.address = address
        self.sim = Simulation(self.server, seed=seed, impairments=impairments, tap=tap)
        self.sim.add_client(self.client, address)

    # ---------------------------------------------------------------- driving
    def handshake(self, max_time: float = 600.0) -> None:
        """Connect and run until both sides are established or something ended."""
        self.sim.connect(self.address)
        self.run(lambda: self.both_established() or self.any_terminated(), max_time)

    def run(self, until: Callable[[], bool] | None = None, max_time: float = 600.0) -> None:
        self.sim.run(until, max_time=max_time)

    def settle(self, seconds: float = 1.0) -> None:
        """Deliver everything in flight for ``seconds`` of virtual time."""
        deadline = self.sim.now + seconds
        self.sim.run(lambda: self.sim.now >= deadline, max_time=deadline)

    def both_established(self) -> bool:
        conn = self.server.connection(self.address)
        return (
            (self.client.is_established and conn is not None and conn.is_established)
            and bool(self.completed(self.server_events))
            and bool(self.completed(self.client_events))
        )

    def any_terminated(self) -> bool:
        return bool(self.terminated(self.client_events) or self.terminated(self.server_events))

    def send_to_server(self, data: bytes) -> None:
        self.client.send_application_data(data)
        self.sim.flush()

    def send_to_client(self, data: bytes) -> None:
        self.server.send_application_data(self.address, data)
        self.sim.flush()

    # ---------------------------------------------------------------- events
    @property
    def client_events(self) -> list[Event]:
        return self.sim.events[self.address]

    @property
    def server_events(self) -> list[Event]:
        return self.sim.server_events

    @staticmethod
    def completed(events: list[Event]) -> list[HandshakeCompleted]:
        return [e for e in events if isinstance(e, HandshakeCompleted)]

    @staticmethod
    def terminated(events: list[Event]) -> list[ConnectionTerminated]:
        return [e for e in events if isinstance(e, ConnectionTerminated)]

    @staticmethod
    def received(events: list[Event]) -> list[bytes]:
        return [e.data for e in events if isinstance(e, ApplicationDataReceived)]


__all__ = [
    "CLIENT_ADDRESS",
    "PSK_IDENTITY",
    "PSK_KEY",
    "SERVER_ADDRESS",
    "SERVER_NAME",
    "Identity",
    "LoadedPKI",
    "Run",
    "client_config",
    "psk_client_config",
    "psk_server_config",
    "server_config",
]
