"""The third-party peer wrappers work with the real tools and the init_pki certificates.

These tests never skip: a missing openssl/gnutls-serv/gnutls-cli or a forbidden ``ip netns``
is a failure (run scripts/setup.sh, as root).
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import TypedDict

import pytest
from cryptography import x509

from d2tls.core.dtls.constants import CipherSuite
from d2tls.core.pki import (
    PKIPaths,
    init_pki,
    issue_certificate,
    load_private_key,
    load_psk_file,
    write_pem_certificate,
    write_pem_private_key,
)
from d2tls.lab.peers import (
    GNUTLS_SUITE_PRIORITY,
    OPENSSL_SUITE_NAMES,
    WOLFSSL_ONLY_SUITES,
    GnuTLSClient,
    GnuTLSServer,
    NetNamespace,
    OpenSSLClient,
    OpenSSLServer,
    free_udp_port,
    require_tool,
)

pytestmark = pytest.mark.interop

#: The suites the OpenSSL and GnuTLS tools share (not the wolfSSL-only RFC 8442 one, tested in
#: tests/test_ecdhe_psk_interop.py).
SUITES = [s for s in CipherSuite if s not in WOLFSSL_ONLY_SUITES]
PSK_SUITE = CipherSuite.TLS_PSK_WITH_AES_128_CCM_8
#: Suites keyed by the PSK alone (no certificates): plain PSK and ECDHE-PSK (RFC 5489).
PSK_KEYED_SUITES = {PSK_SUITE, CipherSuite.TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256}
#: gnutls-cli 3.7.9 dies with SIGSEGV in a DTLS 1.2 ECDHE-PSK handshake (right after the
#: ServerKeyExchange, against s_server and gnutls-serv alike), so it is left out as a client;
#: gnutls-serv serves ECDHE-PSK fine (test_openssl_client_to_gnutls_server).
GNUTLS_CLI_SUITES = [
    s for s in SUITES if s != CipherSuite.TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256
]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKIPaths:
    return init_pki(tmp_path_factory.mktemp("pki"), devices=2)


@pytest.fixture(scope="module")
def psk(pki: PKIPaths) -> tuple[bytes, bytes]:
    return b"device-1", load_psk_file(pki.psk_file)[b"device-1"]


@pytest.fixture(scope="module")
def rogue(pki: PKIPaths) -> tuple[Path, Path]:
    """A client certificate issued by the unrelated CA."""
    ca = x509.load_pem_x509_certificate(pki.other_ca_cert.read_bytes())
    cert, key = issue_certificate(
        ca, load_private_key(pki.other_ca_key), "rogue", server_names=["rogue.invalid"], client=True
    )
    cert_path, key_path = pki.directory / "rogue.pem", pki.directory / "rogue.key"
    write_pem_certificate(cert_path, cert)
    write_pem_private_key(key_path, key)
    return cert_path, key_path


class Credentials(TypedDict, total=False):
    cert: Path
    key: Path
    ca: Path
    psk: tuple[bytes, bytes]


def client_credentials(pki: PKIPaths, suite: CipherSuite, psk: tuple[bytes, bytes]) -> Credentials:
    if suite in PSK_KEYED_SUITES:
        return {"psk": psk}
    return {"cert": pki.devices[0].cert, "key": pki.devices[0].key, "ca": pki.ca_cert}


def device_credentials(pki: PKIPaths) -> Credentials:
    return {"cert": pki.devices[0].cert, "key": pki.devices[0].key, "ca": pki.ca_cert}


def openssl_server(pki: PKIPaths, suite: CipherSuite, psk: tuple[bytes, bytes]) -> OpenSSLServer:
    if suite in PSK_KEYED_SUITES:
        return OpenSSLServer(psk=psk, client_auth="none", cipher=OPENSSL_SUITE_NAMES[suite])
    return OpenSSLServer(
        cert=pki.server_cert,
        key=pki.server_key,
        ca=pki.ca_cert,
        cipher=OPENSSL_SUITE_NAMES[suite],
    )


def gnutls_server(
    pki: PKIPaths, *, psk_hint: str | None = None, tickets: bool = True, port: int = 5684
) -> GnuTLSServer:
    return GnuTLSServer(
        cert=pki.server_cert,
        key=pki.server_key,
        ca=pki.ca_cert,
        psk_file=pki.psk_file,
        psk_hint=psk_hint,
        tickets=tickets,
        port=port,
    )


# --------------------------------------------------------------------------- basics


@pytest.mark.parametrize("tool", ["openssl", "gnutls-serv", "gnutls-cli", "certtool", "ip"])
def test_tool_is_installed(tool: str) -> None:
    assert Path(require_tool(tool)).is_file()


def test_free_udp_port() -> None:
    port = free_udp_port()
    assert 1024 <= port <= 65535
    assert free_udp_port("::1") > 0


def test_net_namespace_isolation_and_cleanup() -> None:
    with NetNamespace() as ns:
        links = ns.run(["ip", "-o", "link", "show"]).stdout.decode()
        assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]
        assert "UP" in links
        sleeper = ns.popen(["sleep", "60"])
        deadline = time.monotonic() + 10  # `ip netns exec` needs a moment to enter and exec
        while not ns.pids() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ns.pids() == [sleeper.pid]
    assert sleeper.wait(timeout=5) != 0
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert ns.name not in listed


# --------------------------------------------------------------------------- OpenSSL server


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.name)
def test_openssl_client_to_openssl_server(
    pki: PKIPaths, psk: tuple[bytes, bytes], suite: CipherSuite
) -> None:
    with openssl_server(pki, suite, psk) as server:
        result = OpenSSLClient(
            server.port,
            verify_hostname=None if suite in PSK_KEYED_SUITES else "localhost",
            cipher=OPENSSL_SUITE_NAMES[suite],
            **client_credentials(pki, suite, psk),
        ).run(b"ping-openssl\n", linger=0.5)
        assert result.handshake_ok, result.text
        assert result.suite == suite
        assert not result.resumed
        assert server.wait_for("ping-openssl"), server.output()
        assert "verify error" not in server.output()


def test_openssl_server_sends_data(pki: PKIPaths, psk: tuple[bytes, bytes]) -> None:
    with openssl_server(pki, CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8, psk) as server:

        def reply() -> None:
            if server.wait_for("hello-server", 8):
                server.send(b"hello-client\n")

        thread = threading.Thread(target=reply)
        thread.start()
        result = OpenSSLClient(
            server.port, cert=pki.devices[1].cert, key=pki.devices[1].key, ca=pki.ca_cert
        ).run(b"hello-server\n", expect=b"hello-client", timeout=10)
        thread.join()
        assert result.handshake_ok, result.text
        assert b"hello-client" in result.stdout


@pytest.mark.parametrize("tickets", [False, True], ids=["session-id", "ticket"])
def test_openssl_server_resumption(pki: PKIPaths, tmp_path: Path, tickets: bool) -> None:
    session = tmp_path / "session.pem"
    with OpenSSLServer(
        cert=pki.server_cert, key=pki.server_key, ca=pki.ca_cert, no_ticket=not tickets
    ) as server:
        common = device_credentials(pki)
        first = OpenSSLClient(server.port, sess_out=session, **common).run(b"one\n", linger=0.5)
        assert first.handshake_ok and not first.resumed, first.text
        second = OpenSSLClient(server.port, sess_in=session, **common).run(b"two\n", linger=0.5)
        assert second.handshake_ok and second.resumed, second.text
        assert second.suite == first.suite
        assert server.wait_for("two")


def test_openssl_server_rejects_untrusted_client(pki: PKIPaths, rogue: tuple[Path, Path]) -> None:
    with OpenSSLServer(cert=pki.server_cert, key=pki.server_key, ca=pki.ca_cert) as server:
        result = OpenSSLClient(server.port, cert=rogue[0], key=rogue[1], ca=pki.ca_cert).run(
            b"should-not-arrive\n", linger=0.5
        )
        assert not result.handshake_ok
        assert not server.wait_for("should-not-arrive", 0.5)
        assert "SSL alert number 48" in result.text  # unknown_ca
        assert "verify error" in server.output()


def test_openssl_client_rejects_wrong_server_name(pki: PKIPaths) -> None:
    with OpenSSLServer(cert=pki.server_cert, key=pki.server_key, ca=pki.ca_cert) as server:
        result = OpenSSLClient(
            server.port,
            cert=pki.devices[0].cert,
            key=pki.devices[0].key,
            ca=pki.ca_cert,
            verify_hostname="example.com",
        ).run(b"x\n", linger=0.5)
        assert not result.handshake_ok


@pytest.mark.parametrize("suite", GNUTLS_CLI_SUITES, ids=lambda s: s.name)
def test_gnutls_cli_to_openssl_server(
    pki: PKIPaths, psk: tuple[bytes, bytes], suite: CipherSuite
) -> None:
    with openssl_server(pki, suite, psk) as server:
        result = GnuTLSClient(
            server.port,
            priority=GNUTLS_SUITE_PRIORITY[suite],
            **client_credentials(pki, suite, psk),
        ).run(b"ping-gnutls-cli\n", linger=0.5)
        assert result.handshake_ok, result.text
        assert result.suite == suite, result.description
        assert server.wait_for("ping-gnutls-cli"), server.output()


# --------------------------------------------------------------------------- GnuTLS server


@pytest.mark.parametrize("suite", GNUTLS_CLI_SUITES, ids=lambda s: s.name)
def test_gnutls_cli_to_gnutls_server(
    pki: PKIPaths, psk: tuple[bytes, bytes], suite: CipherSuite
) -> None:
    with gnutls_server(pki) as server:
        result = GnuTLSClient(
            server.port,
            priority=GNUTLS_SUITE_PRIORITY[suite],
            namespace=server.namespace,
            **client_credentials(pki, suite, psk),
        ).run(b"echo-me\n", expect=b"echo-me")
        assert result.handshake_ok, result.text
        assert result.suite == suite, result.description
        assert b"echo-me" in result.stdout  # echoed back by --echo
        assert server.wait_for("Processing 8 bytes command: echo-me"), server.output()


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.name)
def test_openssl_client_to_gnutls_server(
    pki: PKIPaths, psk: tuple[bytes, bytes], suite: CipherSuite
) -> None:
    with gnutls_server(pki, psk_hint="d2tls-hint") as server:
        result = OpenSSLClient(
            server.port,
            verify_hostname=None if suite in PSK_KEYED_SUITES else "localhost",
            cipher=OPENSSL_SUITE_NAMES[suite],
            namespace=server.namespace,
            **client_credentials(pki, suite, psk),
        ).run(b"from-openssl\n", expect=b"from-openssl")
        assert result.handshake_ok, result.text
        assert result.suite == suite
        assert result.stdout.count(b"from-openssl") == 1  # the echo
        if suite == PSK_SUITE:
            assert "PSK identity hint: d2tls-hint" in result.text


@pytest.mark.parametrize("tickets", [False, True], ids=["session-id", "ticket"])
def test_gnutls_server_resumption(pki: PKIPaths, tmp_path: Path, tickets: bool) -> None:
    with gnutls_server(pki, tickets=tickets) as server:
        result = GnuTLSClient(
            server.port,
            cert=pki.devices[0].cert,
            key=pki.devices[0].key,
            ca=pki.ca_cert,
            resume=True,
            namespace=server.namespace,
        ).run(b"again\n", expect=b"again")
        assert result.handshake_ok and result.resumed, result.text
        session = tmp_path / "s.pem"
        ns, no_ticket = server.namespace, not tickets
        common = device_credentials(pki)
        first = OpenSSLClient(
            server.port, sess_out=session, namespace=ns, no_ticket=no_ticket, **common
        ).run(b"first\n", expect=b"first")
        second = OpenSSLClient(
            server.port, sess_in=session, namespace=ns, no_ticket=no_ticket, **common
        ).run(b"second\n", expect=b"second")
        assert first.handshake_ok and not first.resumed, first.text
        assert second.handshake_ok and second.resumed, second.text


def test_gnutls_server_rejects_untrusted_client(pki: PKIPaths, rogue: tuple[Path, Path]) -> None:
    with gnutls_server(pki) as server:
        result = OpenSSLClient(
            server.port, cert=rogue[0], key=rogue[1], ca=pki.ca_cert, namespace=server.namespace
        ).run(b"nope\n", linger=0.5)
        assert not result.handshake_ok, result.text
        assert "SSL alert number 49" in result.text  # access_denied (needs --verify-client-cert)
        assert "Processing" not in server.output()


def test_gnutls_server_is_only_reachable_in_its_namespace(pki: PKIPaths) -> None:
    with gnutls_server(pki, port=free_udp_port()) as server:
        outside = OpenSSLClient(
            server.port, cert=pki.devices[0].cert, key=pki.devices[0].key, ca=pki.ca_cert
        ).run(b"x\n", linger=0.5, timeout=3)
        assert not outside.handshake_ok
