"""The TwinPeaks handshake (spec/twinpeaks.md §9): a server whose raw key is a TwinPeaks member
key (d2tls.core.twinpeaks.clpkc), the ClientHello extension with name, address and
h(public key || params), the server's per-field refusals, and the outdated-key recovery.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass, replace
from typing import Any

import pytest

from conftest import Run
from d2tls.core.dtls.client import DTLSClient
from d2tls.core.dtls.config import ClientAuth, ClientConfig, ServerConfig
from d2tls.core.dtls.constants import AlertDescription, ContentType, ExtensionType, HandshakeType
from d2tls.core.dtls.events import TwinPeaksRefused
from d2tls.core.dtls.fragments import parse_handshake_fragments
from d2tls.core.dtls.messages import ClientHello, Extension, ServerHello, TwinPeaksHello
from d2tls.core.dtls.rawpk import spki_of
from d2tls.core.dtls.record import parse_datagram
from d2tls.core.dtls.server import DTLSServer
from d2tls.core.dtls.twinpeaks import (
    KeyCache,
    OutdatedPublicKey,
    ResolvedKey,
    WrongServerAddress,
    WrongServerName,
    key_hash,
    raw_public_key,
    refusal_error,
    server_identity,
)
from d2tls.core.errors import DecodeError, IllegalParameter
from d2tls.core.model.spec import load_spec
from d2tls.core.twinpeaks import clpkc
from d2tls.core.twinpeaks.clpkc import FullPrivateKey, MasterKey
from d2tls.lab.diagram import to_dot
from d2tls.net.udp import ClientEndpoint, ConnectionFailed, ServerEndpoint

NAME = "printer1.floor2.building1.com"
ADDRESS = "192.0.2.1"  # d2tls.sim.SERVER_ADDRESS


def enrol(master: MasterKey, name: str = NAME, address: str = ADDRESS) -> FullPrivateKey:
    """The CL-PKC enrolment of spec/twinpeaks.md §4: a member of the KGC gets its full key."""
    params = master.params
    secret = clpkc.set_secret_value(params, params.identity(name, address))
    partial = clpkc.extract_partial_private_key(master, secret.request())
    return clpkc.set_private_key(params, secret, partial)


@pytest.fixture(scope="module")
def master() -> MasterKey:
    return clpkc.setup("building1.com")


@pytest.fixture(scope="module")
def member(master: MasterKey) -> FullPrivateKey:
    return enrol(master)


class KeyServer:
    """Stands for the key-server hierarchy: answers lookups with the member's current key,
    counting them (the cache in front of it must go back to it after an outdated key)."""

    def __init__(self, master: MasterKey, key: FullPrivateKey) -> None:
        self.master = master
        self.key = key
        self.lookups = 0

    def lookup(self, name: str) -> ResolvedKey:
        self.lookups += 1
        assert name == self.key.identity.name
        # The resolver validates the binding before handing the key out (spec/twinpeaks.md §5).
        clpkc.check_binding(self.master.params, self.key.public_key, self.key.q)
        return ResolvedKey(self.master.params, self.key.public_key)


def twinpeaks_server(key: FullPrivateKey, **overrides: Any) -> ServerConfig:
    settings: dict[str, Any] = {
        "raw_private_key": key.to_cryptography(),
        "twinpeaks": server_identity(key),
        "client_auth": ClientAuth.NONE,
    }
    settings.update(overrides)
    return ServerConfig(**settings)


def base_client() -> ClientConfig:
    """A client that trusts no CA: only the key TwinPeaks gives it."""
    return ClientConfig(server_name=NAME, server_key_lookup=lambda _: None)


# --------------------------------------------------------------------------- the extension


def test_extension_round_trip_and_binding(member: FullPrivateKey) -> None:
    hello = server_identity(member)
    assert hello.host_name == NAME
    assert hello.address == ipaddress.ip_address(ADDRESS).packed
    assert hello.key_hash == key_hash(member.params, member.public_key)
    assert TwinPeaksHello.decode(hello.encode()) == hello
    # h(public key || params) changes with the key and with the params.
    other = enrol(clpkc.setup("building1.com"))
    assert key_hash(other.params, other.public_key) != hello.key_hash
    # The raw key the server presents is Q = [sk]G, derived by anyone from (params, ID, X).
    assert raw_public_key(member.params, member.public_key) == spki_of(member.to_cryptography())
    v6 = TwinPeaksHello(NAME, ipaddress.ip_address("2001:db8::1").packed, bytes(32))
    assert TwinPeaksHello.decode(v6.encode()) == v6


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", DecodeError),
        (b"\x00" + bytes(4) + bytes(32), DecodeError),  # empty name
        (b"\x01a\x05" + bytes(5) + bytes(32), DecodeError),  # 5-byte address
        (b"\x01a\x04" + bytes(4) + bytes(31), DecodeError),  # short hash
        (b"\x01a\x04" + bytes(4) + bytes(33), DecodeError),  # trailing byte
        (b"\x01A\x04" + bytes(4) + bytes(32), IllegalParameter),  # not normalised
        (b"\x01\xff\x04" + bytes(4) + bytes(32), IllegalParameter),  # not ASCII
    ],
)
def test_malformed_extension_is_refused(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        TwinPeaksHello.decode(data)


def hellos(run: Run) -> list[ClientHello]:
    out = []
    for source, _, data in run.sim.delivered:
        if source != run.address:
            continue
        records, _ = parse_datagram(data)
        for record in records:
            if record.content_type == ContentType.HANDSHAKE and record.epoch == 0:
                for fragment in parse_handshake_fragments(record.fragment):
                    if fragment.msg_type == HandshakeType.CLIENT_HELLO:
                        out.append(ClientHello.decode(fragment.body))
    return out


# --------------------------------------------------------------------------- handshakes


def test_twinpeaks_handshake_with_a_member_key(master: MasterKey, member: FullPrivateKey) -> None:
    """End to end: the client resolves the server's key through TwinPeaks, pins it, sends the
    extension; the server, whose raw key pair is the member's (sk, Q), checks it."""
    keys = KeyServer(master, member)
    cache = KeyCache(keys.lookup)
    run = Run(twinpeaks_server(member), cache.client_config(NAME, base_client()))
    run.handshake()
    assert run.both_established(), run.client_events + run.server_events
    assert run.client.peer_raw_public_key == spki_of(member.to_cryptography())
    sent = hellos(run)
    assert len(sent) == 2  # the cookie exchange repeats it (RFC 6347 §4.2.1)
    assert all(h.twinpeaks == server_identity(member) for h in sent)
    run.send_to_server(b"twinpeaks")
    run.settle()
    assert run.received(run.server_events) == [b"twinpeaks"]
    assert (keys.lookups, cache.misses, cache.hits) == (1, 1, 0)


