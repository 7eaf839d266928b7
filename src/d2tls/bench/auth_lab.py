"""The parts of ``d2tls bench auth`` that talk to real components: a TCP delay proxy for the
OCSP responder, a DTLS client driver that can hold its second flight until server
authentication is done, and the DNSSEC-signed DNS hierarchy served by three Knot servers.

Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import queue
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final

from d2tls.core.dtls.client import DTLSClient
from d2tls.core.dtls.config import ClientConfig
from d2tls.core.dtls.constants import ContentType, HandshakeType
from d2tls.core.dtls.events import ConnectionTerminated, HandshakeCompleted
from d2tls.core.dtls.fragments import parse_handshake_fragments
from d2tls.core.dtls.messages import RawPublicKeyCertificate
from d2tls.core.dtls.record import parse_datagram
from d2tls.core.errors import D2TLSError, DecodeError
from d2tls.lab.dns import Dnssec, KnotServer, Zone, free_port

Address = tuple[str, int]
LOOPBACK: Final = "127.0.0.1"
#: Seconds a handshake may take before the bench gives up.
HANDSHAKE_TIMEOUT: Final = 60.0


class AuthBenchError(D2TLSError):
    """A component of ``d2tls bench auth`` failed (the message names which)."""


# --------------------------------------------------------------------------- TCP delay proxy
class TcpDelayProxy:
    """Forward TCP connections to ``target`` with ``delay`` seconds one way in each direction.

    The kernel completes the client's TCP handshake with the proxy at once, so the first
    bytes of each connection wait one extra round trip (2 x ``delay``): the SYN/SYN-ACK that
    a real path would have delayed. Chunks keep their order; ``bytes`` counts the payload
    forwarded both ways.
    """

    def __init__(self, target: Address, delay: float) -> None:
        self.target = target
        self.delay = delay
        self.bytes = 0
        self._lock = threading.Lock()
        self._listen = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listen.bind((LOOPBACK, 0))
        self._listen.listen(16)
        self.address: Address = self._listen.getsockname()[:2]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._start(self._accept)

    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="d2tls-tcp-delay")
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._listen], [], [], 0.2)
            if not ready:
                continue
            try:
                client, _ = self._listen.accept()
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                continue
            self._sockets += [client, upstream]
            for source, sink, handshake in ((client, upstream, True), (upstream, client, False)):
                pending: queue.Queue[tuple[float, bytes]] = queue.Queue()
                self._start(self._read, source, pending, handshake)
                self._start(self._write, sink, pending)

    def _read(
        self, sock: socket.socket, pending: queue.Queue[tuple[float, bytes]], first: bool
    ) -> None:
        extra = 2 * self.delay if first else 0.0
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            pending.put((time.perf_counter() + self.delay + extra, data))
            extra = 0.0
            if not data:
                return

    def _write(self, sock: socket.socket, pending: queue.Queue[tuple[float, bytes]]) -> None:
        while True:
            deadline, data = pending.get()
            wait = deadline - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            if not data:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
                return
            try:
                sock.sendall(data)
            except OSError:
                return
            with self._lock:
                self.bytes += len(data)

    def close(self) -> None:
        self._stop.set()
        for sock in [self._listen, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> TcpDelayProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- OCSP responder
class OcspResponderProcess:
    """``d2tls pki ocsp --pki DIR --listen 127.0.0.1:0`` as a child process (stopped on exit)."""

    def __init__(self, pki_dir: Path) -> None:
        self._argv = [
            sys.executable, "-m", "d2tls.cli", "pki", "ocsp",
            "--pki", str(pki_dir), "--listen", f"{LOOPBACK}:0",
        ]  # fmt: skip
        self.process: subprocess.Popen[str] | None = None
        self.address: Address = (LOOPBACK, 0)

    def __enter__(self) -> OcspResponderProcess:
        self.process = subprocess.Popen(
            self._argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 60)
        line = self.process.stdout.readline() if ready else ""
        marker = "listening on http://"
        if marker not in line:
            self.__exit__(None, None, None)
            raise AuthBenchError(f"the OCSP responder did not start: {line!r}")
        host_port = line.split(marker, 1)[1].strip().rstrip("/")
        host, _, port = host_port.rpartition(":")
        self.address = (host, int(port))
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --------------------------------------------------------------------------- DTLS driver
@dataclass
class HandshakeTiming:
    """Seconds (perf_counter) of one handshake: start, server authenticated, established."""

    started: float
    authenticated: float
    completed: float
    bytes_sent: int = 0
    bytes_received: int = 0

    @property
    def auth_part_ms(self) -> float:
        return 1000 * (self.authenticated - self.started)

    @property
    def after_auth_ms(self) -> float:
        return 1000 * (self.completed - self.authenticated)

    @property
    def total_ms(self) -> float:
        return 1000 * (self.completed - self.started)


def server_raw_key(datagram: bytes) -> bytes | None:
    """The SubjectPublicKeyInfo of an unencrypted, unfragmented RFC 7250 Certificate in
    ``datagram``, or None (how a DANE client sees the key it must match to TLSA)."""
    records, _ = parse_datagram(datagram)
    for record in records:
        if record.content_type != ContentType.HANDSHAKE or record.epoch != 0:
            continue
        try:
            fragments = parse_handshake_fragments(record.fragment)
        except DecodeError:
            continue
        for fragment in fragments:
            whole = fragment.fragment_offset == 0 and fragment.fragment_length == fragment.length
            if fragment.msg_type == HandshakeType.CERTIFICATE and whole:
                try:
                    return RawPublicKeyCertificate.decode(fragment.body).subject_public_key_info
                except DecodeError:
                    return None
    return None


def run_handshake(
    config: ClientConfig,
    server: Address,
    *,
    on_authenticated: Callable[[DTLSClient], None] | None = None,
    before_datagram: Callable[[bytes], None] | None = None,
    timeout: float = HANDSHAKE_TIMEOUT,
) -> HandshakeTiming:
    """A full DTLS handshake of our engine over a UDP socket to ``server``.

    ``before_datagram`` sees each received datagram before the engine does (a DANE check of
    the server's raw key); ``on_authenticated`` runs once the engine has verified the server's
    Certificate flight and *before* the client's next flight leaves (an OCSP check): a client
    does not send its key exchange to a server it has not authenticated yet."""
    client = DTLSClient(config, remote=server)
    sent = received = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(server)
        started = time.perf_counter()
        client.connect(started)
        authenticated: float | None = None
        deadline = started + timeout
        while True:
            now = time.perf_counter()
            if authenticated is None and (client.peer_certificates or client.peer_raw_public_key):
                if on_authenticated is not None:
                    on_authenticated(client)
                authenticated = now = time.perf_counter()
            for datagram, _ in client.datagrams_to_send(now):
                sock.send(datagram)
                sent += len(datagram)
            event = client.next_event()
            while event is not None:
                if isinstance(event, HandshakeCompleted):
                    done = time.perf_counter()
                    return HandshakeTiming(started, authenticated or done, done, sent, received)
                if isinstance(event, ConnectionTerminated):
                    raise AuthBenchError(f"handshake with {server[1]} failed: {event.reason}")
                event = client.next_event()
            if now > deadline:
                raise AuthBenchError(f"handshake with port {server[1]} timed out")
            timer = client.next_timer()
            wait = min(deadline, timer if timer is not None else deadline) - now
            ready, _, _ = select.select([sock], [], [], max(0.0, wait))
            if ready:
                try:
                    data = sock.recv(65535)
                except OSError as exc:
                    raise AuthBenchError(f"handshake with port {server[1]}: {exc}") from exc
                received += len(data)
                if before_datagram is not None:
                    before_datagram(data)
                client.receive_datagram(data, server, time.perf_counter())
            else:
                client.handle_timer(time.perf_counter())


# --------------------------------------------------------------------------- DNS hierarchy
#: The three DNS levels of the dissertation's testbed (section 2.6.2): a root (here the
#: reserved ``test.``, RFC 2606, with a configured trust anchor), a TLD and a second-level
#: domain holding the server.
TOP: Final = "test"
TLD: Final = "example.test"
SLD: Final = "iot.example.test"
SERVER_NAME: Final = "www.iot.example.test"


@dataclass
class DnsHierarchy:
    """Three signed Knot servers, one zone each (a single server would answer every level
    itself instead of referring). ``build`` writes the zones once the ports in front of them
    (relays) and the TLSA data are known."""

    directory: Path
    dnssec: Dnssec
    servers: dict[str, KnotServer] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for zone in (TOP, TLD, SLD):
            self.servers[zone] = KnotServer(
                [Zone(zone)],
                self.directory / zone.replace(".", "_"),
                free_port(),
                dnssec=self.dnssec,
            )

    @property
    def ports(self) -> dict[str, int]:
        return {zone: server.port for zone, server in self.servers.items()}

    def build(self, tlsa: list[str]) -> list[str]:
        """Generate the keys, write the zones (delegations with DS, the server's A record and
        ``tlsa``) and return the trust anchor: the DS lines of ``test.``."""
        for server in self.servers.values():
            server.generate_keys()
        loopback = Zone(TOP).ns_address
        top, tld, sld = (self.servers[z] for z in (TOP, TLD, SLD))
        top.zones[f"{TOP}."] = Zone(
            TOP, delegations={"example": loopback}, records=tuple(tld.ds(TLD))
        )
        tld.zones[f"{TLD}."] = Zone(TLD, delegations={"iot": loopback}, records=tuple(sld.ds(SLD)))
        sld.zones[f"{SLD}."] = Zone(SLD, hosts={"www": [loopback]}, records=tuple(tlsa))
        return top.ds(TOP)

    def start(self) -> None:
        try:
            for server in self.servers.values():
                server.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()


@contextlib.contextmanager
def dns_hierarchy(directory: Path, dnssec: Dnssec) -> Iterator[DnsHierarchy]:
    hierarchy = DnsHierarchy(directory, dnssec)
    try:
        yield hierarchy
    finally:
        hierarchy.stop()


__all__ = [
    "AuthBenchError",
    "DnsHierarchy",
    "HandshakeTiming",
    "OcspResponderProcess",
    "TcpDelayProxy",
    "dns_hierarchy",
    "run_handshake",
    "server_raw_key",
]
