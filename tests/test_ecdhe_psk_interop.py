"""ECDHE-PSK (RFC 5489) interop with third-party DTLS 1.2 peers, real processes on loopback.

TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256 (0xCCAC, RFC 7905) is the one AEAD ECDHE-PSK
suite that OpenSSL 3.0, GnuTLS 3.7, mbedTLS 2.28 and wolfSSL 5.5 all offer in DTLS 1.2; of
RFC 8442's AES suites only TLS_ECDHE_PSK_WITH_AES_128_GCM_SHA256 (0xD001) exists, in wolfSSL.
Both directions with OpenSSL and mbedTLS, our client against gnutls-serv and wolfSSL, and a
wrong key refused with the alert RFC 4279 §2 names (decrypt_error).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import LoadedPKI
from d2tls.core.dtls.constants import CipherSuite
from d2tls.lab.peers import (
    GnuTLSServer,
    MbedTLSClient,
    MbedTLSServer,
    OpenSSLClient,
    OpenSSLServer,
    WolfSSLServer,
)
from test_interop import CLIServer, d2tls_client

pytestmark = pytest.mark.interop

SUITE = CipherSuite.TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256
OPENSSL_NAME = "ECDHE-PSK-CHACHA20-POLY1305"
IDENTITY = b"device-1"
KEY = bytes.fromhex("8f4a3c0e2d1b59a7c6e5f40312a9b8d7" * 2)
PAIR = (IDENTITY, KEY)
PSK_ARG = f"{IDENTITY.decode()}:{KEY.hex()}"
WRONG_ARG = f"{IDENTITY.decode()}:{secrets.token_hex(32)}"


@pytest.fixture(scope="module")
def ecdhe_server() -> Iterator[CLIServer]:
    """``d2tls server --psk ... --cipher ECDHE-PSK-CHACHA20-POLY1305 --echo``."""
    with CLIServer("--psk", PSK_ARG, "--cipher", OPENSSL_NAME, "--echo") as server:
        yield server


def reply_when(server: OpenSSLServer, needle: str, reply: bytes) -> threading.Thread:
    def run() -> None:
        if server.wait_for(needle, 10):
            server.send(reply)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# --------------------------------------------------------------------------- OpenSSL
def test_our_client_to_openssl_server_then_resumed(tmp_path: Path) -> None:
    session = tmp_path / "ecdhe-psk-session.json"
    with OpenSSLServer(psk=PAIR, client_auth="none", cipher=OPENSSL_NAME) as server:
        replier = reply_when(server, "ecdhe-ping", b"ecdhe-pong\n")
        first = d2tls_client(
            server.port, "--psk", PSK_ARG, "--cipher", OPENSSL_NAME,
            "--session-out", str(session), "--send", "ecdhe-ping",
        )  # fmt: skip
        replier.join(5)
        assert first["ok"] and first["cipher"] == SUITE.name, first
        assert first["extended_master_secret"] is True and first["resumed"] is False
        assert first["received"] == "ecdhe-pong\n"
        assert "CIPHER is ECDHE-PSK-CHACHA20-POLY1305" in server.output()
        second = d2tls_client(
            server.port, "--psk", PSK_ARG, "--cipher", OPENSSL_NAME,
            "--session-in", str(session), "--send", "ecdhe-again",
        )  # fmt: skip
        assert second["ok"] and second["resumed"] is True, second
        assert server.wait_for("ecdhe-again")


def test_openssl_client_to_our_server(ecdhe_server: CLIServer) -> None:
    mark = ecdhe_server.mark()
    result = OpenSSLClient(ecdhe_server.port, psk=PAIR, cipher=OPENSSL_NAME).run(
        b"ecdhe-echo\n", expect=b"ecdhe-echo"
    )
    assert result.handshake_ok, result.text
    assert result.cipher == OPENSSL_NAME
    assert b"ecdhe-echo" in result.stdout
    assert ecdhe_server.wait_log(f"handshake .*: {SUITE.name} resumed=False", mark)


def test_openssl_client_with_a_wrong_key_gets_decrypt_error(ecdhe_server: CLIServer) -> None:
    """RFC 4279 §2 (kept by RFC 5489 §2): a key mismatch shows at the client's Finished; our
    server answers decrypt_error (51) and keeps serving."""
    mark = ecdhe_server.mark()
    wrong = (IDENTITY, secrets.token_bytes(32))
    result = OpenSSLClient(ecdhe_server.port, psk=wrong, cipher=OPENSSL_NAME).run(
        b"never\n", linger=1.0
    )
    assert not result.handshake_ok
    assert "alert decrypt error" in result.text or "alert number 51" in result.text, result.text
    assert ecdhe_server.wait_log("decrypt_error", mark), ecdhe_server.log(mark)
    ok = OpenSSLClient(ecdhe_server.port, psk=PAIR, cipher=OPENSSL_NAME).run(
        b"after\n", expect=b"after"
    )
    assert ok.handshake_ok, ok.text


def test_openssl_client_with_an_unknown_identity_gets_unknown_psk_identity(
    ecdhe_server: CLIServer,
) -> None:
    result = OpenSSLClient(ecdhe_server.port, psk=(b"stranger", KEY), cipher=OPENSSL_NAME).run(
        b"never\n", linger=1.0
    )
    assert not result.handshake_ok
    assert "unknown psk identity" in result.text or "alert number 115" in result.text, result.text


def test_our_client_with_a_wrong_key_fails_against_openssl() -> None:
    """s_server discards our Finished (bad record MAC is silent in DTLS, RFC 6347 §4.1.2.7)
    or sends an alert; either way our client ends with an error, never a session."""
    with OpenSSLServer(psk=PAIR, client_auth="none", cipher=OPENSSL_NAME) as server:
        result = d2tls_client(server.port, "--psk", WRONG_ARG, "--cipher", OPENSSL_NAME)
        assert result["ok"] is False, result
        assert "CIPHER is" not in server.output()


# --------------------------------------------------------------------------- mbedTLS
def mbedtls_server(pki: LoadedPKI) -> MbedTLSServer:
    """ssl_server2 needs a certificate even when it only negotiates ECDHE-PSK."""
    return MbedTLSServer(
        cert=pki.paths.server_cert,
        key=pki.paths.server_key,
        ca=pki.paths.ca_cert,
        client_auth="none",
        psk=PAIR,
        extra_args=[f"force_ciphersuite={SUITE.name.replace('_', '-')}"],
    )


def test_our_client_to_mbedtls_server(pki: LoadedPKI) -> None:
    with mbedtls_server(pki) as server:
        result = d2tls_client(
            server.port, "--psk", PSK_ARG, "--cipher", OPENSSL_NAME, "--send", "GET / HTTP/1.0"
        )
        assert result["ok"] and result["cipher"] == SUITE.name, result
        assert result["extended_master_secret"] is True
        assert "mbed TLS" in (result["received"] or ""), result


def test_our_client_with_a_wrong_key_gets_bad_record_mac_from_mbedtls(pki: LoadedPKI) -> None:
    """ssl_server2 answers a Finished that does not authenticate with bad_record_mac; our
    client reports the peer's alert at once."""
    with mbedtls_server(pki) as server:
        result = d2tls_client(server.port, "--psk", WRONG_ARG, "--cipher", OPENSSL_NAME)
        assert result["ok"] is False, result
        assert result["alert"] == "bad_record_mac" and result["alert_from_peer"] is True, result