def test_server_without_twinpeaks_identity_ignores_the_extension(
    member: FullPrivateKey, master: MasterKey
) -> None:
    """An RPK server that knows nothing of TwinPeaks (like gnutls-serv) ignores it."""
    cache = KeyCache(KeyServer(master, member).lookup)
    run = Run(twinpeaks_server(member, twinpeaks=None), cache.client_config(NAME, base_client()))
    run.handshake()
    assert run.both_established()


@dataclass(frozen=True)
class Case:
    server_name: str
    server_address: str
    alert: AlertDescription
    refusal: str
    error: type[Exception]


CASES = {
    "name": Case(
        "scanner.floor2.building1.com",
        ADDRESS,
        AlertDescription.UNRECOGNIZED_NAME,
        "name",
        WrongServerName,
    ),
    "address": Case(
        NAME, "192.0.2.99", AlertDescription.ILLEGAL_PARAMETER, "address", WrongServerAddress
    ),
}


@pytest.mark.parametrize("field", sorted(CASES))
def test_wrong_field_gets_the_alert_that_names_it(master: MasterKey, field: str) -> None:
    """The server is another member (other name or other address): it refuses the client's
    extension with the alert of that field; the client reports a typed refusal."""
    case = CASES[field]
    client_side = enrol(master)  # what the client looked up
    server_side = enrol(master, case.server_name, case.server_address)
    cache = KeyCache(KeyServer(master, client_side).lookup)
    run = Run(twinpeaks_server(server_side), cache.client_config(NAME, base_client()))
    run.handshake()
    run.settle(2.0)
    assert not run.completed(run.client_events)
    (ended,) = run.terminated(run.client_events)
    assert isinstance(ended, TwinPeaksRefused), ended
    assert (ended.alert, ended.refusal, ended.by_peer) == (case.alert, case.refusal, True)
    error = refusal_error(ended)
    assert isinstance(error, case.error), error
    (refused,) = run.terminated(run.server_events)
    assert refused.alert == case.alert and not refused.by_peer
    assert run.server.connection_count == 0  # refused before any state was kept
    assert run.client.next_timer() is None  # an ended client retransmits nothing
    assert not isinstance(cache.handle_failure(NAME, ended), OutdatedPublicKey)
    assert cache.expected_key(NAME) is not None  # only an outdated key drops the entry


