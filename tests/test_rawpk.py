"""RFC 7250 raw public keys: negotiation (§4), the Certificate carrying a SubjectPublicKeyInfo
(§3), hostile keys, and interop with GnuTLS over real UDP in both directions.

Keys for the interop tests are made with the ``openssl`` CLI, not by us.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from conftest import SERVER_NAME, LoadedPKI, Run, client_config, server_config
from d2tls.core.dtls.client import DTLSClient
from d2tls.core.dtls.config import ClientAuth, ClientConfig, ServerConfig
from d2tls.core.dtls.constants import (
    AlertDescription,
    CertificateType,
    ContentType,
    ExtensionType,
    HandshakeType,
)
from d2tls.core.dtls.fragments import parse_handshake_fragments
from d2tls.core.dtls.messages import (
    Certificate,
    ClientHello,
    RawPublicKeyCertificate,
    ServerHello,
)
from d2tls.core.dtls.rawpk import fingerprint, load_spki_file, spki_of
from d2tls.core.dtls.record import parse_datagram
from d2tls.core.dtls.server import ServerConnection
from d2tls.core.errors import ConfigurationError
from d2tls.lab.peers import (
    GNUTLS_RAWPK_PRIORITY,
    GnuTLSClient,
    GnuTLSServer,
    free_udp_port,
    require_tool,
)

SERVER_KEY = ec.generate_private_key(ec.SECP256R1())
CLIENT_KEY = ec.generate_private_key(ec.SECP256R1())
SERVER_SPKI = spki_of(SERVER_KEY)
CLIENT_SPKI = spki_of(CLIENT_KEY)


def rpk_server(**overrides: Any) -> ServerConfig:
    settings: dict[str, Any] = {
        "raw_private_key": SERVER_KEY,
        "trusted_client_keys": frozenset({CLIENT_SPKI}),
        "client_auth": ClientAuth.REQUIRED,
    }
    settings.update(overrides)
    return ServerConfig(**settings)


def rpk_client(**overrides: Any) -> ClientConfig:
    settings: dict[str, Any] = {
        "server_name": SERVER_NAME,
        "trusted_server_keys": frozenset({SERVER_SPKI}),
        "private_key": CLIENT_KEY,
        "client_raw_public_key": CLIENT_SPKI,
    }
    settings.update(overrides)
    return ClientConfig(**settings)


class Recorder:
    """A tap that keeps every handshake message (type, body) each side sent."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, bytes]] = []

    def __call__(self, source: Any, destination: Any, data: bytes) -> list[bytes]:
        records, _ = parse_datagram(data)
        for record in records:
            if record.content_type == ContentType.HANDSHAKE and record.epoch == 0:
                for fragment in parse_handshake_fragments(record.fragment):
                    self.messages.append((fragment.msg_type, fragment.body))
        return [data]

    def last(self, msg_type: int) -> bytes:
        return [body for t, body in self.messages if t == msg_type][-1]


def client_alert(run: Run) -> AlertDescription | None:
    run.settle(2.0)  # the peer's alert may still be in flight
    ended = run.terminated(run.client_events)
    assert ended, run.client_events
    return ended[0].alert


def server_alert(run: Run) -> AlertDescription | None:
    run.settle(2.0)
    ended = run.terminated(run.server_events)
    assert ended, run.server_events
    return ended[0].alert


# --------------------------------------------------------------------------- negotiation


def test_raw_public_keys_both_ways_then_resumed() -> None:
    tap = Recorder()
    run = Run(rpk_server(), rpk_client(), tap=tap)
    run.handshake()
    assert run.both_established(), run.client_events + run.server_events
    hello = ClientHello.decode(tap.last(HandshakeType.CLIENT_HELLO))
    assert hello.server_certificate_types == (CertificateType.RAW_PUBLIC_KEY,)
    assert hello.client_certificate_types == (CertificateType.RAW_PUBLIC_KEY,)
    server_hello = ServerHello.decode(tap.last(HandshakeType.SERVER_HELLO))
    assert server_hello.server_certificate_type == CertificateType.RAW_PUBLIC_KEY
    assert server_hello.client_certificate_type == CertificateType.RAW_PUBLIC_KEY
    certificates = [b for t, b in tap.messages if t == HandshakeType.CERTIFICATE]
    assert [RawPublicKeyCertificate.decode(b).subject_public_key_info for b in certificates] == [
        SERVER_SPKI,
        CLIENT_SPKI,
    ]
    assert run.client.peer_raw_public_key == SERVER_SPKI
    assert run.client.peer_certificates == ()
    connection = run.server.connection(run.address)
    assert connection is not None
    assert connection.peer_raw_public_key == CLIENT_SPKI
    assert connection.peer_subject() == f"rawpk {fingerprint(CLIENT_SPKI)}"
    run.send_to_server(b"over a raw key")
    run.settle()
    assert run.received(run.server_events) == [b"over a raw key"]
    # Resumption: the session remembers the client's raw key, accepted while it is trusted.
    session = run.client.session
    assert session is not None
    again = Run(
        rpk_server(), rpk_client(session=session), server=run.server, address=("198.51.100.8", 1)
    )
    again.handshake()
    assert again.both_established()
    assert again.completed(again.client_events)[0].resumed


