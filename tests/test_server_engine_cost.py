"""The server engine's cost cuts (issue 23) keep every check: one cookie HMAC per ClientHello,
a handler table bound on use that still names every handler of the spec, the DER shape test
before a raw-key parse, the fast refusal of datagrams that cannot be a new ClientHello, and
the public-key operations the engine counts."""

from __future__ import annotations

import os
import random
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from conftest import LoadedPKI, client_config, server_config
from d2tls.core.dtls import server as server_module
from d2tls.core.dtls.client import DTLSClient
from d2tls.core.dtls.connection import Connection
from d2tls.core.dtls.constants import ContentType, HandshakeType
from d2tls.core.dtls.events import HandshakeCompleted
from d2tls.core.dtls.fragments import parse_handshake_fragments
from d2tls.core.dtls.messages import ClientHello
from d2tls.core.dtls.record import parse_datagram
from d2tls.core.dtls.server import CookieJar, DTLSServer, ServerConnection
from d2tls.core.errors import D2TLSError
from d2tls.core.model.spec import load_spec
from d2tls.sim import Simulation

CLIENT = ("198.51.100.30", 40000)


def _handshake(
    server: DTLSServer, pki: LoadedPKI, address: tuple[str, int], **extra: Any
) -> HandshakeCompleted:
    client = DTLSClient(client_config(pki, **extra))
    sim = Simulation(server)
    sim.add_client(client, address)
    sim.connect(address)
    sim.run(lambda: client.is_established, max_time=60)
    done = [e for e in sim.events[address] if isinstance(e, HandshakeCompleted)]
    assert done, f"no handshake (client state {client.state})"
    return done[0]


@pytest.mark.parametrize("resume", [False, True])
def test_one_cookie_hmac_per_client_hello(
    pki: LoadedPKI, monkeypatch: pytest.MonkeyPatch, resume: bool
) -> None:
    """The spec evaluates cookie_valid in several transitions of one ClientHello; the HMAC is
    checked once per ClientHello (the first, cookie-less one is refused without hashing)."""
    server = DTLSServer(server_config(pki))
    session = _handshake(server, pki, ("198.51.100.30", 39999)).session
    checked: list[bytes] = []
    hashed: list[bytes] = []
    original_check, original_material = CookieJar.check, CookieJar._material

    def check(self: CookieJar, peer: Any, hello: ClientHello, now: float) -> bool:
        checked.append(hello.cookie)
        return original_check(self, peer, hello, now)

    def material(peer: Any, hello: ClientHello) -> bytes:
        hashed.append(hello.cookie)
        return original_material(peer, hello)

    monkeypatch.setattr(CookieJar, "check", check)
    monkeypatch.setattr(CookieJar, "_material", staticmethod(material))
    done = _handshake(server, pki, CLIENT, **({"session": session} if resume else {}))
    assert done.resumed is resume
    assert len(checked) == 2 and checked[0] == b"" and len(checked[1]) == 32
    # _material: once to make the cookie (HelloVerifyRequest), once to check it.
    assert len(hashed) == 2 and hashed[0] == b"" and hashed[1] == checked[1]


def test_a_forged_cookie_is_still_refused(pki: LoadedPKI) -> None:
    jar = CookieJar(rotation=60.0)
    hello = ClientHello(0xFEFD, os.urandom(32), b"", b"", (0xC0AE,), (0,))
    good = jar.make(CLIENT, hello, 0.0)
    for cookie in (good[:-1] + bytes([good[-1] ^ 1]), good[:16], good + b"\0", b"x" * 32):
        forged = ClientHello(0xFEFD, hello.random, b"", cookie, (0xC0AE,), (0,))
        assert not jar.check(CLIENT, forged, 0.0)
    assert jar.check(CLIENT, ClientHello(0xFEFD, hello.random, b"", good, (0xC0AE,), (0,)), 0.0)