def test_outdated_key_is_reported_and_recovers_after_a_fresh_lookup(master: MasterKey) -> None:
    """Dissertation 2.4.4: the server's key changed since the client cached it. The server
    says "outdated public key" (certificate_unknown); the client invalidates its cached key,
    looks it up again and the next handshake succeeds."""
    old = enrol(master)
    keys = KeyServer(master, old)
    cache = KeyCache(keys.lookup)
    cache.resolve(NAME)  # cached before the server re-enrolled
    new = enrol(master)
    keys.key = new
    server = DTLSServer(twinpeaks_server(new))
    first = Run(ServerConfig(), cache.client_config(NAME, base_client()), server=server)
    first.handshake()
    first.settle(2.0)
    (ended,) = first.terminated(first.client_events)
    assert isinstance(ended, TwinPeaksRefused)
    assert (ended.alert, ended.refusal) == (AlertDescription.CERTIFICATE_UNKNOWN, "outdated_key")
    assert "outdated public key" in ended.reason
    error = cache.handle_failure(NAME, ended)
    assert isinstance(error, OutdatedPublicKey)
    assert cache.expected_key(NAME) is None  # invalidated
    second = Run(
        ServerConfig(),
        cache.client_config(NAME, base_client()),
        server=server,
        address=("198.51.100.8", 50001),
    )
    second.handshake()
    assert second.both_established()
    assert second.client.peer_raw_public_key == spki_of(new.to_cryptography())
    assert keys.lookups == 2


def test_stale_pinned_key_without_the_extension_fails_on_the_key(master: MasterKey) -> None:
    """Without the extension an outdated key is only found at the Certificate: the client
    refuses the server's (new) key as untrusted."""
    old, new = enrol(master), enrol(master)
    config = ClientConfig(server_name=NAME, trusted_server_keys={spki_of(old.to_cryptography())})
    run = Run(twinpeaks_server(new), config)
    run.handshake()
    run.settle(2.0)
    (ended,) = run.terminated(run.client_events)
    assert not isinstance(ended, TwinPeaksRefused)
    assert ended.alert == AlertDescription.CERTIFICATE_UNKNOWN and not ended.by_peer


