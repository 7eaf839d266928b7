"""Interop matrix: the d2tls client and server against OpenSSL 3.0 and GnuTLS 3.7.

Every certificate handshake requires a client certificate (``s_server -Verify 1
-verify_return_error``, ``gnutls-serv --require-client-cert --verify-client-cert``, ``d2tls server
--require-client-cert``). Our client always runs as a real ``d2tls client --json`` subprocess; our
server runs either as a ``d2tls server`` subprocess (the positive matrix) or in-process on an
asyncio loop in a background thread (where the test needs the engine's events or a config the
CLI does not expose). GnuTLS's server lives in its own network namespace, so our client runs
inside that namespace too.

A small UDP relay between the peers records every datagram, so that the fragmentation and loss
tests can check what actually went over the wire instead of trusting either implementation.

Nothing here skips: a missing openssl/gnutls tool or ``ip netns`` is a failure.
"""

from __future__ import annotations

import asyncio
import json
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import pytest

from conftest import SERVER_NAME, LoadedPKI
from d2tls.core.dtls.config import ClientAuth, ServerConfig
from d2tls.core.dtls.constants import AlertDescription, CipherSuite
from d2tls.core.dtls.events import ConnectionTerminated, Event, HandshakeCompleted
from d2tls.core.dtls.server import DTLSServer
from d2tls.core.pki import (
    issue_certificate,
    load_psk_file,
    write_pem_certificate,
    write_pem_private_key,
)
from d2tls.lab.peers import (
    GNUTLS_SUITE_PRIORITY,
    GnuTLSClient,
    GnuTLSServer,
    NetNamespace,
    OpenSSLClient,
    OpenSSLServer,
    OutputCapture,
    require_tool,
)
from d2tls.net.udp import ServerEndpoint

pytestmark = pytest.mark.interop

CCM8 = CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8
GCM = CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
PSK_SUITE = CipherSuite.TLS_PSK_WITH_AES_128_CCM_8
#: The certificate suites, by the names ``d2tls client --cipher`` and OpenSSL both use.
CERT_SUITES = {
    "ECDHE-ECDSA-AES128-CCM8": CCM8,
    "ECDHE-ECDSA-AES128-GCM-SHA256": GCM,
}
PSK_IDENTITY = "device-1"
SERVER_SUBJECT = f"CN={SERVER_NAME},O=d2tls"
CLIENT_HELLO, CERTIFICATE = 1, 11
E = TypeVar("E", bound=Event)

# --------------------------------------------------------------------------- credentials


@dataclass(frozen=True)
class Credentials:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Files:
    """The PEM files of the session PKI plus the bad identities the negative tests need."""

    ca: Path
    other_ca: Path
    server: Credentials
    device: Credentials
    psk_file: Path
    psk: bytes
    rogue_client: Credentials
    expired_client: Credentials
    expired_server: Credentials

    @property
    def psk_arg(self) -> str:
        return f"{PSK_IDENTITY}:{self.psk.hex()}"

    @property
    def psk_pair(self) -> tuple[bytes, bytes]:
        return PSK_IDENTITY.encode(), self.psk

    def client_args(self, device: Credentials | None = None, ca: Path | None = None) -> list[str]:
        """``d2tls client`` options: trust ``ca`` (default: the test CA), present ``device``."""
        device = device or self.device
        return ["--ca", str(ca or self.ca), "--cert", str(device.cert), "--key", str(device.key)]


@pytest.fixture(scope="module")
def files(pki: LoadedPKI, tmp_path_factory: pytest.TempPathFactory) -> Files:
    directory = tmp_path_factory.mktemp("interop-identities")
    now = datetime.now(UTC)
    expired = {"not_before": now - timedelta(days=30), "not_after": now - timedelta(days=1)}

    def make(
        name: str, *, other_ca: bool, client: bool, names: tuple[str, ...], window: dict[str, Any]
    ) -> Credentials:
        ca_cert, ca_key = (
            (pki.other_ca_cert, pki.other_ca_key) if other_ca else (pki.ca_cert, pki.ca_key)
        )
        cert, key = issue_certificate(
            ca_cert, ca_key, name, server_names=names, client=client, **window
        )
        if window:
            assert cert.not_valid_after_utc < now
        paths = Credentials(directory / f"{name}.pem", directory / f"{name}.key")
        write_pem_certificate(paths.cert, cert)
        write_pem_private_key(paths.key, key)
        return paths

    device = pki.paths.devices[0]
    return Files(
        ca=pki.paths.ca_cert,
        other_ca=pki.paths.other_ca_cert,
        server=Credentials(pki.paths.server_cert, pki.paths.server_key),
        device=Credentials(device.cert, device.key),
        psk_file=pki.paths.psk_file,
        psk=load_psk_file(pki.paths.psk_file)[PSK_IDENTITY.encode()],
        rogue_client=make(
            "rogue-client", other_ca=True, client=True, names=("rogue.d2tls.invalid",), window={}
        ),
        expired_client=make(
            "expired-client",
            other_ca=False,
            client=True,
            names=("expired.d2tls.invalid",),
            window=expired,
        ),
        expired_server=make(
            "expired-server",
            other_ca=False,
            client=False,
            names=(SERVER_NAME, "127.0.0.1"),
            window=expired,
        ),
    )


