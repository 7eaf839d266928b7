"""Sessions are bound to what resumption must not change, whatever the store (issue 8, point 2).

RFC 5246 §7.4.1.2 (cipher suite), RFC 7627 §5.3 (extended master secret), RFC 6066 §3 (SNI) and
the client identity: an abbreviated handshake carries no certificate, so the resumed connection
inherits the identity of the full handshake that made the session — in D2TLS, the device's
certificate that the agent presented. The server resumes only if that identity is still one it
accepts (same trust store, certificate valid, PSK identity still configured, client
authentication still satisfied); otherwise it runs a full handshake. Engines run in the
simulated network; the stores are real (SQLite file, real redis-server).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import SERVER_NAME, LoadedPKI, Run, client_config, server_config
from d2tls.core.dtls.config import ClientAuth
from d2tls.core.dtls.constants import CipherSuite
from d2tls.core.dtls.events import HandshakeCompleted
from d2tls.core.dtls.server import DTLSServer
from d2tls.core.dtls.session import Session, SessionStore
from d2tls.core.store import open_store
from d2tls.lab.redis_server import RedisServer
from test_store import KEYS, raw_entries, start_redis, write_raw

CCM8 = CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8
GCM = CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.close()


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sessions.db'}"
    server: RedisServer = request.getfixturevalue("redis_server")
    return f"{server.url()}?prefix=binding-{uuid.uuid4().hex}:"


def completed(events: list[object]) -> HandshakeCompleted:
    done = [e for e in events if isinstance(e, HandshakeCompleted)]
    assert len(done) == 1, events
    return done[0]


def full_handshake(pki: LoadedPKI, server: DTLSServer) -> Session:
    run = Run(server.config, client_config(pki), server=server)
    run.handshake()
    assert run.both_established(), run.client_events
    session = completed(run.client_events).session
    run.client.close()
    run.settle()
    return session


def resume(pki: LoadedPKI, server: DTLSServer, session: Session) -> tuple[Run, HandshakeCompleted]:
    run = Run(
        server.config,
        client_config(pki, session=session),
        server=server,
        address=("198.51.100.9", 50009),
    )
    run.handshake()
    assert run.both_established(), (run.client_events, run.server_events)
    server_done = completed(run.server_events)
    assert completed(run.client_events).resumed == server_done.resumed
    return run, server_done


def test_another_instance_resumes_with_the_same_identity(pki: LoadedPKI, store_url: str) -> None:
    """Instance X runs the full handshake (the agent, with the device's certificate); instance Y,
    another store object on the same backend, resumes it and sees the same client identity."""
    first = DTLSServer(server_config(pki, session_store=open_store(store_url, None, keys=KEYS)))
    session = full_handshake(pki, first)
    second_store = (
        first.config.session_store
        if store_url == "memory://"
        else open_store(store_url, None, keys=KEYS)
    )
    second = DTLSServer(server_config(pki, session_store=second_store))
    run, done = resume(pki, second, session)
    assert done.resumed and done.session.session_id == session.session_id
    connection = second.connection(run.address)
    assert connection is not None
    assert connection.peer_certificates == pki.device.chain
    assert connection.peer_subject() == "CN=device-1,O=d2tls"


def stored_and_client_copy(**stored_fields: object) -> tuple[Session, Session]:
    """A session as the server stores it (with ``stored_fields``) and the client's copy."""
    import os

    settings: dict[str, object] = {
        "session_id": os.urandom(32),
        "master_secret": bytearray(os.urandom(48)),
        "cipher_suite": CCM8,
        "extended_master_secret": True,
        "server_name": SERVER_NAME,
    }
    settings.update(stored_fields)
    stored = Session(**settings)  # type: ignore[arg-type]
    client_copy = Session(
        session_id=stored.session_id,
        master_secret=bytearray(stored.master_secret),
        cipher_suite=stored.cipher_suite,
        extended_master_secret=True,
        server_name=SERVER_NAME,
    )
    return stored, client_copy


def binding_cases(pki: LoadedPKI) -> dict[str, dict[str, object]]:
    device = pki.device.chain
    return {
        "same everything (control)": {"peer_certificates": device},
        "changed SNI": {"peer_certificates": device, "server_name": "other.example"},
        "no SNI in the original session": {"peer_certificates": device, "server_name": None},
        "no EMS in the original session": {
            "peer_certificates": device,
            "extended_master_secret": False,
        },
        "cipher suite no longer accepted": {"peer_certificates": device, "cipher_suite": GCM},
        "client certificate from another CA": {
            "peer_certificates": pki.issue(
                "device-x", client=True, names=("device-x.local",), other_ca=True
            ).chain
        },
        "expired client certificate": {
            "peer_certificates": pki.issue(
                "device-y", client=True, names=("device-y.local",), expired=True
            ).chain
        },
        "no client certificate, server requires one": {"peer_certificates": ()},
        "PSK identity no longer configured": {"psk_identity": b"removed-device"},
    }


CASES = [
    "same everything (control)",
    "changed SNI",
    "no SNI in the original session",
    "no EMS in the original session",
    "cipher suite no longer accepted",
    "client certificate from another CA",
    "expired client certificate",
    "no client certificate, server requires one",
    "PSK identity no longer configured",
]


@pytest.mark.parametrize("case", CASES)
def test_resumption_is_refused_unless_the_binding_matches(
    pki: LoadedPKI, store_url: str, case: str
) -> None:
    store = open_store(store_url, None, keys=KEYS)
    stored, client_copy = stored_and_client_copy(**binding_cases(pki)[case])
    store.put(stored)
    server = DTLSServer(server_config(pki, session_store=store, cipher_suites=(CCM8,)))
    _, done = resume(pki, server, client_copy)
    if case.endswith("(control)"):
        assert done.resumed
        return
    # A full handshake instead, with a new session (the client authenticates itself again).
    assert not done.resumed
    assert done.session.session_id != stored.session_id
    assert done.session.peer_certificates == pki.device.chain


def test_unauthenticated_session_resumes_where_client_certificates_are_not_required(
    pki: LoadedPKI, store_url: str
) -> None:
    store = open_store(store_url, None, keys=KEYS)
    stored, client_copy = stored_and_client_copy(peer_certificates=())
    store.put(stored)
    server = DTLSServer(server_config(pki, session_store=store, client_auth=ClientAuth.OPTIONAL))
    _, done = resume(pki, server, client_copy)
    assert done.resumed


@pytest.mark.parametrize("store_url", ["sqlite", "redis"], indirect=True)
def test_corrupt_entry_makes_the_server_run_a_full_handshake(
    pki: LoadedPKI, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(store_url, None, keys=KEYS)
    server = DTLSServer(server_config(pki, session_store=store))
    session = full_handshake(pki, server)
    entry = raw_entries(store)[session.session_id]
    write_raw(store, session.session_id, entry[:30] + bytes([entry[30] ^ 1]) + entry[31:])
    with caplog.at_level(logging.WARNING, logger="d2tls.core.store"):
        _, done = resume(pki, server, session)
    assert not done.resumed
    assert "unusable entry" in caplog.text
    assert bytes(session.master_secret).hex() not in caplog.text


def test_memory_store_still_used_by_default(pki: LoadedPKI) -> None:
    store: SessionStore = server_config(pki).session_store
    assert type(store).__name__ == "MemorySessionStore"