def test_mbedtls_client_to_our_server(ecdhe_server: CLIServer) -> None:
    mark = ecdhe_server.mark()
    result = MbedTLSClient(ecdhe_server.port, psk=PAIR, suite=SUITE).run()
    assert result.handshake_ok, result.text[-3000:]
    assert result.suite == SUITE
    assert ecdhe_server.wait_log(f"handshake .*: {SUITE.name} resumed=False", mark)


def test_mbedtls_client_with_a_wrong_key_gets_decrypt_error(ecdhe_server: CLIServer) -> None:
    mark = ecdhe_server.mark()
    wrong = (IDENTITY, secrets.token_bytes(32))
    result = MbedTLSClient(ecdhe_server.port, psk=wrong, suite=SUITE, hs_timeout="300-1200").run()
    assert not result.handshake_ok
    assert ecdhe_server.wait_log("decrypt_error", mark), ecdhe_server.log(mark)


# --------------------------------------------------------------------------- GnuTLS
def test_our_client_to_gnutls_server(tmp_path: Path, pki: LoadedPKI) -> None:
    """gnutls-serv (in its own network namespace) serves ECDHE-PSK; gnutls-cli 3.7.9 cannot
    be the client (it crashes in a DTLS ECDHE-PSK handshake, see tests/test_peers.py)."""
    psk_file = tmp_path / "psk.txt"
    psk_file.write_text(f"{PSK_ARG}\n")
    with GnuTLSServer(
        cert=pki.paths.server_cert,
        key=pki.paths.server_key,
        client_auth="none",
        psk_file=psk_file,
        psk_hint="gnutls-hint",
    ) as server:
        result = d2tls_client(
            server.port, "--psk", PSK_ARG, "--cipher", OPENSSL_NAME, "--send", "gnutls-ecdhe",
            namespace=server.namespace,
        )  # fmt: skip
        assert result["ok"] and result["cipher"] == SUITE.name, result
        assert result["received"] == "gnutls-ecdhe"  # --echo
        assert server.wait_for("Processing 12 bytes command: gnutls-ecdhe")


# --------------------------------------------------------------------------- wolfSSL
@pytest.mark.parametrize(
    ("suite", "name"),
    [
        (SUITE, OPENSSL_NAME),
        (CipherSuite.TLS_ECDHE_PSK_WITH_AES_128_GCM_SHA256, "ECDHE-PSK-AES128-GCM-SHA256"),
    ],
    ids=["chacha20-poly1305", "rfc8442-aes128-gcm"],
)
def test_our_client_to_wolfssl_server(pki: LoadedPKI, suite: CipherSuite, name: str) -> None:
    """wolfssl_server (Debian's wolfSSL 5.5.4) echoes; it names the suite it negotiated."""
    with WolfSSLServer(
        cert=pki.paths.server_cert,
        key=pki.paths.server_key,
        ca=pki.paths.ca_cert,
        client_auth="none",
        psk=PAIR,
        ciphers=name,
    ) as server:
        result = d2tls_client(server.port, "--psk", PSK_ARG, "--cipher", name, "--send", "wolf")
        assert result["ok"] and result["cipher"] == suite.name, result
        assert result["extended_master_secret"] is True
        assert result["received"] == "wolf"
        assert server.wait_for(f"handshake done: {name}"), server.output()