# --------------------------------------------------------------------------- our client


def d2tls_client(
    port: int,
    *args: str,
    host: str = "127.0.0.1",
    namespace: NetNamespace | None = None,
    timeout: float = 20.0,
) -> dict[str, Any]:
    """Run ``d2tls client HOST:PORT --json ARGS`` and return its one JSON object.

    Also checks the CLI contract: exactly one line on stdout, no traceback, exit status 0 on
    success and 1 on a failed connection.
    """
    argv = [sys.executable, "-m", "d2tls.cli", "client", f"{host}:{port}", "--json"]
    argv += ["--timeout", "8", *args]
    if namespace is not None:
        proc = namespace.run(argv, timeout=timeout)
    else:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert "Traceback" not in out + err, f"{argv}\n{out}\n{err}"
    lines = out.strip().splitlines()
    assert len(lines) == 1, f"expected one JSON line from {argv}:\n{out}\n{err}"
    result: dict[str, Any] = json.loads(lines[0])
    assert proc.returncode == (0 if result["ok"] else 1), (proc.returncode, result, err)
    return result


def reply_when(server: OpenSSLServer, needle: str, reply: bytes) -> threading.Thread:
    """Make s_server send ``reply`` (via its stdin) once ``needle`` shows up in its output."""

    def run() -> None:
        if server.wait_for(needle, 10):
            server.send(reply)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def assert_connected(result: dict[str, Any], suite: CipherSuite, *, resumed: bool) -> None:
    assert result["ok"] is True, result
    assert result["cipher"] == suite.name, result
    assert result["resumed"] is resumed, result
    assert result["extended_master_secret"] is True, result
    session_id = bytes.fromhex(result["session_id"])
    assert 1 <= len(session_id) <= 32, result


# --------------------------------------------------------------------------- our server


class CLIServer:
    """``d2tls server --listen 127.0.0.1:0 ...`` as a subprocess, with its log captured."""

    def __init__(self, *args: str) -> None:
        self.argv = [sys.executable, "-m", "d2tls.cli", "server", "--listen", "127.0.0.1:0"]
        self.argv += list(args)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._capture: OutputCapture | None = None

    def __enter__(self) -> Self:
        self.process = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert self.process.stdout is not None
        self._capture = OutputCapture(self.process.stdout)
        ready = re.compile(rb"listening on 127\.0\.0\.1:(\d+)\n")
        if not self._capture.wait_for(ready, 15):
            self.__exit__(None, None, None)
            pytest.fail(f"d2tls server did not start:\n{self.log()}")
        match = ready.search(self._capture.data())
        assert match is not None
        self.port = int(match.group(1))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self._capture is not None:
            self._capture.join()

    def log(self, since: int = 0) -> str:
        return self._capture.text()[since:] if self._capture is not None else ""

    def mark(self) -> int:
        """Position in the log; pass it to :meth:`wait_log` to look only at newer lines."""
        return len(self.log())

    def wait_log(self, pattern: str, since: int, timeout: float = 5.0) -> re.Match[str] | None:
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.log(since), re.MULTILINE)
            if match is not None or time.monotonic() > deadline:
                return match
            time.sleep(0.02)