def test_the_bound_on_use_table_names_every_handler_and_binds_lazily(pki: LoadedPKI) -> None:
    connection = ServerConnection(server_config(pki), CLIENT, CookieJar(rotation=60.0))
    shared = Connection._table_with(connection, {}, {}, {})
    names = connection._table.names()
    role = load_spec().role("dtls_server")
    assert names.guards == frozenset(role.guards())
    assert names.actions == frozenset(role.actions())
    assert names.builders == frozenset(role.built_messages())
    assert set(shared.actions) <= names.actions and set(shared.builders) <= names.builders
    guards = connection._table.guards
    assert isinstance(guards, server_module._BoundOnUse) and guards._bound == {}
    assert guards["cookie_valid"] is guards["cookie_valid"]  # bound once, then reused
    assert set(guards._bound) == {"cookie_valid"}
    assert connection._table.builders["Finished"].__func__ is Connection._build_finished  # type: ignore[attr-defined]
    with pytest.raises(KeyError):
        guards["no_such_guard"]


def test_raw_public_key_shape_test(pki: LoadedPKI) -> None:
    spki = pki.device.key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    certificate = pki.device.chain[0]
    assert server_module._is_raw_public_key((spki,))
    assert not server_module._is_raw_public_key((certificate,))
    assert not server_module._is_raw_public_key((*pki.device.chain, spki))
    rng = random.Random(5)
    for data in [b"", b"\x30", b"\x30\x82", spki[:5], certificate[:40]] + [
        bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80))) for _ in range(300)
    ]:
        assert not server_module._is_raw_public_key((data,)) or data == spki


def test_new_client_hello_fast_refusal_agrees_with_the_parse(pki: LoadedPKI) -> None:
    """The header check before parsing gives the full parse's answer on every datagram."""

    def parsed(data: bytes) -> bool:  # the function as it was before the header check
        records, _ = parse_datagram(data)
        if not records or records[0].content_type != ContentType.HANDSHAKE:
            return False
        if records[0].epoch != 0:
            return False
        try:
            fragments = parse_handshake_fragments(records[0].fragment)
        except D2TLSError:
            return False
        return bool(fragments) and fragments[0].msg_type == HandshakeType.CLIENT_HELLO

    client = DTLSClient(client_config(pki))
    client.remote = CLIENT
    client.connect(0.0)
    hello = client.datagrams_to_send(0.0)[0][0]
    rng = random.Random(7)
    samples = [hello, hello[:12], hello[:13], b"", bytes(13)]
    for _ in range(3000):
        data = bytearray(hello if rng.random() < 0.7 else os.urandom(rng.randrange(60)))
        for _ in range(rng.randrange(3)):
            if data:
                data[rng.randrange(min(len(data), 30))] = rng.randrange(256)
        samples.append(bytes(data))
    assert server_module._is_initial_client_hello(hello)
    for data in samples:
        assert server_module._is_initial_client_hello(data) == parsed(data), data.hex()


def test_the_engine_counts_its_public_key_operations(pki: LoadedPKI) -> None:
    server = DTLSServer(server_config(pki))
    full = _handshake(server, pki, CLIENT)
    stats = server.connection(CLIENT).stats  # type: ignore[union-attr]
    links = len(pki.device.chain)
    assert (stats["sign"], stats["verify"], stats["ecdh"], stats["keygen"]) == (1, links + 1, 1, 1)
    # The first resumption verifies the stored chain (a verdict-cache miss: a full handshake
    # validates the chain it receives without the cache); the next one is a cache hit.
    for port, verified in ((40001, links), (40002, 0)):
        assert _handshake(server, pki, ("198.51.100.30", port), session=full.session).resumed
        stats = server.connection(("198.51.100.30", port)).stats  # type: ignore[union-attr]
        assert (stats["sign"], stats["verify"], stats["ecdh"], stats["keygen"]) == (
            0,
            verified,
            0,
            0,
        )
