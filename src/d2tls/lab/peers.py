"""Third-party DTLS 1.2 peers (OpenSSL 3.0, GnuTLS 3.7 tools, mbedTLS 2.28 ssl_server2) as
subprocesses.

Used by the interop tests and the conformance suite. Only loopback addresses or network
namespaces created here are ever used.

Observed behaviour (OpenSSL 3.0.19, GnuTLS 3.7.9):

* **Cookie exchange.** ``openssl s_server`` in DTLS mode always sends a HelloVerifyRequest
  (20-byte cookie), with or without ``-listen``; ``-listen`` only makes the cookie round
  stateless (``DTLSv1_listen``). ``gnutls-serv --udp`` sends a HelloVerifyRequest with a
  16-byte cookie unless ``--nocookie`` is given.
* **CCM-8.** Both tools negotiate TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8, ..._AES_128_GCM_SHA256
  and TLS_PSK_WITH_AES_128_CCM_8 in DTLS 1.2. GnuTLS's ``NORMAL`` priority omits CCM-8 and
  PSK: add ``+AES-128-CCM-8:+PSK`` (see :data:`GNUTLS_PRIORITY`); it then still prefers
  AES-256-GCM unless the client restricts its offer. OpenSSL's ``DEFAULT`` cipher list has
  no CCM-8 and no PSK suite, ``ALL`` has all three (hence ``-cipher ALL`` by default here).
* **Client certificates.** ``gnutls-serv --require-client-cert`` only requires *a*
  certificate and accepts one from an unknown CA; ``--verify-client-cert`` must be added to
  verify it (it then sends ``access_denied``). ``s_server -Verify 1 -verify_return_error``
  refuses an unknown CA with ``unknown_ca``.
* **PSK hint.** ``s_server`` sends no ServerKeyExchange hint unless ``-psk_hint`` is given;
  ``gnutls-serv`` sends one only with ``--pskhint``. ``gnutls-serv --pskpasswd`` reads the
  same ``identity:HEX`` lines as :func:`d2tls.core.pki.init_pki`'s ``psk.txt``.
* **Received data.** ``s_server`` writes decrypted application data verbatim to stdout
  (interleaved with its status lines); it echoes nothing, but bytes written to its stdin are
  sent to the client (one-letter lines such as ``Q``, ``q``, ``r``, ``R`` are commands).
  ``s_server`` exits when its stdin reaches EOF, so stdin is kept open as a pipe.
  ``gnutls-serv`` prints ``*** Processing N bytes command: DATA``; with ``--echo`` it sends
  the data back, without it parses it as HTTP.
* **Connections.** ``s_server`` serves one connection at a time and loops (``-naccept N``
  exits after N); ``gnutls-serv`` serves connections until killed.
* **Resumption.** ``s_server`` keeps a session cache and also issues RFC 5077 tickets when
  the client offers the extension (``-no_ticket`` forces session-ID resumption);
  ``s_client -sess_out``/``-sess_in`` prints ``Reused`` on success. ``gnutls-serv`` resumes
  by session ID (disable with ``--nodb``) and by ticket (``--noticket``); ``gnutls-cli
  --resume`` connects twice and prints ``*** This is a resumed session``.
* **Chains.** ``s_server`` appends CA certificates found in ``-CAfile`` to its Certificate
  message (leaf + CA); gnutls sends only the file given in ``--x509certfile``.
* **Binding.** ``gnutls-serv`` has no bind-address option and listens on 0.0.0.0 and ::,
  hence :class:`GnuTLSServer` runs it inside a private :class:`NetNamespace` whose only
  interface is its own loopback.
* **One client at a time.** ``gnutls-serv --udp`` handles one association at a time and its
  accept loop (src/udp-serv.c) peeks at the next datagram and skips anything that is not a
  ClientHello *without consuming it*: one stray record wedges it until it is restarted.
* **mbedTLS 2.28.3** (Debian's source package; ``ssl_server2`` built by
  ``scripts/build-mbedtls.sh``, see :class:`MbedTLSServer`): cookie exchange on by default
  (32-byte cookie), binds only ``server_addr``, serves one connection at a time, answers the
  first application record with a fixed HTTP-like page and close_notify (no echo), resumes by
  session ID, and does not check the extended master secret when resuming (it keeps no EMS
  flag in its cached sessions, RFC 7627 §5.3). ``auth_mode=required`` verifies the client
  chain against ``ca_file``.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, Self

from d2tls.core.dtls.constants import CIPHER_SUITE_NAMES, CipherSuite
from d2tls.core.errors import D2TLSError

#: GnuTLS priority enabling the three d2tls suites (and GnuTLS's defaults) in DTLS 1.2 only.
GNUTLS_PRIORITY = "NORMAL:-VERS-ALL:+VERS-DTLS1.2:+AES-128-CCM-8:+PSK:+ECDHE-PSK"
#: GnuTLS priorities that offer exactly one d2tls suite.
GNUTLS_SUITE_PRIORITY: dict[CipherSuite, str] = {
    CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8: (
        "NORMAL:-VERS-ALL:+VERS-DTLS1.2:-CIPHER-ALL:+AES-128-CCM-8:-KX-ALL:+ECDHE-ECDSA"
    ),
    CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256: (
        "NORMAL:-VERS-ALL:+VERS-DTLS1.2:-CIPHER-ALL:+AES-128-GCM:-KX-ALL:+ECDHE-ECDSA"
    ),
    CipherSuite.TLS_PSK_WITH_AES_128_CCM_8: (
        "NORMAL:-VERS-ALL:+VERS-DTLS1.2:-CIPHER-ALL:+AES-128-CCM-8:-KX-ALL:+PSK"
    ),
    CipherSuite.TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256: (
        "NORMAL:-VERS-ALL:+VERS-DTLS1.2:-CIPHER-ALL:+CHACHA20-POLY1305:-KX-ALL:+ECDHE-PSK"
    ),
}
#: GnuTLS priority for RFC 7250 raw public keys (server and client) with ECDHE-ECDSA AES-128-CCM-8.
GNUTLS_RAWPK_PRIORITY = (
    GNUTLS_SUITE_PRIORITY[CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8]
    + ":+CTYPE-SRV-RAWPK:+CTYPE-CLI-RAWPK"
)
#: d2tls suites that OpenSSL 3.0, GnuTLS 3.7 and mbedTLS 2.28 lack (of the peers here, only
#: wolfSSL 5.5 has RFC 8442's ECDHE-PSK-AES128-GCM-SHA256).
WOLFSSL_ONLY_SUITES = frozenset({CipherSuite.TLS_ECDHE_PSK_WITH_AES_128_GCM_SHA256})
#: OpenSSL cipher names of the d2tls suites.
OPENSSL_SUITE_NAMES: dict[CipherSuite, str] = {
    s: n for n, s in CIPHER_SUITE_NAMES.items() if s not in WOLFSSL_ONLY_SUITES
}

DEFAULT_TIMEOUT = 10.0
ClientAuthMode = Literal["none", "optional", "required"]
_Redirect = int | IO[bytes] | None


class PeerError(D2TLSError):
    """A third-party peer could not be found, started or driven."""


def require_tool(name: str) -> str:
    """Absolute path of executable ``name``; :class:`PeerError` if it is not installed."""
    path = shutil.which(name)
    if path is None:
        raise PeerError(f"{name} not found in PATH (run scripts/setup.sh)")
    return path


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port that is currently free on ``host`` (loopback)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --------------------------------------------------------------------------- output capture


class OutputCapture:
    """Collects a pipe in a background thread (optionally teeing to a log file)."""

    def __init__(self, stream: IO[bytes], log_path: Path | None = None) -> None:
        self._data = bytearray()
        self._cond = threading.Condition()
        self._closed = False
        self._log = log_path.open("ab") if log_path is not None else None
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[bytes]) -> None:
        fd = stream.fileno()
        try:
            while chunk := os.read(fd, 65536):
                with self._cond:
                    self._data += chunk
                    if self._log is not None:
                        self._log.write(chunk)
                        self._log.flush()
                    self._cond.notify_all()
        except OSError:
            pass
        finally:
            with self._cond:
                self._closed = True
                if self._log is not None:
                    self._log.close()
                self._cond.notify_all()
            stream.close()

    def data(self) -> bytes:
        """Everything read so far."""
        with self._cond:
            return bytes(self._data)

    def text(self) -> str:
        """Everything read so far, decoded leniently."""
        return self.data().decode("utf-8", "replace")

    def wait_for(self, needle: bytes | re.Pattern[bytes], timeout: float) -> bool:
        """Wait until ``needle`` (bytes or regex) appears; False on timeout or EOF."""
        deadline = time.monotonic() + timeout

        def found() -> bool:
            if isinstance(needle, re.Pattern):
                return needle.search(self._data) is not None
            return needle in self._data

        with self._cond:
            while not found():
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def join(self, timeout: float = 2.0) -> None:
        """Wait for EOF on the pipe."""
        self._thread.join(timeout)


# --------------------------------------------------------------------------- namespaces


class NetNamespace:
    """A private network namespace (``ip netns``) with only its loopback interface up.

    Needs root (CAP_SYS_ADMIN). Processes started with :meth:`popen`/:meth:`run` live inside
    it; on exit every process still in the namespace is killed and the namespace deleted.
    """

    def __init__(self, prefix: str = "d2tls") -> None:
        self.name = f"{prefix}-{secrets.token_hex(4)}"
        self._created = False

    def __enter__(self) -> Self:
        self.create()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def create(self) -> None:
        """Create the namespace and bring up its loopback."""
        ip = require_tool("ip")
        result = subprocess.run(
            [ip, "netns", "add", self.name], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise PeerError(
                f"cannot create network namespace {self.name} (ip netns needs root / "
                f"CAP_SYS_ADMIN): {result.stderr.strip()}"
            )
        self._created = True
        up = self.run(["ip", "link", "set", "lo", "up"], timeout=DEFAULT_TIMEOUT)
        if up.returncode != 0:
            self.close()
            raise PeerError(f"cannot bring up lo in {self.name}: {up.stderr!r}")

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed so that it runs inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def popen(
        self,
        argv: Sequence[str],
        *,
        stdin: _Redirect = None,
        stdout: _Redirect = None,
        stderr: _Redirect = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside the namespace (redirections as for ``subprocess.Popen``)."""
        return subprocess.Popen(
            self.command(argv), stdin=stdin, stdout=stdout, stderr=stderr, env=env
        )

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` inside the namespace to completion, capturing output."""
        return subprocess.run(
            self.command(argv), input=input, capture_output=True, timeout=timeout, check=False
        )

    def pids(self) -> list[int]:
        """PIDs of the processes currently inside the namespace."""
        result = subprocess.run(
            ["ip", "netns", "pids", self.name], capture_output=True, text=True, check=False
        )
        return [int(p) for p in result.stdout.split() if p.isdigit()]

    def close(self) -> None:
        """Kill the processes left in the namespace and delete it (idempotent)."""
        if not self._created:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 2.0
            while pids and time.monotonic() < deadline:
                time.sleep(0.05)
                pids = self.pids()
            if not pids:
                break
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
        self._created = False


# --------------------------------------------------------------------------- servers


class _ServerProcess(ABC):
    """A long-running peer with captured stdout+stderr; a context manager."""

    tool = ""
    ready_marker: bytes | re.Pattern[bytes] = b""

    def __init__(self, log_path: Path | None, ready_timeout: float) -> None:
        self.log_path = log_path
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._capture: OutputCapture | None = None

    @abstractmethod
    def argv(self) -> list[str]:
        """The full command line."""

    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

    def start(self) -> None:
        """Start the peer and wait until it is ready to accept a ClientHello."""
        self.process = self._spawn(self.argv())
        assert self.process.stdout is not None
        self._capture = OutputCapture(self.process.stdout, self.log_path)
        if not self._capture.wait_for(self.ready_marker, self.ready_timeout):
            self.stop()
            raise PeerError(f"{self.tool} did not become ready:\n{self.output()}")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def output(self) -> str:
        """Everything the peer printed so far (stdout and stderr)."""
        return self._capture.text() if self._capture is not None else ""

    def wait_for(self, text: str | bytes, timeout: float = DEFAULT_TIMEOUT) -> bool:
        """Wait until ``text`` appears in the peer's output (e.g. received data)."""
        needle = text.encode() if isinstance(text, str) else text
        return self._capture is not None and self._capture.wait_for(needle, timeout)

    @property
    def returncode(self) -> int | None:
        """Exit status, or None while running."""
        return self.process.poll() if self.process is not None else None

    def stop(self) -> None:
        """Terminate the peer (SIGTERM, then SIGKILL) and collect its output."""
        proc = self.process
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=3)
        if self._capture is not None:
            self._capture.join()


class OpenSSLServer(_ServerProcess):
    """``openssl s_server -dtls1_2`` on a loopback address.

    ``cert``/``key`` select certificate suites (``None`` with a ``psk`` gives ``-nocert``, a
    PSK-only server). ``client_auth="required"`` maps to ``-Verify 1 -verify_return_error``.
    Data the client sends shows up in :meth:`output`; :meth:`send` writes to the client.
    """

    tool = "openssl s_server"
    ready_marker = b"ACCEPT"

    def __init__(
        self,
        *,
        cert: Path | None = None,
        key: Path | None = None,
        ca: Path | None = None,
        client_auth: ClientAuthMode = "required",
        psk: tuple[bytes, bytes] | None = None,
        psk_hint: str | None = None,
        cipher: str = "ALL",
        host: str = "127.0.0.1",
        port: int | None = None,
        mtu: int | None = None,
        naccept: int | None = None,
        listen: bool = False,
        no_ticket: bool = False,
        extra_args: Sequence[str] = (),
        log_path: Path | None = None,
        ready_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(log_path, ready_timeout)
        if (cert is None) != (key is None):
            raise ValueError("cert and key go together")
        if cert is None and psk is None:
            raise ValueError("OpenSSLServer needs a certificate or a PSK")
        if client_auth != "none" and ca is None:
            raise ValueError("client authentication needs a CA file")
        self.cert, self.key, self.ca = cert, key, ca
        self.client_auth = client_auth
        self.psk, self.psk_hint = psk, psk_hint
        self.cipher = cipher
        self.host = host
        self._auto_port = port is None
        self.port = port if port is not None else free_udp_port(host)
        self.mtu, self.naccept = mtu, naccept
        self.listen, self.no_ticket = listen, no_ticket
        self.extra_args = list(extra_args)

    def argv(self) -> list[str]:
        """The ``openssl s_server`` command line."""
        argv = [require_tool("openssl"), "s_server", "-dtls1_2"]
        argv += ["-accept", _hostport(self.host, self.port), "-cipher", self.cipher]
        if self.cert is not None and self.key is not None:
            argv += ["-cert", str(self.cert), "-key", str(self.key)]
        else:
            argv.append("-nocert")
        if self.ca is not None:
            argv += ["-CAfile", str(self.ca)]
        if self.client_auth == "required":
            argv += ["-Verify", "1", "-verify_return_error"]
        elif self.client_auth == "optional":
            argv += ["-verify", "1", "-verify_return_error"]
        if self.psk is not None:
            identity, key = self.psk
            argv += ["-psk_identity", identity.decode(), "-psk", key.hex()]
        if self.psk_hint is not None:
            argv += ["-psk_hint", self.psk_hint]
        if self.mtu is not None:
            argv += ["-mtu", str(self.mtu)]
        if self.naccept is not None:
            argv += ["-naccept", str(self.naccept)]
        if self.listen:
            argv.append("-listen")
        if self.no_ticket:
            argv.append("-no_ticket")
        return argv + self.extra_args

    def start(self) -> None:
        """Start s_server; when the port was chosen here and is taken meanwhile, retry."""
        for attempt in range(3):
            try:
                super().start()
                return
            except PeerError:
                bind_failed = "bind" in self.output().lower() or "in use" in self.output()
                if not self._auto_port or attempt == 2 or not bind_failed:
                    raise
                self.port = free_udp_port(self.host)

    def send(self, data: bytes) -> None:
        """Send ``data`` to the connected client (via s_server's stdin)."""
        if self.process is None or self.process.stdin is None:
            raise PeerError("s_server is not running")
        self.process.stdin.write(data)
        self.process.stdin.flush()


class GnuTLSServer(_ServerProcess):
    """``gnutls-serv --udp`` inside a private :class:`NetNamespace` (its own loopback only).

    Reach it at ``127.0.0.1:port`` from inside :attr:`namespace` (``namespace.popen``).
    A namespace is created (and deleted on stop) unless one is passed in.
    """

    tool = "gnutls-serv"
    ready_marker = re.compile(rb"listening on IPv4 .*done")

    def __init__(
        self,
        *,
        cert: Path | None = None,
        key: Path | None = None,
        ca: Path | None = None,
        client_auth: ClientAuthMode = "required",
        psk_file: Path | None = None,
        psk_hint: str | None = None,
        rawpk: tuple[Path, Path] | None = None,
        priority: str = GNUTLS_PRIORITY,
        port: int = 5684,
        mtu: int | None = None,
        echo: bool = True,
        cookie: bool = True,
        resumption: bool = True,
        tickets: bool = True,
        namespace: NetNamespace | None = None,
        extra_args: Sequence[str] = (),
        log_path: Path | None = None,
        ready_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(log_path, ready_timeout)
        if (cert is None) != (key is None):
            raise ValueError("cert and key go together")
        if cert is None and psk_file is None and rawpk is None:
            raise ValueError("GnuTLSServer needs a certificate, a raw key or a PSK file")
        if client_auth != "none" and ca is None:
            raise ValueError("client authentication needs a CA file")
        self.cert, self.key, self.ca = cert, key, ca
        self.client_auth = client_auth
        self.psk_file, self.psk_hint = psk_file, psk_hint
        self.rawpk = rawpk  # (PEM public key, PEM private key), RFC 7250
        self.priority = priority
        self.host = "127.0.0.1"
        self.port = port
        self.mtu = mtu
        self.echo, self.cookie = echo, cookie
        self.resumption, self.tickets = resumption, tickets
        self.extra_args = list(extra_args)
        self._own_namespace = namespace is None
        self.namespace = namespace if namespace is not None else NetNamespace()

    def argv(self) -> list[str]:
        """The ``gnutls-serv`` command line (without the ``ip netns exec`` prefix)."""
        argv = [require_tool("gnutls-serv"), "--udp", "--port", str(self.port)]
        argv += ["--priority", self.priority]
        if self.cert is not None and self.key is not None:
            argv += ["--x509certfile", str(self.cert), "--x509keyfile", str(self.key)]
        if self.rawpk is not None:
            argv += ["--rawpkfile", str(self.rawpk[0]), "--rawpkkeyfile", str(self.rawpk[1])]
        if self.ca is not None:
            argv += ["--x509cafile", str(self.ca)]
        if self.client_auth == "required":
            argv += ["--require-client-cert", "--verify-client-cert"]
        elif self.client_auth == "optional":
            argv.append("--verify-client-cert")
        else:
            argv.append("--disable-client-cert")
        if self.psk_file is not None:
            argv += ["--pskpasswd", str(self.psk_file)]
        if self.psk_hint is not None:
            argv += ["--pskhint", self.psk_hint]
        if self.mtu is not None:
            argv += ["--mtu", str(self.mtu)]
        if self.echo:
            argv.append("--echo")
        if not self.cookie:
            argv.append("--nocookie")
        if not self.resumption:
            argv.append("--nodb")
        if not self.tickets:
            argv.append("--noticket")
        return argv + self.extra_args

    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        return self.namespace.popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

    def start(self) -> None:
        """Create the namespace if needed, then start gnutls-serv in it."""
        if self._own_namespace:
            self.namespace.create()
        try:
            super().start()
        except BaseException:
            if self._own_namespace:
                self.namespace.close()
            raise

    def stop(self) -> None:
        """Terminate gnutls-serv (and delete the namespace if it is ours)."""
        super().stop()
        if self._own_namespace:
            self.namespace.close()


#: Where scripts/build-mbedtls.sh puts ssl_server2 (override with D2TLS_MBEDTLS_DIR).
MBEDTLS_DIR = Path(os.environ.get("D2TLS_MBEDTLS_DIR", "/var/cache/d2tls/mbedtls"))


def built_program(directory: Path, name: str, script: str) -> Path:
    """``directory/bin/name`` as a build script of ours left it; :class:`PeerError` naming
    ``script`` if it is absent or not executable."""
    path = directory / "bin" / name
    if not os.access(path, os.X_OK):
        raise PeerError(f"{path} not found: run scripts/{script} (or scripts/setup.sh)")
    return path


def built_version(directory: Path, fallback: str) -> str:
    """The version a build script recorded in ``directory/bin/VERSION``, else ``fallback``."""
    version = directory / "bin" / "VERSION"
    return version.read_text().strip() if version.exists() else fallback


def mbedtls_server_program() -> Path:
    """The ssl_server2 built by ``scripts/build-mbedtls.sh``; :class:`PeerError` if absent."""
    return built_program(MBEDTLS_DIR, "ssl_server2", "build-mbedtls.sh")


def mbedtls_version() -> str:
    """``mbedtls 2.28.3-1 (Debian source package)``, as recorded by the build script."""
    return built_version(MBEDTLS_DIR, "mbedtls (unknown version)")


class MbedTLSServer(_ServerProcess):
    """mbedTLS's ``ssl_server2`` sample program in DTLS 1.2 mode on a loopback address.

    Built from Debian's mbedtls source package by ``scripts/build-mbedtls.sh``. It serves one
    connection at a time: after a handshake and one request/response ``exchanges`` it sends a
    fixed HTTP-like answer (no echo) and close_notify, then waits for the next client.
    ``hs_timeout`` (ms, ``min-max``) bounds retransmission so an abandoned handshake frees the
    server quickly; ``read_timeout`` (ms) does the same for an idle established connection.
    """

    tool = "ssl_server2"
    ready_marker = b"Waiting for a remote connection"

    def __init__(
        self,
        *,
        cert: Path,
        key: Path,
        ca: Path,
        client_auth: ClientAuthMode = "required",
        psk: tuple[bytes, bytes] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        mtu: int | None = None,
        cookies: bool = True,
        hs_timeout: str = "200-1600",
        read_timeout: int = 2000,
        extra_args: Sequence[str] = (),
        log_path: Path | None = None,
        ready_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(log_path, ready_timeout)
        self.cert, self.key, self.ca = cert, key, ca
        self.client_auth = client_auth
        self.psk = psk
        self.host = host
        self.port = port if port is not None else free_udp_port(host)
        self.mtu, self.cookies = mtu, cookies
        self.hs_timeout, self.read_timeout = hs_timeout, read_timeout
        self.extra_args = list(extra_args)

    def argv(self) -> list[str]:
        """The ``ssl_server2`` command line (key=value arguments)."""
        argv = [
            str(mbedtls_server_program()),
            "dtls=1",
            "force_version=dtls12",
            f"server_addr={self.host}",
            f"server_port={self.port}",
            f"crt_file={self.cert}",
            f"key_file={self.key}",
            f"ca_file={self.ca}",
            f"auth_mode={self.client_auth}",
            f"cookies={1 if self.cookies else 0}",
            f"hs_timeout={self.hs_timeout}",
            f"read_timeout={self.read_timeout}",
        ]
        if self.psk is not None:
            identity, key = self.psk
            argv += [f"psk={key.hex()}", f"psk_identity={identity.decode()}"]
        if self.mtu is not None:
            argv.append(f"mtu={self.mtu}")
        return argv + self.extra_args


# --------------------------------------------------------------------------- clients


_OPENSSL_RESULT = re.compile(r"^(New|Reused), (\S+), Cipher is (\S+)", re.MULTILINE)
_GNUTLS_DESCRIPTION = re.compile(r"^- Description: (.*)$", re.MULTILINE)


@dataclass(frozen=True)
class ClientResult(ABC):
    """Outcome of one client run."""

    argv: tuple[str, ...]
    returncode: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool

    @property
    def text(self) -> str:
        """stdout and stderr, decoded leniently."""
        return (self.stdout + b"\n" + self.stderr).decode("utf-8", "replace")

    @property
    @abstractmethod
    def handshake_ok(self) -> bool:
        """Whether a handshake completed."""

    @property
    @abstractmethod
    def resumed(self) -> bool:
        """Whether the (last) handshake resumed a session."""

    @property
    @abstractmethod
    def suite(self) -> CipherSuite | None:
        """The negotiated d2tls suite, if it is one of ours."""


@dataclass(frozen=True)
class OpenSSLResult(ClientResult):
    """``openssl s_client`` outcome (parses ``New|Reused, TLSv1.2, Cipher is X``)."""

    def _match(self) -> re.Match[str] | None:
        matches = list(_OPENSSL_RESULT.finditer(self.text))
        return matches[-1] if matches else None

    @property
    def cipher(self) -> str | None:
        """OpenSSL name of the negotiated cipher, or None."""
        m = self._match()
        return m.group(3) if m is not None and m.group(3) != "(NONE)" else None

    @property
    def handshake_ok(self) -> bool:
        """A cipher was negotiated and s_client exited cleanly."""
        return self.cipher is not None and self.returncode == 0

    @property
    def resumed(self) -> bool:
        """s_client printed ``Reused``."""
        m = self._match()
        return m is not None and m.group(1) == "Reused"

    @property
    def suite(self) -> CipherSuite | None:
        """The negotiated d2tls suite."""
        cipher = self.cipher
        return CIPHER_SUITE_NAMES.get(cipher) if cipher is not None else None


@dataclass(frozen=True)
class GnuTLSResult(ClientResult):
    """``gnutls-cli`` outcome (parses ``- Description: (...)-(...)``)."""

    @property
    def description(self) -> str | None:
        """The last ``- Description:`` line, e.g. ``(DTLS1.2-PSK)-(PSK)-(AES-128-CCM-8)``."""
        matches = _GNUTLS_DESCRIPTION.findall(self.text)
        return str(matches[-1]) if matches else None

    @property
    def handshake_ok(self) -> bool:
        """gnutls-cli reported a completed handshake and exited cleanly."""
        return "Handshake was completed" in self.text and self.returncode == 0

    @property
    def resumed(self) -> bool:
        """gnutls-cli printed ``This is a resumed session``."""
        return "This is a resumed session" in self.text

    @property
    def suite(self) -> CipherSuite | None:
        """The negotiated d2tls suite, derived from the description."""
        desc = self.description
        if desc is None:
            return None
        parts = re.findall(r"\(([^)]*)\)", desc)
        cipher = parts[-1] if parts else ""
        kx = parts[1] if len(parts) > 1 else ""
        if kx == "PSK" and cipher == "AES-128-CCM-8":
            return CipherSuite.TLS_PSK_WITH_AES_128_CCM_8
        if kx.startswith("ECDHE-PSK") and cipher == "CHACHA20-POLY1305":
            return CipherSuite.TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256
        if ("X.509" in parts[0] or "Raw Public Key" in parts[0]) and kx.startswith("ECDHE"):
            if cipher == "AES-128-CCM-8":
                return CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8
            if cipher == "AES-128-GCM":
                return CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        return None


def _run_client(
    argv: list[str],
    data: bytes,
    *,
    expect: bytes | None,
    linger: float,
    timeout: float,
) -> tuple[int | None, bytes, bytes, bool]:
    """Feed ``data`` to a client, keep stdin open until ``expect`` shows up (or ``linger``
    seconds pass, or the client exits), then close stdin and wait for the exit."""
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    out = OutputCapture(proc.stdout)
    err = OutputCapture(proc.stderr)
    deadline = time.monotonic() + timeout
    timed_out = False
    try:
        with contextlib.suppress(OSError):
            proc.stdin.write(data)
            proc.stdin.flush()
        wait_until = deadline if expect is not None else time.monotonic() + linger
        while proc.poll() is None and time.monotonic() < wait_until:
            if expect is not None and out.wait_for(expect, 0.05):
                break
            time.sleep(0.02)
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()
            proc.wait(timeout=3)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=3)
        out.join()
        err.join()
    return proc.returncode, out.data(), err.data(), timed_out


class OpenSSLClient:
    """``openssl s_client -dtls1_2`` against ``host:port``.

    ``run`` sends stdin data and returns an :class:`OpenSSLResult`. Command letters are
    disabled (``-nocommands``), so a line ``Q`` is sent as data. ``cipher`` defaults to
    ``ALL`` (OpenSSL's default list lacks CCM-8 and PSK); ``None`` omits ``-cipher``.
    """

    def __init__(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        cert: Path | None = None,
        key: Path | None = None,
        ca: Path | None = None,
        verify_hostname: str | None = None,
        cipher: str | None = "ALL",
        psk: tuple[bytes, bytes] | None = None,
        sess_out: Path | None = None,
        sess_in: Path | None = None,
        mtu: int | None = None,
        no_ticket: bool = False,
        extra_args: Sequence[str] = (),
        namespace: NetNamespace | None = None,
    ) -> None:
        if (cert is None) != (key is None):
            raise ValueError("cert and key go together")
        self.port, self.host = port, host
        self.cert, self.key, self.ca = cert, key, ca
        self.verify_hostname = verify_hostname
        self.cipher, self.psk = cipher, psk
        self.sess_out, self.sess_in = sess_out, sess_in
        self.mtu, self.no_ticket = mtu, no_ticket
        self.extra_args = list(extra_args)
        self.namespace = namespace

    def argv(self) -> list[str]:
        """The full command line (with the namespace prefix if any)."""
        argv = [require_tool("openssl"), "s_client", "-dtls1_2", "-nocommands"]
        argv += ["-connect", _hostport(self.host, self.port)]
        if self.cert is not None and self.key is not None:
            argv += ["-cert", str(self.cert), "-key", str(self.key)]
        if self.ca is not None:
            argv += ["-CAfile", str(self.ca), "-verify_return_error"]
        if self.verify_hostname is not None:
            argv += ["-verify_hostname", self.verify_hostname]
        if self.cipher is not None:
            argv += ["-cipher", self.cipher]
        if self.psk is not None:
            identity, key = self.psk
            argv += ["-psk_identity", identity.decode(), "-psk", key.hex()]
        if self.sess_out is not None:
            argv += ["-sess_out", str(self.sess_out)]
        if self.sess_in is not None:
            argv += ["-sess_in", str(self.sess_in)]
        if self.mtu is not None:
            argv += ["-mtu", str(self.mtu)]
        if self.no_ticket:
            argv.append("-no_ticket")
        argv += self.extra_args
        return self.namespace.command(argv) if self.namespace is not None else argv

    def run(
        self,
        data: bytes = b"",
        *,
        expect: bytes | None = None,
        linger: float = 1.0,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> OpenSSLResult:
        """Connect, send ``data``, wait for ``expect`` (or ``linger`` s), close."""
        argv = self.argv()
        rc, out, err, timed_out = _run_client(
            argv, data, expect=expect, linger=linger, timeout=timeout
        )
        return OpenSSLResult(tuple(argv), rc, out, err, timed_out)


_MBEDTLS_SUITE = re.compile(r"\[ Ciphersuite is (\S+) \]")


@dataclass(frozen=True)
class MbedTLSResult(ClientResult):
    """``ssl_client2`` outcome (``[ Ciphersuite is X ]``; resumption from its debug log)."""

    @property
    def handshakes(self) -> int:
        """Handshakes that completed (1, or 2 with ``reconnect=1``): debug lines
        ``<= handshake wrapup``, which only a finished handshake reaches."""
        return len(re.findall(r"\|3\| <= handshake wrapup$", self.text, re.MULTILINE))

    @property
    def handshake_ok(self) -> bool:
        """Every handshake completed and ssl_client2 exited cleanly."""
        return self.handshakes > 0 and self.returncode == 0 and not self.timed_out

    @property
    def resumed(self) -> bool:
        """The last handshake resumed (``|3| a session has been resumed``, debug_level 3)."""
        lines = re.findall(r"(a|no) session has been resumed", self.text)
        return bool(lines) and lines[-1] == "a"

    @property
    def suite(self) -> CipherSuite | None:
        """The negotiated d2tls suite (``TLS-PSK-WITH-AES-128-CCM-8`` -> the enum)."""
        matches = _MBEDTLS_SUITE.findall(self.text)
        if not matches:
            return None
        return CipherSuite.__members__.get(str(matches[-1]).replace("-", "_"))


def mbedtls_client_program() -> Path:
    """The ssl_client2 built by ``scripts/build-mbedtls.sh``; :class:`PeerError` if absent."""
    return built_program(MBEDTLS_DIR, "ssl_client2", "build-mbedtls.sh")


class MbedTLSClient:
    """mbedTLS's ``ssl_client2`` sample program in DTLS 1.2 mode against ``host:port``.

    Built with ``ssl_server2`` by ``scripts/build-mbedtls.sh``. It sends one small HTTP-like
    request per connection and waits ``read_timeout`` ms for an answer; ``reconnect=True``
    connects a second time resuming the session (by session ID). The server certificate is
    verified (``auth_mode=required``) against ``ca`` for ``server_name``. ``debug_level=3`` is
    needed to learn whether a handshake resumed; its log goes to stdout.
    """

    def __init__(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        cert: Path | None = None,
        key: Path | None = None,
        ca: Path | None = None,
        server_name: str = "localhost",
        suite: CipherSuite | None = None,
        psk: tuple[bytes, bytes] | None = None,
        reconnect: bool = False,
        read_timeout: int = 3000,
        hs_timeout: str = "500-4000",
        extra_args: Sequence[str] = (),
    ) -> None:
        if (cert is None) != (key is None):
            raise ValueError("cert and key go together")
        self.port, self.host = port, host
        self.cert, self.key, self.ca = cert, key, ca
        self.server_name, self.suite, self.psk = server_name, suite, psk
        self.reconnect = reconnect
        self.read_timeout, self.hs_timeout = read_timeout, hs_timeout
        self.extra_args = list(extra_args)

    def argv(self) -> list[str]:
        """The ``ssl_client2`` command line (key=value arguments)."""
        argv = [
            str(mbedtls_client_program()),
            "dtls=1",
            "force_version=dtls12",
            f"server_addr={self.host}",
            f"server_port={self.port}",
            f"server_name={self.server_name}",
            f"read_timeout={self.read_timeout}",
            f"hs_timeout={self.hs_timeout}",
            "debug_level=3",
            f"reconnect={1 if self.reconnect else 0}",
        ]
        if self.ca is not None:
            argv += [f"ca_file={self.ca}", "auth_mode=required"]
        else:
            argv.append("auth_mode=none")
        if self.cert is not None and self.key is not None:
            argv += [f"crt_file={self.cert}", f"key_file={self.key}"]
        else:
            argv += ["crt_file=none", "key_file=none"]
        if self.psk is not None:
            identity, key = self.psk
            argv += [f"psk={key.hex()}", f"psk_identity={identity.decode()}"]
        if self.suite is not None:
            argv.append(f"force_ciphersuite={self.suite.name.replace('_', '-')}")
        return argv + self.extra_args

    def run(self, *, timeout: float = 3 * DEFAULT_TIMEOUT) -> MbedTLSResult:
        """Connect (twice with ``reconnect``), exchange one request each, close."""
        argv = self.argv()
        rc, out, err, timed_out = _run_client(argv, b"", expect=None, linger=0.0, timeout=timeout)
        return MbedTLSResult(tuple(argv), rc, out, err, timed_out)


class GnuTLSClient:
    """``gnutls-cli --udp`` against ``host:port`` (inside ``namespace`` if given).

    ``psk`` is ``(identity, key)``; ``resume=True`` connects twice and reports whether the
    second handshake resumed. Without ``verify_hostname`` the certificate is checked
    against ``host`` (an IP literal matches an iPAddress SAN).
    """

    def __init__(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        cert: Path | None = None,
        key: Path | None = None,
        ca: Path | None = None,
        verify_hostname: str | None = None,
        priority: str = GNUTLS_PRIORITY,
        psk: tuple[bytes, bytes] | None = None,
        rawpk: tuple[Path, Path] | None = None,
        resume: bool = False,
        mtu: int | None = None,
        insecure: bool = False,
        extra_args: Sequence[str] = (),
        namespace: NetNamespace | None = None,
    ) -> None:
        if (cert is None) != (key is None):
            raise ValueError("cert and key go together")
        self.port, self.host = port, host
        self.cert, self.key, self.ca = cert, key, ca
        self.verify_hostname = verify_hostname
        self.priority, self.psk = priority, psk
        self.rawpk = rawpk  # (PEM public key, PEM private key), RFC 7250
        self.resume, self.mtu, self.insecure = resume, mtu, insecure
        self.extra_args = list(extra_args)
        self.namespace = namespace

    def argv(self) -> list[str]:
        """The full command line (with the namespace prefix if any)."""
        argv = [require_tool("gnutls-cli"), "--udp", "--port", str(self.port)]
        argv += ["--priority", self.priority]
        if self.cert is not None and self.key is not None:
            argv += ["--x509certfile", str(self.cert), "--x509keyfile", str(self.key)]
        if self.ca is not None:
            argv += ["--x509cafile", str(self.ca)]
        if self.verify_hostname is not None:
            argv += ["--verify-hostname", self.verify_hostname]
        if self.rawpk is not None:
            argv += ["--rawpkfile", str(self.rawpk[0]), "--rawpkkeyfile", str(self.rawpk[1])]
        if self.psk is not None:
            identity, key = self.psk
            argv += ["--pskusername", identity.decode(), "--pskkey", key.hex()]
        if self.resume:
            argv.append("--resume")
        if self.mtu is not None:
            argv += ["--mtu", str(self.mtu)]
        if self.insecure:
            argv.append("--insecure")
        argv += [*self.extra_args, self.host]
        return self.namespace.command(argv) if self.namespace is not None else argv

    def run(
        self,
        data: bytes = b"",
        *,
        expect: bytes | None = None,
        linger: float = 1.0,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> GnuTLSResult:
        """Connect, send ``data``, wait for ``expect`` (or ``linger`` s), close."""
        argv = self.argv()
        rc, out, err, timed_out = _run_client(
            argv, data, expect=expect, linger=linger, timeout=timeout
        )
        return GnuTLSResult(tuple(argv), rc, out, err, timed_out)


# --------------------------------------------------------------------------- wolfSSL

#: Where scripts/build-wolfssl.sh puts wolfssl_server (override with D2TLS_WOLFSSL_DIR).
WOLFSSL_DIR = Path(os.environ.get("D2TLS_WOLFSSL_DIR", "/var/cache/d2tls/wolfssl"))


def wolfssl_server_program() -> Path:
    """The wolfssl_server built by ``scripts/build-wolfssl.sh``; :class:`PeerError` if absent."""
    return built_program(WOLFSSL_DIR, "wolfssl_server", "build-wolfssl.sh")


def wolfssl_version() -> str:
    """``libwolfssl-dev 5.5.4-2+deb12u3 (Debian package)``, as recorded by the build script."""
    return built_version(WOLFSSL_DIR, "wolfssl (unknown version)")


class WolfSSLServer(_ServerProcess):
    """``scripts/peers/wolfssl_server.c`` (wolfSSL 5.5.4 from Debian) on a loopback address.

    Like wolfSSL's example server in DTLS mode: single-threaded, one association at a time
    (datagrams from other clients are dropped meanwhile), blocking ``wolfSSL_accept`` with
    wolfSSL's retransmission timer (1 s, doubling up to ``timeout_max`` s, then it gives the
    handshake up), echo until close_notify or ``idle`` s of silence. Cookie exchange (32-byte
    cookie), EMS, session-ID resumption from wolfSSL's session cache. Debian's build lacks
    ``WOLFSSL_STATIC_PSK``: PSK-AES128-CCM-8 cannot be negotiated (a handshake offering only
    it gets ``handshake_failure``).
    """

    tool = "wolfssl_server"
    ready_marker = b"listening on"

    def __init__(
        self,
        *,
        cert: Path,
        key: Path,
        ca: Path,
        client_auth: ClientAuthMode = "required",
        psk: tuple[bytes, bytes] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        timeout_max: int = 64,
        idle: int = 10,
        ciphers: str | None = None,
        log_path: Path | None = None,
        ready_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(log_path, ready_timeout)
        self.cert, self.key, self.ca = cert, key, ca
        self.client_auth = client_auth
        self.psk = psk
        self.host = host
        self.port = port if port is not None else free_udp_port(host)
        self.timeout_max, self.idle = timeout_max, idle
        self.ciphers = ciphers

    def argv(self) -> list[str]:
        """The ``wolfssl_server`` command line."""
        argv = [str(wolfssl_server_program()), "-a", self.host, "-p", str(self.port)]
        argv += ["-c", str(self.cert), "-k", str(self.key), "-A", str(self.ca)]
        argv += ["-v", self.client_auth, "-t", str(self.timeout_max), "-i", str(self.idle)]
        if self.psk is not None:
            identity, key = self.psk
            argv += ["-s", f"{identity.decode()}:{key.hex()}"]
        if self.ciphers is not None:
            argv += ["-l", self.ciphers]
        return argv