class InProcessServer:
    """Our DTLSServer on a ServerEndpoint (echoing), its asyncio loop in a background thread."""

    def __init__(self, config: ServerConfig) -> None:
        self.engine = DTLSServer(config)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._events: list[Event] = []
        self._cond = threading.Condition()
        self._endpoint: ServerEndpoint | None = None

    def _record(self, event: Event) -> None:
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()

    def __enter__(self) -> Self:
        self._thread.start()
        listen = ServerEndpoint.listen(
            "127.0.0.1", 0, self.engine, echo=True, on_event=self._record
        )
        self._endpoint = asyncio.run_coroutine_threadsafe(listen, self._loop).result(5)
        assert self._endpoint.address is not None
        self.port = self._endpoint.address[1]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._endpoint is not None:
            self._loop.call_soon_threadsafe(self._endpoint.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def mark(self) -> int:
        with self._cond:
            return len(self._events)

    def wait_event(self, kind: type[E], since: int, timeout: float = 5.0) -> E | None:
        """The first event of ``kind`` recorded after position ``since``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self._events[since:]:
                    if isinstance(event, kind):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)


def server_config(pki: LoadedPKI, **overrides: Any) -> ServerConfig:
    settings: dict[str, Any] = {
        "certificate_chain": pki.server.chain,
        "private_key": pki.server.key,
        "trust_store": pki.store,
        "client_auth": ClientAuth.REQUIRED,
    }
    settings.update(overrides)
    return ServerConfig(**settings)


@pytest.fixture(scope="module")
def our_server(files: Files) -> Iterator[CLIServer]:
    """``d2tls server --require-client-cert --echo`` with the test identity and the PSK."""
    with CLIServer(
        "--cert",
        str(files.server.cert),
        "--key",
        str(files.server.key),
        "--ca",
        str(files.ca),
        "--require-client-cert",
        "--echo",
        "--psk",
        files.psk_arg,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def inproc_server(pki: LoadedPKI) -> Iterator[InProcessServer]:
    """Our server in-process, client certificates required (for the negative tests)."""
    with InProcessServer(server_config(pki)) as server:
        yield server


# --------------------------------------------------------------------------- wire recording


@dataclass(frozen=True)
class Fragment:
    """One epoch-0 handshake fragment as seen on the wire."""

    msg_type: int
    length: int
    offset: int
    fragment_length: int


def handshake_fragments(datagram: bytes) -> list[Fragment]:
    """Epoch-0 handshake fragments in a datagram (RFC 6347 §4.1 and §4.2.2 headers)."""
    fragments = []
    pos = 0
    while pos + 13 <= len(datagram):
        content_type = datagram[pos]
        epoch = int.from_bytes(datagram[pos + 3 : pos + 5], "big")
        length = int.from_bytes(datagram[pos + 11 : pos + 13], "big")
        body = datagram[pos + 13 : pos + 13 + length]
        pos += 13 + length
        if content_type != 22 or epoch != 0:
            continue
        i = 0
        while i + 12 <= len(body):
            fragment_length = int.from_bytes(body[i + 9 : i + 12], "big")
            fragments.append(
                Fragment(
                    msg_type=body[i],
                    length=int.from_bytes(body[i + 1 : i + 4], "big"),
                    offset=int.from_bytes(body[i + 6 : i + 9], "big"),
                    fragment_length=fragment_length,
                )
            )
            i += 12 + fragment_length
    return fragments


class UDPRelay:
    """Forwards datagrams between one client and a server on loopback, recording them.

    ``drop`` holds ``(direction, n)`` pairs: the n-th datagram (1-based) in that direction
    (``"c2s"`` or ``"s2c"``) is recorded but not forwarded.
    """

    def __init__(self, server_port: int, drop: frozenset[tuple[str, int]] = frozenset()) -> None:
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.bind(("127.0.0.1", 0))
        self.back.connect(("127.0.0.1", server_port))
        self.port = int(self.front.getsockname()[1])
        self.drop = drop
        self.log: list[tuple[str, bytes]] = []
        self.dropped: list[tuple[str, bytes]] = []
        self._client: tuple[str, int] | None = None
        self._counts = {"c2s": 0, "s2c": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(2)
        self.front.close()
        self.back.close()

    def _forward(self, direction: str, data: bytes) -> bool:
        self._counts[direction] += 1
        if (direction, self._counts[direction]) in self.drop:
            self.dropped.append((direction, data))
            return False
        self.log.append((direction, data))
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self.front, self.back], [], [], 0.05)
            for sock in readable:
                try:
                    if sock is self.front:
                        data, self._client = self.front.recvfrom(65536)
                        if self._forward("c2s", data):
                            self.back.send(data)
                    else:
                        data = self.back.recv(65536)
                        if self._forward("s2c", data) and self._client is not None:
                            self.front.sendto(data, self._client)
                except OSError:  # ICMP port unreachable after a peer went away
                    continue

    def datagrams(self, direction: str) -> list[bytes]:
        return [data for d, data in self.log if d == direction]

    def fragments(self, direction: str) -> list[Fragment]:
        return [f for data in self.datagrams(direction) for f in handshake_fragments(data)]


def is_fragmented(fragments: list[Fragment], msg_type: int | None = None) -> bool:
    """Some message (of ``msg_type``, if given) was sent in more than one fragment."""
    return any(f.fragment_length < f.length and msg_type in (None, f.msg_type) for f in fragments)


# --------------------------------------------------------------------------- tools


@pytest.mark.parametrize("tool", ["openssl", "gnutls-serv", "gnutls-cli", "ip"])
def test_interop_tool_is_installed(tool: str) -> None:
    assert Path(require_tool(tool)).is_file()


# ---------------------------------------------------------------- 1. our client -> s_server


def openssl_server(files: Files, **kwargs: Any) -> OpenSSLServer:
    """``s_server -dtls1_2 -Verify 1 -verify_return_error -cipher ALL`` with the test server."""
    kwargs.setdefault("cert", files.server.cert)
    kwargs.setdefault("key", files.server.key)
    return OpenSSLServer(ca=files.ca, client_auth="required", cipher="ALL", **kwargs)


@pytest.mark.parametrize("cipher", list(CERT_SUITES))
def test_our_client_to_openssl_server_full_then_resumed(
    files: Files, tmp_path: Path, cipher: str
) -> None:
    suite = CERT_SUITES[cipher]
    session = tmp_path / "session.json"
    with openssl_server(files) as server:
        replier = reply_when(server, "ping-full", b"pong-full\n")
        first = d2tls_client(
            server.port,
            *files.client_args(),
            "--cipher",
            cipher,
            "--session-out",
            str(session),
            "--send",
            "ping-full",
        )
        replier.join(5)
        assert_connected(first, suite, resumed=False)
        assert first["peer_certificate_subject"] == SERVER_SUBJECT
        assert first["received"] == "pong-full\n"
        assert server.wait_for("ping-full"), server.output()
        assert "CN = device-1" in server.output()  # s_server verified our client certificate
        assert session.stat().st_mode & 0o777 == 0o600

        replier = reply_when(server, "ping-resumed", b"pong-resumed\n")
        second = d2tls_client(
            server.port,
            *files.client_args(),
            "--cipher",
            cipher,
            "--session-in",
            str(session),
            "--send",
            "ping-resumed",
        )
        replier.join(5)
        assert_connected(second, suite, resumed=True)
        assert second["session_id"] == first["session_id"]
        assert second["received"] == "pong-resumed\n"
        assert server.wait_for("ping-resumed"), server.output()
        assert server.output().count("Reused session-id") == 1, server.output()


@pytest.mark.parametrize(
    ("server_mtu", "client_mtu"),
    [(None, None), (1200, None), (None, 300)],
    ids=["s_server-default", "s_server-mtu-1200", "client-mtu-300"],
)
def test_our_client_fragmented_flights_with_openssl_server(
    files: Files, server_mtu: int | None, client_mtu: int | None
) -> None:
    mtu_args = ["--mtu", str(client_mtu)] if client_mtu is not None else []
    with openssl_server(files, mtu=server_mtu) as server, UDPRelay(server.port) as relay:
        result = d2tls_client(
            relay.port,
            *files.client_args(),
            *mtu_args,
            "--send",
            "fragmented-hello",
            "--receive-timeout",
            "0.2",
        )
        assert_connected(result, CCM8, resumed=False)
        assert server.wait_for("fragmented-hello"), server.output()
    to_client, to_server = relay.fragments("s2c"), relay.fragments("c2s")
    if server_mtu is None and client_mtu is None:
        # s_server's default (no usable path MTU on its unconnected socket) splits even its
        # Certificate into ~200-byte fragments; our client has to reassemble them.
        assert is_fragmented(to_client, CERTIFICATE), to_client
    elif server_mtu is not None:
        # The ~1300-byte flight is split across datagrams of at most 1200 bytes, cutting the
        # ServerKeyExchange in two.
        assert is_fragmented(to_client), to_client
        assert max(len(d) for d in relay.datagrams("s2c")) <= server_mtu
    else:
        # Our Certificate (~500 bytes) does not fit 300 bytes: it must go out in fragments,
        # every datagram within the MTU, and s_server must reassemble them.
        assert is_fragmented(to_server, CERTIFICATE), to_server
        assert max(len(d) for d in relay.datagrams("c2s")) <= client_mtu


def test_our_client_retransmits_when_openssl_flight_is_lost(files: Files) -> None:
    """RFC 6347 §4.2.4: the second datagram of s_server's flight is lost; our client's timer
    fires, it retransmits its ClientHello, s_server retransmits its flight, and the handshake
    completes."""
    with (
        openssl_server(files, mtu=1200) as server,
        UDPRelay(server.port, drop=frozenset({("s2c", 3)})) as relay,
    ):
        result = d2tls_client(
            relay.port, *files.client_args(), "--send", "after-loss", "--receive-timeout", "0.2"
        )
        assert_connected(result, CCM8, resumed=False)
        assert server.wait_for("after-loss"), server.output()
    assert len(relay.dropped) == 1
    hellos = [f for f in relay.fragments("c2s") if f.msg_type == CLIENT_HELLO]
    assert len(hellos) >= 3, hellos  # initial, with cookie, retransmitted with cookie
    assert result["handshake_ms"] >= 500  # it really waited for the retransmission timer


# ---------------------------------------------------------------- 2. s_client -> our server


@pytest.mark.parametrize("cipher", list(CERT_SUITES))
def test_openssl_client_to_our_server_full_then_resumed(
    files: Files, our_server: CLIServer, tmp_path: Path, cipher: str
) -> None:
    suite = CERT_SUITES[cipher]
    session = tmp_path / "s_client.pem"
    common: dict[str, Any] = {
        "cert": files.device.cert,
        "key": files.device.key,
        "ca": files.ca,
        "verify_hostname": SERVER_NAME,
        "cipher": cipher,
    }
    mark = our_server.mark()
    first = OpenSSLClient(our_server.port, sess_out=session, **common).run(
        b"echo-full\n", expect=b"echo-full"
    )
    assert first.handshake_ok, first.text
    assert first.suite == suite and not first.resumed
    assert b"echo-full" in first.stdout  # echoed by our server
    assert "Verification: OK" in first.text

    second = OpenSSLClient(our_server.port, sess_in=session, **common).run(
        b"echo-resumed\n", expect=b"echo-resumed"
    )
    assert second.handshake_ok, second.text
    assert second.suite == suite and second.resumed, second.text
    assert b"echo-resumed" in second.stdout

    log = f"handshake .*: {suite.name} resumed={{}} ems=True client=CN=device-1,O=d2tls"
    assert our_server.wait_log(log.format(False), mark), our_server.log(mark)
    assert our_server.wait_log(log.format(True), mark), our_server.log(mark)


def test_openssl_client_fragmented_certificate_to_our_server(
    files: Files, our_server: CLIServer
) -> None:
    """``s_client -mtu 400`` sends its certificate chain (leaf + CA) in fragments."""
    with UDPRelay(our_server.port) as relay:
        result = OpenSSLClient(
            relay.port,
            cert=files.device.cert,
            key=files.device.key,
            ca=files.ca,
            cipher=next(iter(CERT_SUITES)),
            mtu=400,
        ).run(b"frag-cert\n", expect=b"frag-cert")
    assert result.handshake_ok, result.text
    assert b"frag-cert" in result.stdout
    assert is_fragmented(relay.fragments("c2s"), CERTIFICATE), relay.fragments("c2s")


def test_openssl_client_fragmented_client_hello_to_our_server(
    files: Files, our_server: CLIServer
) -> None:
    """``s_client -mtu 300 -cipher ALL`` splits its ~270-byte ClientHello into two fragments.

    RFC 6347 §4.2.3: a receiver MUST buffer handshake fragments until it has the whole
    message; that includes the ClientHello. Our server drops each fragment (the stateless
    listener parses datagrams in isolation), so the handshake never starts.
    """
    with UDPRelay(our_server.port) as relay:
        result = OpenSSLClient(
            relay.port,
            cert=files.device.cert,
            key=files.device.key,
            ca=files.ca,
            cipher="ALL",
            mtu=300,
        ).run(b"frag-hello\n", expect=b"frag-hello", timeout=5)
    assert is_fragmented(relay.fragments("c2s"), CLIENT_HELLO)  # the precondition
    assert relay.datagrams("s2c"), "our server never answered the fragmented ClientHello"
    assert result.handshake_ok, result.text
    assert b"frag-hello" in result.stdout


@pytest.mark.parametrize("peer", ["openssl", "gnutls"])
def test_our_server_mtu_300_fragments_its_flight(pki: LoadedPKI, files: Files, peer: str) -> None:
    """Our server with a 300-byte MTU: every datagram fits, the Certificate is fragmented,
    and both s_client and gnutls-cli reassemble it."""
    with InProcessServer(server_config(pki, mtu=300)) as server, UDPRelay(server.port) as relay:
        since = server.mark()
        creds: dict[str, Any] = {"cert": files.device.cert, "key": files.device.key}
        if peer == "openssl":
            ok, text, stdout = _openssl_run(relay.port, creds, files)
        else:
            ok, text, stdout = _gnutls_run(relay.port, creds, files)
        assert ok, text
        assert b"mtu-echo" in stdout
        done = server.wait_event(HandshakeCompleted, since)
        assert done is not None and done.cipher_suite == CCM8
    assert max(len(d) for d in relay.datagrams("s2c")) <= 300
    assert is_fragmented(relay.fragments("s2c"), CERTIFICATE), relay.fragments("s2c")


def _openssl_run(port: int, creds: dict[str, Any], files: Files) -> tuple[bool, str, bytes]:
    result = OpenSSLClient(port, ca=files.ca, cipher=next(iter(CERT_SUITES)), **creds).run(
        b"mtu-echo\n", expect=b"mtu-echo"
    )
    return result.handshake_ok, result.text, result.stdout


def _gnutls_run(port: int, creds: dict[str, Any], files: Files) -> tuple[bool, str, bytes]:
    result = GnuTLSClient(port, ca=files.ca, priority=GNUTLS_SUITE_PRIORITY[CCM8], **creds).run(
        b"mtu-echo\n", expect=b"mtu-echo"
    )
    return result.handshake_ok, result.text, result.stdout


# ---------------------------------------------------------------- 3. PSK


def test_psk_our_client_to_openssl_server(files: Files, tmp_path: Path) -> None:
    session = tmp_path / "psk-session.json"
    with OpenSSLServer(psk=files.psk_pair, client_auth="none", cipher="ALL") as server:
        assert "-nocert" in server.argv()
        replier = reply_when(server, "psk-ping", b"psk-pong\n")
        first = d2tls_client(
            server.port, "--psk", files.psk_arg, "--session-out", str(session), "--send", "psk-ping"
        )
        replier.join(5)
        assert_connected(first, PSK_SUITE, resumed=False)
        assert first["peer_certificate_subject"] is None
        assert first["received"] == "psk-pong\n"
        assert server.wait_for("psk-ping")
        second = d2tls_client(
            server.port,
            "--psk",
            files.psk_arg,
            "--session-in",
            str(session),
            "--send",
            "psk-again",
            "--receive-timeout",
            "0.2",
        )
        assert_connected(second, PSK_SUITE, resumed=True)
        assert second["session_id"] == first["session_id"]
        assert server.wait_for("psk-again")
        assert "Reused session-id" in server.output()


def test_psk_openssl_client_to_our_server(
    files: Files, our_server: CLIServer, tmp_path: Path
) -> None:
    session = tmp_path / "psk.pem"
    common: dict[str, Any] = {"psk": files.psk_pair, "cipher": "PSK-AES128-CCM8"}
    mark = our_server.mark()
    first = OpenSSLClient(our_server.port, sess_out=session, **common).run(
        b"psk-echo-1\n", expect=b"psk-echo-1"
    )
    assert first.handshake_ok, first.text
    assert first.suite == PSK_SUITE and not first.resumed
    assert b"psk-echo-1" in first.stdout
    second = OpenSSLClient(our_server.port, sess_in=session, **common).run(
        b"psk-echo-2\n", expect=b"psk-echo-2"
    )
    assert second.handshake_ok and second.resumed, second.text
    assert b"psk-echo-2" in second.stdout
    assert our_server.wait_log(f"handshake .*: {PSK_SUITE.name} resumed=True", mark)


def test_psk_our_client_to_gnutls_server(files: Files, gnutls_server: GnuTLSServer) -> None:
    result = d2tls_client(
        gnutls_server.port,
        "--psk",
        files.psk_arg,
        "--send",
        "gnutls-psk",
        namespace=gnutls_server.namespace,
    )
    assert_connected(result, PSK_SUITE, resumed=False)
    assert result["received"] == "gnutls-psk"
    assert gnutls_server.wait_for("Processing 10 bytes command: gnutls-psk")


def test_psk_gnutls_client_to_our_server(files: Files, our_server: CLIServer) -> None:
    mark = our_server.mark()
    result = GnuTLSClient(
        our_server.port,
        psk=files.psk_pair,
        priority=GNUTLS_SUITE_PRIORITY[PSK_SUITE],
        resume=True,
    ).run(b"gnutls-cli-psk\n", expect=b"gnutls-cli-psk")
    assert result.handshake_ok and result.resumed, result.text
    assert result.suite == PSK_SUITE, result.description
    assert b"gnutls-cli-psk" in result.stdout
    assert our_server.wait_log(f"handshake .*: {PSK_SUITE.name} resumed=False", mark)
    assert our_server.wait_log(f"handshake .*: {PSK_SUITE.name} resumed=True", mark)


# ---------------------------------------------------------------- 4. GnuTLS


@pytest.fixture(scope="module")
def gnutls_server(files: Files) -> Iterator[GnuTLSServer]:
    """gnutls-serv --udp --echo in its namespace: certificate (client cert verified) and PSK.

    Only successful handshakes may use it: after a failed handshake gnutls-serv 3.7 stops
    answering (it spins on "Waiting for connection...").
    """
    with GnuTLSServer(
        cert=files.server.cert,
        key=files.server.key,
        ca=files.ca,
        client_auth="required",
        psk_file=files.psk_file,
    ) as server:
        yield server


@pytest.mark.parametrize("cipher", list(CERT_SUITES))
def test_our_client_to_gnutls_server_full_then_resumed(
    files: Files, gnutls_server: GnuTLSServer, tmp_path: Path, cipher: str
) -> None:
    suite = CERT_SUITES[cipher]
    session = tmp_path / "gnutls-session.json"
    ns = gnutls_server.namespace
    first = d2tls_client(
        gnutls_server.port,
        *files.client_args(),
        "--cipher",
        cipher,
        "--session-out",
        str(session),
        "--send",
        f"gnu-{cipher}-1",
        namespace=ns,
    )
    assert_connected(first, suite, resumed=False)
    assert first["peer_certificate_subject"] == SERVER_SUBJECT
    assert first["received"] == f"gnu-{cipher}-1"  # gnutls-serv --echo
    second = d2tls_client(
        gnutls_server.port,
        *files.client_args(),
        "--cipher",
        cipher,
        "--session-in",
        str(session),
        "--send",
        f"gnu-{cipher}-2",
        namespace=ns,
    )
    assert_connected(second, suite, resumed=True)
    assert second["session_id"] == first["session_id"]
    assert second["received"] == f"gnu-{cipher}-2"
    assert gnutls_server.wait_for(f"command: gnu-{cipher}-2"), gnutls_server.output()


@pytest.mark.parametrize("cipher", list(CERT_SUITES))
def test_gnutls_client_to_our_server_full_then_resumed(
    files: Files, our_server: CLIServer, cipher: str
) -> None:
    """gnutls-cli runs on the host loopback (it is only a client) against our server."""
    suite = CERT_SUITES[cipher]
    mark = our_server.mark()
    result = GnuTLSClient(
        our_server.port,
        cert=files.device.cert,
        key=files.device.key,
        ca=files.ca,
        priority=GNUTLS_SUITE_PRIORITY[suite],
        resume=True,
    ).run(b"gnutls-cli-echo\n", expect=b"gnutls-cli-echo")
    assert result.handshake_ok, result.text
    assert result.resumed, result.text
    assert result.suite == suite, result.description
    assert b"gnutls-cli-echo" in result.stdout
    log = f"handshake .*: {suite.name} resumed={{}} ems=True client=CN=device-1,O=d2tls"
    assert our_server.wait_log(log.format(False), mark), our_server.log(mark)
    assert our_server.wait_log(log.format(True), mark), our_server.log(mark)


# ---------------------------------------------------------------- 5. negative


def test_our_client_rejects_openssl_server_from_unknown_ca(files: Files) -> None:
    with openssl_server(files) as server:
        result = d2tls_client(server.port, *files.client_args(ca=files.other_ca))
        assert result["ok"] is False
        assert result["alert"] == "unknown_ca", result
        assert result["alert_from_peer"] is False
        assert result["error"]
        assert server.wait_for("alert unknown ca"), server.output()


def test_openssl_server_rejects_our_client_cert_from_unknown_ca(files: Files) -> None:
    with openssl_server(files) as server:
        result = d2tls_client(server.port, *files.client_args(device=files.rogue_client))
        assert result["ok"] is False
        assert result["alert"] == "unknown_ca", result
        assert result["alert_from_peer"] is True
        assert server.wait_for("verify error"), server.output()


def test_gnutls_server_rejects_our_client_cert_from_unknown_ca(files: Files) -> None:
    """gnutls-serv --verify-client-cert answers an unknown CA with access_denied (own server:
    gnutls-serv stops serving after a failed handshake)."""
    with GnuTLSServer(cert=files.server.cert, key=files.server.key, ca=files.ca) as server:
        result = d2tls_client(
            server.port,
            *files.client_args(device=files.rogue_client),
            namespace=server.namespace,
        )
    assert result["ok"] is False
    assert result["alert"] == "access_denied", result
    assert result["alert_from_peer"] is True


@pytest.mark.parametrize("peer", ["openssl", "gnutls"])
def test_our_server_rejects_client_cert_from_unknown_ca(
    files: Files, inproc_server: InProcessServer, peer: str
) -> None:
    since = inproc_server.mark()
    creds: dict[str, Any] = {"cert": files.rogue_client.cert, "key": files.rogue_client.key}
    if peer == "openssl":
        text = OpenSSLClient(inproc_server.port, ca=files.ca, **creds).run(b"no\n", linger=0.5)
        assert not text.handshake_ok
        assert "alert unknown ca" in text.text, text.text
    else:
        result = GnuTLSClient(inproc_server.port, ca=files.ca, **creds).run(b"no\n", linger=0.5)
        assert not result.handshake_ok
        assert "Received alert [48]" in result.text, result.text
    ended = inproc_server.wait_event(ConnectionTerminated, since)
    assert ended is not None
    assert ended.alert == AlertDescription.UNKNOWN_CA and not ended.by_peer, ended


def test_our_server_requires_a_client_certificate(
    files: Files, inproc_server: InProcessServer
) -> None:
    """RFC 5246 §7.4.6: a client that sends no certificate to a server that requires one gets
    a fatal handshake_failure."""
    since = inproc_server.mark()
    result = OpenSSLClient(inproc_server.port, ca=files.ca).run(b"anon\n", linger=0.5)
    assert not result.handshake_ok
    assert "alert handshake failure" in result.text, result.text
    assert b"anon" not in result.stdout
    ended = inproc_server.wait_event(ConnectionTerminated, since)
    assert ended is not None
    assert ended.alert == AlertDescription.HANDSHAKE_FAILURE and not ended.by_peer, ended


def test_openssl_server_refuses_our_client_without_certificate(files: Files) -> None:
    with openssl_server(files) as server:
        result = d2tls_client(server.port, "--ca", str(files.ca))
        assert result["ok"] is False
        assert result["alert"] == "handshake_failure", result
        assert result["alert_from_peer"] is True
        assert server.wait_for("peer did not return a certificate"), server.output()


def test_our_client_rejects_expired_server_certificate(files: Files) -> None:
    with openssl_server(
        files, cert=files.expired_server.cert, key=files.expired_server.key
    ) as server:
        result = d2tls_client(server.port, *files.client_args())
        assert result["ok"] is False
        assert result["alert"] == "certificate_expired", result
        assert result["alert_from_peer"] is False
        assert server.wait_for("alert certificate expired"), server.output()


def test_our_server_rejects_expired_client_certificate(
    files: Files, inproc_server: InProcessServer
) -> None:
    since = inproc_server.mark()
    result = OpenSSLClient(
        inproc_server.port,
        cert=files.expired_client.cert,
        key=files.expired_client.key,
        ca=files.ca,
    ).run(b"late\n", linger=0.5)
    assert not result.handshake_ok
    assert "alert certificate expired" in result.text, result.text
    ended = inproc_server.wait_event(ConnectionTerminated, since)
    assert ended is not None
    assert ended.alert == AlertDescription.CERTIFICATE_EXPIRED and not ended.by_peer, ended


def test_openssl_server_rejects_our_expired_client_certificate(files: Files) -> None:
    with openssl_server(files) as server:
        result = d2tls_client(server.port, *files.client_args(device=files.expired_client))
        assert result["ok"] is False
        assert result["alert"] == "certificate_expired", result
        assert result["alert_from_peer"] is True
        assert server.wait_for("certificate has expired"), server.output()