def test_resumption_refused_once_the_client_key_is_no_longer_trusted() -> None:
    run = Run(rpk_server(), rpk_client())
    run.handshake()
    assert run.both_established()
    run.server.config.trusted_client_keys = frozenset(
        {spki_of(ec.generate_private_key(ec.SECP256R1()))}
    )
    again = Run(
        rpk_server(),
        rpk_client(session=run.client.session),
        server=run.server,
        address=("198.51.100.8", 2),
    )
    again.handshake()
    # Not resumed: a full handshake, where the client's key is refused.
    assert not again.completed(again.client_events)
    assert server_alert(again) == AlertDescription.CERTIFICATE_UNKNOWN


def test_key_lookup_callback_is_the_trust_hook() -> None:
    asked: list[str | None] = []

    def lookup(name: str | None) -> bytes | None:
        asked.append(name)
        return SERVER_SPKI if name == SERVER_NAME else None

    run = Run(rpk_server(), rpk_client(trusted_server_keys=frozenset(), server_key_lookup=lookup))
    run.handshake()
    assert run.both_established()
    assert asked == [SERVER_NAME]
    wrong = Run(
        rpk_server(),
        rpk_client(trusted_server_keys=frozenset(), server_key_lookup=lambda _: CLIENT_SPKI),
    )
    wrong.handshake()
    assert client_alert(wrong) == AlertDescription.CERTIFICATE_UNKNOWN
    assert "not trusted" in run.terminated(wrong.client_events)[0].reason


def test_untrusted_server_key_is_certificate_unknown() -> None:
    run = Run(rpk_server(raw_private_key=ec.generate_private_key(ec.SECP256R1())), rpk_client())
    run.handshake()
    assert client_alert(run) == AlertDescription.CERTIFICATE_UNKNOWN
    run.settle()
    assert server_alert(run) == AlertDescription.CERTIFICATE_UNKNOWN
    assert run.terminated(run.server_events)[0].by_peer


def test_untrusted_client_key_is_certificate_unknown() -> None:
    run = Run(rpk_server(trusted_client_keys=frozenset({SERVER_SPKI})), rpk_client())
    run.handshake()
    assert server_alert(run) == AlertDescription.CERTIFICATE_UNKNOWN
    assert client_alert(run) == AlertDescription.CERTIFICATE_UNKNOWN


def test_server_with_both_picks_the_clients_preference(pki: LoadedPKI) -> None:
    """RFC 7250 §4.2: the server picks from the client's list in the client's order."""
    both = server_config(pki, raw_private_key=SERVER_KEY, client_auth=ClientAuth.NONE)
    tap = Recorder()
    run = Run(both, rpk_client(trust_store=pki.store), tap=tap)
    run.handshake()
    assert run.both_established()
    assert run.client.peer_raw_public_key == SERVER_SPKI
    # Without the extension the client gets the X.509 chain (absent list: X.509).
    plain = Run(both, client_config(pki), tap=(tap := Recorder()))
    plain.handshake()
    assert plain.both_established()
    assert plain.client.peer_certificates == pki.server.chain
    assert ServerHello.decode(tap.last(HandshakeType.SERVER_HELLO)).server_certificate_type is None


def test_x509_only_server_answers_a_mixed_list_with_x509(pki: LoadedPKI) -> None:
    tap = Recorder()
    run = Run(
        server_config(pki, client_auth=ClientAuth.NONE), rpk_client(trust_store=pki.store), tap=tap
    )
    run.handshake()
    assert run.both_established()
    server_hello = ServerHello.decode(tap.last(HandshakeType.SERVER_HELLO))
    assert server_hello.server_certificate_type == CertificateType.X509
    assert run.client.peer_certificates == pki.server.chain


