"""Device certificates without subjectAltName against our server (issue 18, point 2).

The whole PKI is made by the ``openssl`` command line (tests/openssl_pki.py): the device
certificate's subject is ``CN=sensor-42`` and it has no SAN, as ``openssl req`` makes it by
default. Three clients we did not write (OpenSSL ``s_client``, ``gnutls-cli``, mbedTLS
``ssl_client2``) must complete a full and a resumed handshake with it against ``d2tls server
--require-client-cert`` over real UDP on loopback; the same certificate from an untrusted CA,
expired, or with a serverAuth-only EKU must still be refused with the right alert. Finally the
delegated D2TLS flow (``d2tls agent`` + ``d2tls device``) runs with it.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from d2tls.core.dtls.config import ClientAuth, ServerConfig
from d2tls.core.dtls.constants import AlertDescription, CipherSuite
from d2tls.core.dtls.events import ConnectionTerminated, Event, HandshakeCompleted
from d2tls.core.pki.verify import load_certificate_chain, load_private_key, load_trust_store
from d2tls.lab.peers import (
    GNUTLS_SUITE_PRIORITY,
    OPENSSL_SUITE_NAMES,
    GnuTLSClient,
    MbedTLSClient,
    OpenSSLClient,
    OutputCapture,
)
from openssl_pki import DEVICE_CN, DEVICE_EXT, SERVER_AUTH_ONLY_EXT, Identity, OpenSSLPKI
from test_interop import CLIServer, InProcessServer

pytestmark = pytest.mark.interop

CCM8 = CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8
GCM = CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
LOG = r"handshake .*: {suite} resumed={resumed} ems=True client=CN=sensor-42$"


@pytest.fixture(scope="module")
def opki(tmp_path_factory: pytest.TempPathFactory) -> OpenSSLPKI:
    return OpenSSLPKI(tmp_path_factory.mktemp("openssl-pki"))


@pytest.fixture(scope="module")
def server(opki: OpenSSLPKI) -> Iterator[CLIServer]:
    """``d2tls server --require-client-cert --echo`` with the openssl-made server identity."""
    with CLIServer(
        "--cert",
        str(opki.server.cert),
        "--key",
        str(opki.server.key),
        "--ca",
        str(opki.ca.cert),
        "--require-client-cert",
        "--echo",
    ) as running:
        yield running


def assert_full_then_resumed(server: CLIServer, mark: int, suite: CipherSuite) -> None:
    """Our server's own log: a full then a resumed handshake by CN=sensor-42."""
    for resumed in (False, True):
        pattern = LOG.format(suite=suite.name, resumed=resumed)
        assert server.wait_log(pattern, mark), server.log(mark)


@pytest.mark.parametrize("suite", [CCM8, GCM], ids=["CCM8", "GCM"])
def test_openssl_s_client_without_san(
    opki: OpenSSLPKI, server: CLIServer, tmp_path: Path, suite: CipherSuite
) -> None:
    session = tmp_path / "session.pem"
    common: dict[str, Any] = {
        "cert": opki.device.cert,
        "key": opki.device.key,
        "ca": opki.ca.cert,
        "verify_hostname": "localhost",
        "cipher": OPENSSL_SUITE_NAMES[suite],
    }
    mark = server.mark()
    first = OpenSSLClient(server.port, sess_out=session, **common).run(b"full\n", expect=b"full")
    assert first.handshake_ok and not first.resumed, first.text
    assert first.suite == suite
    second = OpenSSLClient(server.port, sess_in=session, **common).run(
        b"resumed\n", expect=b"resumed"
    )
    assert second.handshake_ok and second.resumed, second.text
    assert b"resumed" in second.stdout  # echoed by our server
    assert_full_then_resumed(server, mark, suite)