def test_malformed_extension_from_a_client_is_decode_error(member: FullPrivateKey) -> None:
    class Garbling(DTLSClient):
        def _build_client_hello(self) -> None:
            self.config = replace(self.config, twinpeaks=None)
            super()._build_client_hello()

        def _queue_handshake(self, message: Any) -> Any:
            if isinstance(message, ClientHello):
                bad = Extension(ExtensionType.TWINPEAKS, b"\x01a\x05" + bytes(37))
                message = replace(message, extensions=(*message.extensions, bad))
            return super()._queue_handshake(message)

    config = ClientConfig(server_name=NAME, trusted_server_keys={spki_of(member.to_cryptography())})
    run = Run(twinpeaks_server(member), config)
    run.client = Garbling(config)
    run.sim.remove(run.address)
    run.sim.add_client(run.client, run.address)
    run.handshake()
    run.settle(2.0)
    (ended,) = run.terminated(run.client_events)
    assert ended.alert == AlertDescription.DECODE_ERROR and ended.by_peer
    assert run.server.counters().internal_errors == 0


def test_server_never_sends_the_extension(master: MasterKey, member: FullPrivateKey) -> None:
    cache = KeyCache(KeyServer(master, member).lookup)
    run = Run(twinpeaks_server(member), cache.client_config(NAME, base_client()))
    run.handshake()
    for source, _, data in run.sim.delivered:
        if source == run.address:
            continue
        records, _ = parse_datagram(data)
        for record in records:
            if record.content_type == ContentType.HANDSHAKE and record.epoch == 0:
                for fragment in parse_handshake_fragments(record.fragment):
                    if fragment.msg_type == HandshakeType.SERVER_HELLO:
                        hello = ServerHello.decode(fragment.body)
                        assert hello.extension(ExtensionType.TWINPEAKS) is None


# --------------------------------------------------------------------------- real UDP


def test_twinpeaks_over_udp_loopback_with_recovery(master: MasterKey) -> None:
    """Our client and server over real UDP sockets on 127.0.0.1: a stale cached key fails
    with OutdatedPublicKey, the retry after a fresh lookup connects."""
    old, new = enrol(master, NAME, "127.0.0.1"), enrol(master, NAME, "127.0.0.1")
    keys = KeyServer(master, old)
    cache = KeyCache(keys.lookup)
    cache.resolve(NAME)
    keys.key = new

    async def scenario() -> tuple[str | None, bytes]:
        server = DTLSServer(twinpeaks_server(new))
        endpoint = await ServerEndpoint.listen("127.0.0.1", 0, server, echo=True)
        assert endpoint.address is not None
        port = endpoint.address[1]
        try:
            outcome = None
            for _ in range(2):
                client = DTLSClient(cache.client_config(NAME, base_client()))
                connection = await ClientEndpoint.connect("127.0.0.1", port, client)
                try:
                    await connection.handshake(timeout=10)
                except ConnectionFailed as failed:
                    error = cache.handle_failure(NAME, failed.terminated)
                    outcome = type(error).__name__
                    await connection.close()
                    continue
                connection.send(b"over udp")
                echoed = await connection.receive(timeout=10)
                await connection.close()
                return outcome, echoed
            raise AssertionError("no handshake succeeded")
        finally:
            endpoint.close()

    outcome, echoed = asyncio.run(scenario())
    assert outcome == "OutdatedPublicKey"
    assert echoed == b"over udp"
    assert keys.lookups == 2


# --------------------------------------------------------------------------- the spec


@pytest.mark.parametrize(
    ("role", "guards"),
    [
        ("dtls_client", ("server_sent_raw_public_key", "twinpeaks_refused")),
        ("dtls_server", ("client_sent_raw_public_key", "twinpeaks_hello_mismatch")),
    ],
)
def test_spec_transitions_are_drawn(role: str, guards: tuple[str, ...]) -> None:
    """The TwinPeaks and RFC 7250 transitions are in spec/dtls.yaml and on the diagram."""
    spec_role = load_spec("dtls").role(role)
    dot = to_dot(spec_role)
    for guard in guards:
        assert any(guard in t.guards for t in spec_role.transitions), guard
        assert f"[{guard}" in dot or f", {guard}" in dot, guard