@pytest.mark.parametrize(
    ("server", "client"),
    [
        # the client can only validate raw keys; the server has only a certificate
        ("x509", "rawpk"),
        # the server has only a raw key; the client sends no list (X.509 assumed, §4.1)
        ("rawpk", "x509"),
        # the server requires a raw client key; the client has only a certificate
        ("rawpk-client-required", "x509-client"),
    ],
)
def test_no_type_in_common_is_unsupported_certificate(
    pki: LoadedPKI, server: str, client: str
) -> None:
    servers = {
        "x509": server_config(pki, client_auth=ClientAuth.NONE),
        "rawpk": rpk_server(client_auth=ClientAuth.NONE),
        "rawpk-client-required": server_config(
            pki, raw_private_key=SERVER_KEY, trust_store=None, trusted_client_keys={CLIENT_SPKI}
        ),
    }
    clients = {
        "rawpk": rpk_client(client_raw_public_key=None, private_key=None),
        "x509": client_config(pki),
        "x509-client": client_config(pki, trusted_server_keys=frozenset({SERVER_SPKI})),
    }
    run = Run(servers[server], clients[client])
    run.handshake()
    assert not run.completed(run.client_events)
    assert server_alert(run) == AlertDescription.UNSUPPORTED_CERTIFICATE
    assert client_alert(run) == AlertDescription.UNSUPPORTED_CERTIFICATE


def test_optional_client_auth_without_common_type(pki: LoadedPKI) -> None:
    """No client type in common and optional client authentication: no client_certificate_type
    in the ServerHello (X.509 assumed); a client without a certificate goes unauthenticated,
    one that sends an X.509 certificate is refused (only raw keys are trusted)."""
    config = rpk_server(client_auth=ClientAuth.OPTIONAL)
    anonymous = client_config(
        pki,
        trust_store=None,
        trusted_server_keys={SERVER_SPKI},
        certificate_chain=(),
        private_key=None,
    )
    run = Run(config, anonymous)
    run.handshake()
    assert run.both_established()
    connection = run.server.connection(run.address)
    assert connection is not None and connection.peer_raw_public_key is None
    assert connection.peer_certificates == ()
    certified = Run(config, client_config(pki, trust_store=None, trusted_server_keys={SERVER_SPKI}))
    certified.handshake()
    assert server_alert(certified) == AlertDescription.UNSUPPORTED_CERTIFICATE


def test_server_choosing_a_type_we_did_not_offer_is_illegal_parameter(
    pki: LoadedPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ServerConnection, "_negotiate_certificate_types", lambda self: None)
    both = server_config(pki, raw_private_key=SERVER_KEY, client_auth=ClientAuth.NONE)
    run = Run(both, rpk_client())  # the server answers X.509 to a RawPublicKey-only list
    run.handshake()
    assert client_alert(run) == AlertDescription.ILLEGAL_PARAMETER
    assert "did not offer" in run.terminated(run.client_events)[0].reason


def test_configuration_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="raw public keys"):
        ClientConfig(server_name="x").validate()
    with pytest.raises(ConfigurationError, match="not the key of private_key"):
        rpk_client(client_raw_public_key=SERVER_SPKI).validate()
    with pytest.raises(ConfigurationError, match="P-256"):
        rpk_client(
            trusted_server_keys={spki_of(ec.generate_private_key(ec.SECP384R1()))}
        ).validate()
    with pytest.raises(ConfigurationError, match="raw key must be ECDSA P-256"):
        rpk_server(raw_private_key=ec.generate_private_key(ec.SECP384R1())).validate()
    with pytest.raises(ConfigurationError, match="trusted raw keys"):
        rpk_server(trusted_client_keys=frozenset()).validate()


# --------------------------------------------------------------------------- hostile keys


@dataclass(frozen=True)
class RawBody:
    """A Certificate with an arbitrary body (a hostile peer)."""

    msg_type: ClassVar[HandshakeType] = HandshakeType.CERTIFICATE
    body: bytes

    def encode(self) -> bytes:
        return self.body


def _spki_body(spki: bytes) -> bytes:
    return len(spki).to_bytes(3, "big") + spki


def _hostile_body(kind: str, pki: LoadedPKI) -> bytes:
    if kind == "truncated":  # RFC 7250 §3 framing broken: the length says more than there is
        return b"\x00\x00\x40\x30\x59"
    if kind == "not-spki":  # well framed, but no SubjectPublicKeyInfo
        return _spki_body(b"\x30\x03\x02\x01\x01")
    if kind == "x509-list":  # an X.509 certificate_list where a raw key was negotiated
        return Certificate(pki.server.chain).encode()
    if kind == "p384":
        return _spki_body(spki_of(ec.generate_private_key(ec.SECP384R1())))
    assert kind == "ed25519"
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return _spki_body(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))


