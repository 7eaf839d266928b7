"""``d2tls bench flood``: a ``d2tls server`` and a ``d2tls agent`` under pre-handshake floods.

Issue 19's attacks, from many source ports on 127.0.0.1, against real subprocesses:

* **(a) partial ClientHellos**: one first fragment per source port that declares a large
  message and never completes (RFC 6347 §4.2.3), sent to the server and to the agent;
* **(b) ClientHellos without cookie** at a fixed rate: each must cost one stateless
  HelloVerifyRequest no larger than the ClientHello (RFC 6347 §4.2.1);
* **(c) half-open handshakes after the cookie**, twice the server's association limit, while
  established connections wait: none of them may be lost.

During each flood a legitimate client runs full certificate handshakes one after the other;
their latency is compared with the idle server's. Per phase the report gives the server's RSS
growth (``/proc/PID/status`` VmRSS), its CPU time per flood datagram (``/proc/PID/stat``
utime+stime, less the legitimate handshakes' share measured on the idle server), and its
pending-state counters when the server exposes them (see
:func:`server_counters`). The flooder runs in its own process so that it does not share an
interpreter with the legitimate client.
"""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
#: Issue 19's targets.
RSS_TARGET_MIB = 16.0
AMPLIFICATION_TARGET = 1.0
LATENCY_FACTOR_TARGET = 3.0
#: Pause between the legitimate client's handshakes during a flood (about 20 per second).
LEGITIMATE_INTERVAL = 0.05
#: Sockets a flooder keeps open (the usual descriptor limit is 1024..20000); beyond, the
#: oldest half-open handshakes' sockets are closed (the server keeps their state regardless).
MAX_OPEN_SOCKETS = 8_000
PAGE_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class FloodConfig:
    """Sizes of one run; the defaults are issue 19's full run."""

    ports_a: int = 10_000
    declared_length: int = 65_535 - 12
    fragment_bytes: int = 100
    rate_a: int = 2_000
    rate_b: int = 1_000
    duration_b: float = 10.0
    source_ports_b: int = 1_000
    #: Server association limit to run with (None: the server's default).
    max_connections: int | None = 1_000
    #: Half-open handshakes in (c); None: twice the association limit.
    half_open_c: int | None = None
    established: int = 20
    idle_samples: int = 20
    handshake_timeout: float = 10.0


@dataclass
class Phase:
    """What one flood did to the server."""

    name: str
    datagrams: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0
    rss_before: int = 0
    rss_after: int = 0
    rss_peak: int = 0
    cpu_seconds: float = 0.0
    agent_rss_growth: int | None = None
    latencies_ms: list[float] = field(default_factory=list)
    failed_handshakes: int = 0
    counters: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rss_growth(self) -> int:
        return self.rss_after - self.rss_before

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("latencies_ms")
        data["rss_growth_mib"] = round(self.rss_growth / MIB, 2)
        data["cpu_us_per_datagram"] = (
            round(self.cpu_seconds / self.datagrams * 1e6, 1) if self.datagrams else None
        )
        data["latency_ms"] = percentiles(self.latencies_ms)
        return data


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "n": 0}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": round(statistics.median(ordered), 2), "p95": round(p95, 2), "n": len(ordered)}