def test_gnutls_cli_without_san(opki: OpenSSLPKI, server: CLIServer) -> None:
    mark = server.mark()
    result = GnuTLSClient(
        server.port,
        cert=opki.device.cert,
        key=opki.device.key,
        ca=opki.ca.cert,
        verify_hostname="localhost",
        priority=GNUTLS_SUITE_PRIORITY[CCM8],
        resume=True,
    ).run(b"gnutls-echo\n", expect=b"gnutls-echo")
    assert result.handshake_ok, result.text
    assert result.resumed, result.text
    assert result.suite == CCM8
    assert_full_then_resumed(server, mark, CCM8)


@pytest.mark.parametrize("suite", [CCM8, GCM], ids=["CCM8", "GCM"])
def test_mbedtls_ssl_client2_without_san(
    opki: OpenSSLPKI, server: CLIServer, suite: CipherSuite
) -> None:
    mark = server.mark()
    result = MbedTLSClient(
        server.port,
        cert=opki.device.cert,
        key=opki.device.key,
        ca=opki.ca.cert,
        server_name="localhost",
        suite=suite,
        reconnect=True,
    ).run()
    assert result.handshake_ok, result.text[-3000:]
    assert result.handshakes == 2, result.text[-3000:]
    assert result.resumed, result.text[-3000:]
    assert result.suite == suite
    # The request ssl_client2 sent came back from our echo server on both connections.
    assert result.text.count("bytes read\n\nGET / HTTP/1.0") == 2, result.text[-3000:]
    assert_full_then_resumed(server, mark, suite)


# --------------------------------------------------------------------------- refused


class IdentityServer(InProcessServer):
    """Also records each client's identity when its handshake completes (the connection is
    gone once the client has closed it)."""

    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config)
        self.identities: list[tuple[str | None, str | None]] = []

    def _record(self, event: Event) -> None:
        if isinstance(event, HandshakeCompleted) and event.peer is not None:
            connection = self.engine.connection(event.peer)
            if connection is not None:
                self.identities.append((connection.peer_identity(), connection.peer_subject()))
        super()._record(event)


@pytest.fixture(scope="module")
def inproc(opki: OpenSSLPKI) -> Iterator[IdentityServer]:
    config = ServerConfig(
        certificate_chain=load_certificate_chain(opki.server.cert),
        private_key=load_private_key(opki.server.key),
        trust_store=load_trust_store(opki.ca.cert),
        client_auth=ClientAuth.REQUIRED,
    )
    with IdentityServer(config) as running:
        yield running


REFUSED: dict[str, tuple[str, AlertDescription, str, str]] = {
    "untrusted-ca": ("untrusted", AlertDescription.UNKNOWN_CA, "unknown ca", "unknown issuer"),
    "expired": (
        "expired",
        AlertDescription.CERTIFICATE_EXPIRED,
        "certificate expired",
        "expired on",
    ),
    "server-auth-eku": (
        "server-eku",
        AlertDescription.UNSUPPORTED_CERTIFICATE,
        "unsupported certificate",
        "wrong extended key usage: it allows serverAuth, not clientAuth",
    ),
}


def refused_identity(opki: OpenSSLPKI, name: str) -> Identity:
    if name == "untrusted":
        return opki.issue("untrusted-dev", DEVICE_CN, DEVICE_EXT, ca=opki.other_ca)
    if name == "expired":
        return opki.expired_device()
    return opki.issue("server-eku-dev", DEVICE_CN, SERVER_AUTH_ONLY_EXT)


@pytest.mark.parametrize("case", list(REFUSED))
def test_bad_san_less_certificates_are_still_refused(
    opki: OpenSSLPKI, inproc: IdentityServer, case: str
) -> None:
    name, alert, openssl_words, reason = REFUSED[case]
    identity = refused_identity(opki, name)
    since = inproc.mark()
    result = OpenSSLClient(inproc.port, cert=identity.cert, key=identity.key, ca=opki.ca.cert).run(
        b"refused\n", linger=0.5
    )
    assert not result.handshake_ok
    assert f"alert {openssl_words}" in result.text, result.text
    ended = inproc.wait_event(ConnectionTerminated, since)
    assert ended is not None
    assert ended.alert == alert and not ended.by_peer, ended
    assert f"certificate 'CN={DEVICE_CN}' not accepted" in ended.reason, ended.reason
    assert reason in ended.reason, ended.reason