HOSTILE = {
    "truncated": AlertDescription.DECODE_ERROR,
    "not-spki": AlertDescription.BAD_CERTIFICATE,
    "x509-list": AlertDescription.BAD_CERTIFICATE,
    "p384": AlertDescription.UNSUPPORTED_CERTIFICATE,
    "ed25519": AlertDescription.UNSUPPORTED_CERTIFICATE,
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_server_key_gets_the_right_alert(
    pki: LoadedPKI, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = _hostile_body(kind, pki)
    monkeypatch.setattr(
        ServerConnection, "_build_certificate", lambda self: self._queue_handshake(RawBody(body))
    )
    run = Run(rpk_server(), rpk_client())
    run.handshake()
    assert client_alert(run) == HOSTILE[kind]
    assert not run.completed(run.client_events)


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_client_key_gets_the_right_alert(
    pki: LoadedPKI, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = _hostile_body(kind, pki)
    monkeypatch.setattr(
        DTLSClient, "_build_certificate", lambda self: self._queue_handshake(RawBody(body))
    )
    run = Run(rpk_server(), rpk_client())
    run.handshake()
    assert server_alert(run) == HOSTILE[kind]
    assert run.server.counters().internal_errors == 0


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00", b"\x02\x02", b"\x01\x02\x00"],
    ids=["empty", "empty-list", "short-list", "trailing"],
)
def test_malformed_certificate_type_list_is_decode_error(data: bytes) -> None:
    class BadHello(DTLSClient):
        def _certificate_type_extensions(self) -> list[Any]:
            from d2tls.core.dtls.messages import Extension

            return [Extension(ExtensionType.SERVER_CERTIFICATE_TYPE, data)]

    run = Run(rpk_server(client_auth=ClientAuth.NONE), rpk_client())
    run.client = BadHello(rpk_client())
    run.sim.remove(run.address)
    run.sim.add_client(run.client, run.address)
    run.handshake()
    assert client_alert(run) == AlertDescription.DECODE_ERROR


# --------------------------------------------------------------------------- real peers


@dataclass(frozen=True)
class KeyFiles:
    """P-256 key pairs made by the openssl CLI: PEM private key and PEM public key."""

    server_key: Path
    server_pub: Path
    client_key: Path
    client_pub: Path
    other_pub: Path


def _openssl_key(directory: Path, name: str) -> tuple[Path, Path]:
    openssl = require_tool("openssl")
    key, pub = directory / f"{name}.key", directory / f"{name}.pub"
    subprocess.run(
        [
            openssl,
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            str(key),
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [openssl, "pkey", "-in", str(key), "-pubout", "-out", str(pub)],
        check=True,
        capture_output=True,
    )
    return key, pub


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyFiles:
    directory = tmp_path_factory.mktemp("rawpk")
    server_key, server_pub = _openssl_key(directory, "server")
    client_key, client_pub = _openssl_key(directory, "client")
    _, other_pub = _openssl_key(directory, "other")
    return KeyFiles(server_key, server_pub, client_key, client_pub, other_pub)


def _fingerprint_of(pub: Path) -> str:
    return fingerprint(load_spki_file(pub)[0])


def d2tls_client(port: int, *args: str, namespace: Any = None) -> dict[str, Any]:
    """``d2tls client --json`` (inside ``namespace`` if given): one JSON line, no traceback."""
    argv = [sys.executable, "-m", "d2tls.cli", "client", f"127.0.0.1:{port}", "--json"]
    argv += ["--timeout", "8", *args]
    if namespace is not None:
        proc = namespace.run(argv, timeout=30)
    else:
        proc = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert "Traceback" not in out + err, err
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    assert proc.returncode == (0 if result["ok"] else 1)
    return result


@pytest.fixture(scope="module")
def gnutls_rpk_server(keys: KeyFiles) -> Iterator[GnuTLSServer]:
    """An unmodified RPK server: gnutls-serv --rawpkfile/--rawpkkeyfile (ignores TwinPeaks)."""
    with GnuTLSServer(
        rawpk=(keys.server_pub, keys.server_key),
        client_auth="none",
        priority=GNUTLS_RAWPK_PRIORITY,
    ) as server:
        yield server


def test_our_client_to_gnutls_rawpk_server(keys: KeyFiles, gnutls_rpk_server: GnuTLSServer) -> None:
    result = d2tls_client(
        gnutls_rpk_server.port,
        "--trust-rawpk",
        str(keys.server_pub),
        "--send",
        "rpk-to-gnutls",
        namespace=gnutls_rpk_server.namespace,
    )
    assert result["ok"], result
    assert result["cipher"] == "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8"
    assert result["peer_raw_public_key"] == _fingerprint_of(keys.server_pub)
    assert result["peer_certificate_subject"] is None
    assert result["received"] == "rpk-to-gnutls"  # gnutls-serv --echo
    assert gnutls_rpk_server.wait_for("command: rpk-to-gnutls"), gnutls_rpk_server.output()


class CLIServer:
    """``d2tls server`` as a subprocess on the host loopback."""

    def __init__(self, *args: str) -> None:
        self.port = free_udp_port()
        argv = [sys.executable, "-m", "d2tls.cli", "server", "--listen", f"127.0.0.1:{self.port}"]
        self.process = subprocess.Popen(
            [*argv, "--echo", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.lines: list[str] = []
        assert self.wait_for("listening on"), self.lines

    def wait_for(self, pattern: str, timeout: float = 15.0) -> bool:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(re.search(pattern, line) for line in self.lines):
                return True
            line = self.process.stdout.readline()
            if not line:
                return False
            self.lines.append(line.decode())
        return False

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def our_rpk_server(keys: KeyFiles) -> Iterator[CLIServer]:
    server = CLIServer(
        "--rawpk-key",
        str(keys.server_key),
        "--trust-rawpk",
        str(keys.client_pub),
        "--require-client-cert",
    )
    yield server
    server.stop()


def test_gnutls_rawpk_client_to_our_server(keys: KeyFiles, our_rpk_server: CLIServer) -> None:
    """gnutls-cli has no way to pin a raw key (only TOFU), hence --insecure; our server
    checks the client's key against --trust-rawpk."""
    result = GnuTLSClient(
        our_rpk_server.port,
        rawpk=(keys.client_pub, keys.client_key),
        priority=GNUTLS_RAWPK_PRIORITY,
        insecure=True,
    ).run(b"gnutls-rpk-echo\n", expect=b"gnutls-rpk-echo")
    assert result.handshake_ok, result.text
    assert "Raw Public Key" in (result.description or ""), result.description
    assert "Certificate type: Raw Public Key" in result.text
    assert b"gnutls-rpk-echo" in result.stdout
    expected = f"client=rawpk {_fingerprint_of(keys.client_pub)}"
    assert our_rpk_server.wait_for(re.escape(expected)), our_rpk_server.lines


def test_our_server_refuses_an_untrusted_gnutls_rawpk_client(
    keys: KeyFiles, tmp_path: Path
) -> None:
    other_key, other_pub = _openssl_key(tmp_path, "stranger")
    server = CLIServer(
        "--rawpk-key",
        str(keys.server_key),
        "--trust-rawpk",
        str(keys.client_pub),
        "--require-client-cert",
    )
    try:
        result = GnuTLSClient(
            server.port, rawpk=(other_pub, other_key), priority=GNUTLS_RAWPK_PRIORITY, insecure=True
        ).run(b"no\n", linger=0.5)
        assert not result.handshake_ok
        assert server.wait_for("alert certificate_unknown"), server.lines
    finally:
        server.stop()


def test_our_client_against_our_cli_server_with_raw_keys(
    keys: KeyFiles, our_rpk_server: CLIServer
) -> None:
    result = d2tls_client(
        our_rpk_server.port,
        "--trust-rawpk",
        str(keys.server_pub),
        "--rawpk-key",
        str(keys.client_key),
        "--send",
        "cli-rpk",
    )
    assert result["ok"] and result["received"] == "cli-rpk", result
    refused = d2tls_client(
        our_rpk_server.port,
        "--trust-rawpk",
        str(keys.other_pub),
        "--rawpk-key",
        str(keys.client_key),
    )
    assert not refused["ok"]
    assert refused["alert"] == "certificate_unknown" and not refused["alert_from_peer"]


def test_openssl_30_has_no_raw_public_keys() -> None:
    """OpenSSL supports RFC 7250 only from 3.2 (``-enable_server_rpk``); Debian's 3.0 does
    not, so there is no OpenSSL interop test. This fails once OpenSSL gains it."""
    openssl = require_tool("openssl")
    version = subprocess.run([openssl, "version"], capture_output=True, text=True).stdout
    help_text = subprocess.run(
        [openssl, "s_server", "-help"], capture_output=True, text=True
    ).stderr
    assert "rpk" not in help_text.lower(), f"{version}: s_server now has raw public keys"
    assert version.startswith("OpenSSL 3.0"), version