# --------------------------------------------------------------------------- /proc
def rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` (Linux ``/proc/PID/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (``/proc/PID/stat`` fields 14 and 15)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / PAGE_TICKS


# --------------------------------------------------------------------------- processes
def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "d2tls.cli", *args]


def _server_options() -> str:
    return subprocess.run(
        _cli("server", "--help"), capture_output=True, text=True, check=False
    ).stdout


class Child:
    """A ``d2tls`` subprocess that printed its ready line."""

    def __init__(self, argv: list[str], ready: str) -> None:
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if ready not in line:
            self.stop()
            raise RuntimeError(f"{argv[3]} did not start: {line!r}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def server_counters(child: Child, stats_file: Path | None) -> dict[str, Any] | None:
    """HOOK: the server's pending-state counters (``DTLSServer.counters()``), or None.

    A ``d2tls server`` that has ``--stats-file FILE`` writes its counters as JSON to FILE on
    SIGUSR1; this bench passes that option when ``d2tls server --help`` lists it. Until the
    server has it, the report shows RSS only and says "no counters".
    """
    if stats_file is None:
        return None
    before = stats_file.stat().st_mtime_ns if stats_file.exists() else 0
    child.process.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        if stats_file.exists() and stats_file.stat().st_mtime_ns != before:
            try:
                data: dict[str, Any] = json.loads(stats_file.read_text())
                return data
            except json.JSONDecodeError:
                pass  # written in the meantime: read again
        time.sleep(0.05)
    return None


# --------------------------------------------------------------------------- datagrams
def client_config(pki: Any) -> Any:
    from d2tls.core.dtls.config import ClientConfig
    from d2tls.core.pki.verify import load_certificate_chain, load_private_key, load_trust_store

    device = pki.devices[0]
    return ClientConfig(
        trust_store=load_trust_store(pki.ca_cert),
        server_name="localhost",
        certificate_chain=tuple(load_certificate_chain(device.cert)),
        private_key=load_private_key(device.key),
    )


def first_client_hello(pki: Any) -> bytes:
    """A real ClientHello datagram of the d2tls client, without cookie."""
    from d2tls.core.dtls.client import DTLSClient

    client = DTLSClient(client_config(pki), remote=("192.0.2.1", 4433))  # not sent from here
    client.connect(0.0)
    return client.datagrams_to_send(0.0)[0][0]


def partial_hello(declared: int, fragment: int) -> bytes:
    """One record with the first ``fragment`` bytes of a ClientHello declaring ``declared``
    bytes (RFC 6347 §4.2.3 fragment header), never to be completed."""
    body = (b"\xfe\xfd" + bytes(range(32)) + b"\x00" * fragment)[:fragment]
    handshake = (
        bytes([1])
        + declared.to_bytes(3, "big")
        + (0).to_bytes(2, "big")
        + (0).to_bytes(3, "big")
        + len(body).to_bytes(3, "big")
        + body
    )
    header = bytes([22, 0xFE, 0xFF]) + bytes(8) + len(handshake).to_bytes(2, "big")
    return header + handshake


def _pace(index: int, rate: float, start: float) -> None:
    delay = start + index / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _drain(sockets: list[socket.socket]) -> int:
    received = 0
    for sock in sockets:
        while True:
            try:
                received += len(sock.recv(65536))
            except (BlockingIOError, ConnectionRefusedError):
                break
    return received


def _udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


# --------------------------------------------------------------------------- flooders
def flood_partial(
    targets: list[tuple[str, int]], ports: int, datagram: bytes, rate: int
) -> dict[str, Any]:
    """(a): one never-completed fragment per fresh source port, to every target."""
    sockets: list[socket.socket] = []
    start = time.monotonic()
    sent = 0
    try:
        for index in range(ports):
            sock = _udp()
            sockets.append(sock)
            for target in targets:
                sock.sendto(datagram, target)
                sent += 1
            _pace(index, rate, start)
        received = _drain(sockets)
    finally:
        for sock in sockets:
            sock.close()
    return {
        "datagrams": ports,  # per target: what the server received
        "datagrams_all_targets": sent,
        "bytes_sent": sent * len(datagram),
        "bytes_received": received,
        "seconds": time.monotonic() - start,
    }


def flood_hellos(
    target: tuple[str, int], hello: bytes, rate: int, seconds: float, ports: int
) -> dict[str, Any]:
    """(b): complete ClientHellos without cookie from ``ports`` source ports at ``rate``/s."""
    sockets = [_udp() for _ in range(ports)]
    start = time.monotonic()
    sent = received = 0
    active = seconds
    try:
        index = 0
        while time.monotonic() - start < seconds:
            sockets[index % ports].sendto(hello, target)
            sent += 1
            index += 1
            if index % 100 == 0:
                received += _drain(sockets)
            _pace(index, rate, start)
        active = time.monotonic() - start
        time.sleep(0.5)
        received += _drain(sockets)
    finally:
        for sock in sockets:
            sock.close()
    return {
        "datagrams": sent,
        "bytes_sent": sent * len(hello),
        "bytes_received": received,
        "seconds": active,
    }


def flood_half_open(
    target: tuple[str, int], pki_dir: str, devices: int, count: int, window: int = 100
) -> dict[str, Any]:
    """(c): ClientHello, HelloVerifyRequest, ClientHello with the cookie; then silence.

    Each source port's second ClientHello is made by the real client engine from the real
    HelloVerifyRequest, so the server creates an association and sends its flight.
    """
    from d2tls.core.dtls.client import DTLSClient
    from d2tls.core.pki.generate import pki_paths

    config = client_config(pki_paths(Path(pki_dir), devices))
    sockets: list[socket.socket] = []
    sent = received = completed_cookies = 0
    start = time.monotonic()
    try:
        for first in range(0, count, window):
            batch: dict[int, tuple[socket.socket, DTLSClient]] = {}
            for _ in range(min(window, count - first)):
                sock = _udp()
                sockets.append(sock)
                client = DTLSClient(config, remote=target)
                client.connect(0.0)
                for datagram, _ in client.datagrams_to_send(0.0):
                    sock.sendto(datagram, target)
                    sent += 1
                batch[sock.fileno()] = (sock, client)
            deadline = time.monotonic() + 3.0
            selector = selectors.DefaultSelector()  # epoll: descriptors beyond 1024
            for sock, _ in batch.values():
                selector.register(sock, selectors.EVENT_READ)
            while batch and time.monotonic() < deadline:
                for key, _ in selector.select(0.2):
                    sock, client = batch.pop(key.fd)
                    selector.unregister(sock)
                    try:
                        data = sock.recv(65536)
                    except (BlockingIOError, ConnectionRefusedError):
                        continue
                    received += len(data)
                    client.receive_datagram(data, target, 0.0)
                    for datagram, _ in client.datagrams_to_send(0.0):
                        sock.sendto(datagram, target)
                        sent += 1
                    completed_cookies += 1
            selector.close()
            received += _drain(sockets[-window:])
            while len(sockets) > MAX_OPEN_SOCKETS:  # the descriptor limit: oldest first
                sockets.pop(0).close()
        time.sleep(0.5)
        received += _drain(sockets)
    finally:
        for sock in sockets:
            sock.close()
    return {
        "datagrams": sent,
        "bytes_sent": 0,
        "bytes_received": received,
        "cookies_returned": completed_cookies,
        "seconds": time.monotonic() - start,
    }


def child_main(argv: list[str]) -> int:
    """``python -m d2tls.bench.flood FUNCTION JSON``: run one flooder, print its result."""
    name, arguments = argv[0], json.loads(argv[1])
    flooders: dict[str, Callable[..., dict[str, Any]]] = {
        "flood_partial": flood_partial,
        "flood_hellos": flood_hellos,
        "flood_half_open": flood_half_open,
    }
    decoded = [
        bytes.fromhex(a[4:]) if isinstance(a, str) and a.startswith("hex:") else a
        for a in arguments
    ]
    decoded = [
        [tuple(t) for t in a]
        if isinstance(a, list) and a and isinstance(a[0], list)
        else tuple(a)
        if isinstance(a, list)
        else a
        for a in decoded
    ]
    print(json.dumps(flooders[name](*decoded)), flush=True)
    return 0


def _encode(arguments: tuple[Any, ...]) -> str:
    return json.dumps([f"hex:{a.hex()}" if isinstance(a, bytes) else a for a in arguments])


# --------------------------------------------------------------------------- the run
class Bench:
    def __init__(self, config: FloodConfig, directory: Path) -> None:
        from d2tls.core.pki.generate import init_pki
        from d2tls.lab.peers import free_udp_port

        self.config = config
        self.directory = directory
        self.pki = init_pki(directory / "pki", devices=1)
        options = _server_options()
        port = free_udp_port()
        self.server_address = ("127.0.0.1", port)
        argv = _cli(
            "server",
            "--listen",
            f"127.0.0.1:{port}",
            "--cert",
            str(self.pki.server_cert),
            "--key",
            str(self.pki.server_key),
            "--ca",
            str(self.pki.ca_cert),
            "--require-client-cert",
            "--echo",
            "--quiet",
        )
        self.limit_applied = config.max_connections is not None and "--max-connections" in options
        if self.limit_applied:
            argv += ["--max-connections", str(config.max_connections)]
        self.stats_file = directory / "server-stats.json" if "--stats-file" in options else None
        if self.stats_file is not None:
            argv += ["--stats-file", str(self.stats_file)]
        self.server = Child(argv, "listening")
        agent_port = free_udp_port()
        self.agent_address = ("127.0.0.1", agent_port)
        self.agent = Child(
            _cli(
                "agent",
                "--listen",
                f"127.0.0.1:{agent_port}",
                "--psk-file",
                str(self.pki.agent_psk_file),
                "--ca",
                str(self.pki.ca_cert),
                "--allow-server",
                f"127.0.0.1:{port}",
            ),
            "agent listening",
        )
        self.failures: list[str] = []
        self.cpu_per_handshake = 0.0

    @property
    def association_limit(self) -> int:
        if self.limit_applied and self.config.max_connections is not None:
            return self.config.max_connections
        return 10_000  # the server's default

    def close(self) -> None:
        self.agent.stop()
        self.server.stop()

    # ------------------------------------------------------------------ legitimate client
    async def handshake(self) -> tuple[Any, float] | None:
        from d2tls.core.dtls.client import DTLSClient
        from d2tls.net.udp import ClientEndpoint, ConnectionFailed

        started = time.perf_counter()
        endpoint = await ClientEndpoint.connect(
            *self.server_address, DTLSClient(client_config(self.pki))
        )
        try:
            await endpoint.handshake(timeout=self.config.handshake_timeout)
        except (ConnectionFailed, TimeoutError) as exc:
            self.failures.append(f"{type(exc).__name__}: {exc}")
            await endpoint.close()
            return None
        return endpoint, (time.perf_counter() - started) * 1000

    async def sample_latency(
        self, phase: Phase, until: Callable[[], bool], least: int, interval: float = 0.0
    ) -> None:
        """Handshakes one after the other, ``interval`` s apart (so that during a flood the
        legitimate client's share of the server's CPU stays small)."""
        while not until() or len(phase.latencies_ms) + phase.failed_handshakes < least:
            await asyncio.sleep(interval)
            result = await self.handshake()
            if result is None:
                phase.failed_handshakes += 1
                continue
            endpoint, elapsed = result
            phase.latencies_ms.append(elapsed)
            await endpoint.close()
            if until() and len(phase.latencies_ms) >= least:
                break

    # ------------------------------------------------------------------ phases
    async def run_phase(
        self, name: str, function: str, args: tuple[Any, ...], agent: bool = False
    ) -> Phase:
        phase = Phase(name)
        pid = self.server.pid
        phase.rss_before = rss_bytes(pid)
        agent_before = rss_bytes(self.agent.pid) if agent else 0
        cpu_before = cpu_seconds(pid)
        started = time.monotonic()
        child = subprocess.Popen(
            [sys.executable, "-m", "d2tls.bench.flood", function, _encode(args)],
            stdout=subprocess.PIPE,
            text=True,
        )

        def done() -> bool:
            return child.poll() is not None

        await self.sample_latency(phase, done, least=5, interval=LEGITIMATE_INTERVAL)
        output, _ = await asyncio.get_running_loop().run_in_executor(None, child.communicate)
        if child.returncode != 0:
            raise RuntimeError(f"the {function} flooder failed (status {child.returncode})")
        result: dict[str, Any] = json.loads(output)
        phase.seconds = result.pop("seconds", time.monotonic() - started)
        await asyncio.sleep(0.5)  # let the server finish what it received
        legitimate = len(phase.latencies_ms) + phase.failed_handshakes
        phase.cpu_seconds = max(
            0.0, cpu_seconds(pid) - cpu_before - legitimate * self.cpu_per_handshake
        )
        phase.rss_after = rss_bytes(pid)
        phase.rss_peak = peak_rss_bytes(pid)
        if agent:
            phase.agent_rss_growth = rss_bytes(self.agent.pid) - agent_before
        phase.datagrams = result.get("datagrams", 0)
        phase.bytes_sent = result.get("bytes_sent", 0)
        phase.bytes_received = result.get("bytes_received", 0)
        phase.extra = {k: v for k, v in result.items() if k not in asdict(phase)}
        phase.counters = server_counters(self.server, self.stats_file)
        return phase

    async def run(self) -> dict[str, Any]:
        config = self.config
        for _ in range(3):  # warm up both processes (imports, caches)
            result = await self.handshake()
            if result is not None:
                await result[0].close()
        idle = Phase("idle")
        idle.rss_before = rss_bytes(self.server.pid)
        cpu_before = cpu_seconds(self.server.pid)
        await self.sample_latency(idle, lambda: True, least=config.idle_samples)
        await asyncio.sleep(0.2)
        idle.cpu_seconds = cpu_seconds(self.server.pid) - cpu_before
        idle.rss_after = rss_bytes(self.server.pid)
        idle.counters = server_counters(self.server, self.stats_file)
        #: The server's CPU per legitimate handshake, subtracted from the flood phases.
        self.cpu_per_handshake = idle.cpu_seconds / max(1, len(idle.latencies_ms))

        hello = first_client_hello(self.pki)
        fragment = partial_hello(config.declared_length, config.fragment_bytes)
        a = await self.run_phase(
            "a: partial ClientHellos",
            "flood_partial",
            ([self.server_address, self.agent_address], config.ports_a, fragment, config.rate_a),
            agent=True,
        )
        a.extra["source_ports"] = config.ports_a
        b = await self.run_phase(
            "b: ClientHellos without cookie",
            "flood_hellos",
            (self.server_address, hello, config.rate_b, config.duration_b, config.source_ports_b),
        )
        b.extra["client_hello_bytes"] = len(hello)
        b.extra["rate"] = round(b.datagrams / b.seconds) if b.seconds else 0

        established: list[Any] = []
        for _ in range(config.established):
            result = await self.handshake()
            if result is not None:
                established.append(result[0])
        half_open = config.half_open_c or 2 * self.association_limit
        c = await self.run_phase(
            "c: half-open handshakes",
            "flood_half_open",
            (self.server_address, str(self.pki.directory), 1, half_open),
        )
        alive = 0
        for index, endpoint in enumerate(established):
            message = f"still there {index}".encode()
            try:
                endpoint.send(message)
                if await endpoint.receive(timeout=3.0) == message:
                    alive += 1
            except Exception:
                pass
            await endpoint.close()
        c.extra.update(
            half_open_handshakes=half_open,
            association_limit=self.association_limit,
            limit_applied=self.limit_applied,
            established_before=config.established,
            established_opened=len(established),
            established_lost=len(established) - alive,
        )
        return report(config, idle, [a, b, c], self.stats_file is not None)


def report(config: FloodConfig, idle: Phase, phases: list[Phase], counters: bool) -> dict[str, Any]:
    a, b, c = phases
    idle_p50 = percentiles(idle.latencies_ms)["p50"]
    b_p50 = percentiles(b.latencies_ms)["p50"]
    amplification = b.bytes_received / b.bytes_sent if b.bytes_sent else None
    lost = c.extra.get("established_lost")
    targets = [
        {
            "target": f"RSS growth under (a), {config.ports_a} source ports",
            "limit": f"<= {RSS_TARGET_MIB:g} MiB",
            "value": f"{a.rss_growth / MIB:.1f} MiB",
            "pass": a.rss_growth <= RSS_TARGET_MIB * MIB,
        },
        {
            "target": "HelloVerifyRequest amplification under (b)",
            "limit": f"<= {AMPLIFICATION_TARGET:g}",
            "value": f"{amplification:.2f}" if amplification is not None else "n/a",
            "pass": amplification is not None and amplification <= AMPLIFICATION_TARGET,
        },
        {
            "target": "established connections lost under (c), "
            f"{c.extra.get('half_open_handshakes')} half-open",
            "limit": "0",
            "value": str(lost),
            "pass": lost == 0 and c.extra.get("established_opened") == config.established,
        },
        {
            "target": f"p50 handshake latency under (b) at {b.extra.get('rate')}/s vs idle",
            "limit": f"<= {LATENCY_FACTOR_TARGET:g}x idle",
            "value": f"{b_p50 / idle_p50:.2f}x" if b_p50 and idle_p50 else "n/a",
            "pass": bool(b_p50 and idle_p50 and b_p50 <= LATENCY_FACTOR_TARGET * idle_p50),
        },
    ]
    return {
        "config": asdict(config),
        "counters_available": counters,
        "phases": [p.summary() for p in (idle, *phases)],
        "targets": targets,
        "ok": all(t["pass"] for t in targets),
    }


def run(config: FloodConfig) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="d2tls-flood-") as directory:
        bench = Bench(config, Path(directory))
        try:
            return asyncio.run(bench.run())
        finally:
            bench.close()


# --------------------------------------------------------------------------- rendering
def _rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = [
        "phase",
        "datagrams",
        "s",
        "RSS growth MiB",
        "agent RSS MiB",
        "flood CPU µs/datagram",
        "bytes out/in",
        "pending (hellos/half-open/established)",
        "p50 ms",
        "p95 ms",
        "failed",
    ]
    rows = []
    for phase in result["phases"]:
        counters = phase["counters"]
        pending = (
            "{pending_hellos}/{half_open}/{established}".format(**counters)
            if counters and {"pending_hellos", "half_open", "established"} <= set(counters)
            else "no counters"
        )
        agent = phase["agent_rss_growth"]
        ratio = (
            f"{phase['bytes_received'] / phase['bytes_sent']:.2f}" if phase["bytes_sent"] else "-"
        )
        latency = phase["latency_ms"]
        rows.append(
            [
                phase["name"],
                str(phase["datagrams"]),
                f"{phase['seconds']:.1f}",
                f"{phase['rss_growth_mib']:.1f}",
                f"{agent / MIB:.1f}" if agent is not None else "-",
                str(phase["cpu_us_per_datagram"] if phase["name"] != "idle" else "-"),
                ratio,
                pending,
                str(latency["p50"]),
                str(latency["p95"]),
                str(phase["failed_handshakes"]),
            ]
        )
    return header, rows


def render(result: dict[str, Any]) -> str:
    header, rows = _rows(result)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.append("")
    for target in result["targets"]:
        verdict = "PASS" if target["pass"] else "FAIL"
        lines.append(f"{verdict}  {target['target']}: {target['value']} ({target['limit']})")
    if not result["counters_available"]:
        lines.append("(the server exposes no pending-state counters: RSS only)")
    return "\n".join(lines)


def render_markdown(result: dict[str, Any]) -> str:
    header, rows = _rows(result)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "| target | limit | measured | verdict |", "|---|---|---|---|"]
    for target in result["targets"]:
        verdict = "pass" if target["pass"] else "**FAIL**"
        lines.append(f"| {target['target']} | {target['limit']} | {target['value']} | {verdict} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