def test_in_process_server_identifies_the_device_by_cn(
    opki: OpenSSLPKI, inproc: IdentityServer
) -> None:
    since = inproc.mark()
    result = OpenSSLClient(
        inproc.port, cert=opki.device.cert, key=opki.device.key, ca=opki.ca.cert
    ).run(b"who\n", expect=b"who")
    assert result.handshake_ok, result.text
    assert inproc.wait_event(HandshakeCompleted, since) is not None
    assert inproc.identities[-1] == (f"CN={DEVICE_CN}", f"CN={DEVICE_CN}")


# --------------------------------------------------------------------------- D2TLS


def run_delegation(
    *,
    psk_file: Path,
    psk_arg: str,
    ca: Path,
    server_port: int,
    cert: Path,
    key: Path,
    connections: int = 2,
) -> tuple[subprocess.CompletedProcess[str], str]:
    """``d2tls agent`` (its own process) + ``d2tls device --json --connections N`` against our
    server on ``server_port``; the device's process and the agent's output."""
    # The agent's PSK file binds each identity to the device certificate and allows this
    # server only (spec/delegation.md §9.1): the same lines with both attributes added.
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    fingerprint = hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()
    agent_file = psk_file.with_name(psk_file.stem + "-agent.txt")
    agent_file.write_text(
        "".join(
            f"{line} cert-sha256={fingerprint} allow=127.0.0.1:{server_port}\n"
            for line in psk_file.read_text().splitlines()
            if line.strip()
        )
    )
    agent_argv = [sys.executable, "-m", "d2tls.cli", "agent", "--listen", "127.0.0.1:0"]
    agent_argv += ["--psk-file", str(agent_file), "--ca", str(ca)]
    agent = subprocess.Popen(
        agent_argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert agent.stdout is not None
    capture = OutputCapture(agent.stdout)
    try:
        ready = re.compile(rb"agent listening on 127\.0\.0\.1:(\d+)")
        assert capture.wait_for(ready, 15), capture.text()
        match = ready.search(capture.data())
        assert match is not None
        argv = [sys.executable, "-m", "d2tls.cli", "device", "--json"]
        argv += ["--connections", str(connections), "--send", "hello-d2tls"]
        argv += ["--agent", f"127.0.0.1:{int(match.group(1))}", "--psk", psk_arg]
        argv += ["--server", f"127.0.0.1:{server_port}", "--server-name", "localhost"]
        argv += ["--cert", str(cert), "--key", str(key)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    finally:
        agent.terminate()
        agent.wait(timeout=10)
        capture.join()
    return proc, capture.text()


def assert_delegated_then_resumed(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["ok"] is True, result
    assert [c["received"] for c in result["connections"]] == ["hello-d2tls"] * 2, result
    assert result["connections"][0]["delegations"] == 1, result
    assert result["connections"][1]["delegations"] == 0, result


def test_delegated_flow_with_openssl_device_certificate(
    opki: OpenSSLPKI, server: CLIServer, tmp_path: Path
) -> None:
    """``d2tls agent`` + ``d2tls device`` (bound mode): the agent runs the handshake with the
    SAN-less device certificate, the device then resumes end to end."""
    key = subprocess.run(
        ["openssl", "rand", "-hex", "32"], capture_output=True, text=True, check=True
    ).stdout.strip()
    psk_file = tmp_path / "psk.txt"
    psk_file.write_text(f"{DEVICE_CN}:{key}\n")
    mark = server.mark()
    proc, _ = run_delegation(
        psk_file=psk_file,
        psk_arg=f"{DEVICE_CN}:{key}",
        ca=opki.ca.cert,
        server_port=server.port,
        cert=opki.device.cert,
        key=opki.device.key,
    )
    assert_delegated_then_resumed(proc)
    assert_full_then_resumed(server, mark, CCM8)
