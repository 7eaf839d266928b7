"""The parties a benchmark talks to, each in its own process, and the device's loop thread.

* :class:`Peers` starts the DTLS server (client certificates required, echo) and optionally the
  security agent in **one child process** (``python -m d2tls.bench.infra``), so that neither their
  CPU nor the GIL shares anything with the measured device. It answers control commands over a
  pipe: its process CPU time (for per-handshake server cost), filling its session cache, RSS.
* :class:`RelayProcess` runs :class:`d2tls.net.relay.Relay` instances in another child process,
  so the relay's timing is not disturbed by the server's Python code.
* :class:`LoopThread` is a dedicated thread running the device's asyncio loop: the device's CPU
  is that thread's ``time.thread_time()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

from d2tls.core.dtls.server import DTLSServer

Address = tuple[str, int]
T = TypeVar("T")


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


# --------------------------------------------------------------------------- child processes
class ChildProcess:
    """``python -m d2tls.bench.infra KIND SPEC_JSON``: JSON-line commands on stdin/stdout.

    A plain subprocess (not ``multiprocessing``) so that it works from any caller, including
    scripts without a ``__main__`` guard.
    """

    def __init__(self, kind: str, spec: dict[str, Any]) -> None:
        self._argv = [sys.executable, "-m", "d2tls.bench.infra", kind, json.dumps(spec)]
        self._popen: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self.hello: dict[str, Any] = {}

    def start(self, timeout: float = 60.0) -> dict[str, Any]:
        self._popen = subprocess.Popen(
            self._argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.hello = self._read(timeout)
        return self.hello

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self._popen is not None and self._popen.stdout is not None
        ready, _, _ = select.select([self._popen.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError("the benchmark child process did not answer")
        line = self._popen.stdout.readline()
        if not line:
            raise RuntimeError(f"the benchmark child process exited ({self._popen.poll()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def command(self, name: str, *args: Any, timeout: float = 600.0) -> dict[str, Any]:
        assert self._popen is not None and self._popen.stdin is not None
        with self._lock:
            self._popen.stdin.write(json.dumps([name, *args]) + "\n")
            self._popen.stdin.flush()
            return self._read(timeout)

    def stop(self) -> None:
        if self._popen is None:
            return
        if self._popen.poll() is None:
            with contextlib.suppress(OSError, TimeoutError, RuntimeError, ValueError):
                self.command("stop", timeout=10)
            try:
                self._popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait(timeout=5)
        for stream in (self._popen.stdin, self._popen.stdout):
            if stream is not None:
                stream.close()
        self._popen = None


@dataclass
class PeersSpec:
    """What the peers process runs."""

    pki_directory: Path
    agent: bool = True
    max_sessions: int = 2_000_000
    max_connections: int = 20_000
    cookie_exchange: bool = True
    #: The server resumes a session without a cookie exchange (RFC 6347 §4.2.1; operator option).
    resume_without_cookie: bool = False
    #: Context lifetime the agent announces (s).
    context_lifetime: int = 6 * 3600

    def to_json(self) -> dict[str, Any]:
        return {
            "pki_directory": str(self.pki_directory),
            "agent": self.agent,
            "max_sessions": self.max_sessions,
            "max_connections": self.max_connections,
            "cookie_exchange": self.cookie_exchange,
            "resume_without_cookie": self.resume_without_cookie,
            "context_lifetime": self.context_lifetime,
        }


class Peers:
    """The server (+ agent) in a child process. Use as a context manager."""

    def __init__(self, spec: PeersSpec) -> None:
        self.spec = spec
        self._child = ChildProcess("peers", spec.to_json())
        self.server: Address = ("127.0.0.1", 0)
        self.agent: Address | None = None
        self.pid = 0

    def start(self) -> Self:
        hello = self._child.start()
        self.server = (hello["server"][0], hello["server"][1])
        self.agent = (hello["agent"][0], hello["agent"][1]) if hello["agent"] else None
        self.pid = int(hello["pid"])
        return self

    def command(self, name: str, *args: Any, timeout: float = 600.0) -> dict[str, Any]:
        return self._child.command(name, *args, timeout=timeout)

    def cpu(self) -> float:
        """Process CPU seconds used by the server and agent so far."""
        return float(self.command("cpu")["process"])

    def stop(self) -> None:
        self._child.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _peers(spec: dict[str, Any], emit: Callable[[dict[str, Any]], None]) -> None:
    from d2tls.bench.common import Materials
    from d2tls.core.dtls.config import ClientAuth, ServerConfig
    from d2tls.core.dtls.events import ConnectionTerminated, Event, HandshakeCompleted
    from d2tls.core.dtls.session import MemorySessionStore
    from d2tls.core.pki.generate import pki_paths
    from d2tls.core.roles.agent import AgentConfig
    from d2tls.net.agent_host import Agent
    from d2tls.net.udp import ServerEndpoint

    materials = Materials.load(pki_paths(Path(spec["pki_directory"])))
    store = MemorySessionStore(max_sessions=int(spec["max_sessions"]))
    engine = DTLSServer(
        ServerConfig(
            certificate_chain=materials.server_chain,
            private_key=materials.server_key,
            trust_store=materials.store,
            client_auth=ClientAuth.REQUIRED,
            session_store=store,
            cookie_exchange=bool(spec["cookie_exchange"]),
            resume_without_cookie=bool(spec.get("resume_without_cookie", False)),
            max_connections=int(spec["max_connections"]),
        )
    )
    counts = {"full": 0, "resumed": 0, "failed": 0}

    def count(event: Event) -> None:
        if isinstance(event, HandshakeCompleted):
            counts["resumed" if event.resumed else "full"] += 1
        elif isinstance(event, ConnectionTerminated) and event.error:
            counts["failed"] += 1

    endpoint = await ServerEndpoint.listen("127.0.0.1", 0, engine, echo=True, on_event=count)
    agent: Agent | None = None
    agent_address: Address | None = None
    if spec["agent"]:
        agent = Agent(
            AgentConfig(
                psk_keys=materials.psk_keys,
                trust_store=materials.store,
                context_lifetime=int(spec["context_lifetime"]),
            )
        )
        agent_address = await agent.start("127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def handle(command: str, args: list[Any]) -> dict[str, Any]:
        if command == "stop":
            stop.set()
            return {"ok": True}
        if command == "cpu":
            return {"process": time.process_time(), "wall": time.perf_counter(), **counts}
        if command == "fill":
            return _fill_store(store, int(args[0]), materials.device_chain)
        if command == "verdict_cache":  # 0 turns the client-chain verdict cache off
            engine.config.verdict_cache_size = int(args[0])
            return {"verdict_cache_size": engine.config.verdict_cache_size}
        if command == "stats":
            return {
                "sessions": len(store._sessions),
                "connections": engine.connection_count,
                "rss": rss_bytes(),
                "server": dict(engine.stats),
                "agent_completed": agent.completed if agent else 0,
                "agent_failed": agent.failed if agent else 0,
            }
        return {"error": f"unknown command {command!r}"}

    def on_line(line: str) -> None:
        if not line:
            stop.set()
            return
        command, *args = json.loads(line)
        emit(handle(command, args))

    _read_commands(loop, on_line)
    assert endpoint.address is not None
    emit({"server": endpoint.address, "agent": agent_address, "pid": os.getpid()})
    await stop.wait()
    if agent is not None:
        agent.close()
    endpoint.close()
    await asyncio.sleep(0.01)


def _read_commands(loop: asyncio.AbstractEventLoop, on_line: Callable[[str], None]) -> None:
    """Feed stdin lines to ``on_line`` in the loop (a reader thread; "" at end of input)."""

    def reader() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(on_line, line)
        loop.call_soon_threadsafe(on_line, "")

    threading.Thread(target=reader, daemon=True, name="commands").start()


def _fill_store(store: Any, count: int, chain: tuple[bytes, ...]) -> dict[str, Any]:
    """Add ``count`` sessions shaped like real ones (own ID, secret, client certificate copy)."""
    import gc
    import tracemalloc

    from d2tls.core.dtls.constants import CipherSuite
    from d2tls.core.dtls.session import Session

    gc.collect()
    before = rss_bytes()
    # RSS grows in pages and arenas, too coarsely for a few hundred sessions: the Python heap
    # growth traced by tracemalloc is the figure per session; RSS is reported beside it.
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    heap_before = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    now = time.time()
    for _ in range(count):
        session = Session(
            session_id=os.urandom(32),
            master_secret=bytearray(os.urandom(48)),
            cipher_suite=CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,
            extended_master_secret=True,
            server_name="localhost",
            # A fresh bytes object per session, as a decoded Certificate message gives.
            peer_certificates=tuple(bytes(bytearray(c)) for c in chain),
            created_at=now,
            lifetime=24 * 3600.0,
        )
        store.put(session)
    seconds = time.perf_counter() - started
    gc.collect()
    heap_delta = tracemalloc.get_traced_memory()[0] - heap_before
    if not tracing:
        tracemalloc.stop()
    return {
        "added": count,
        "seconds": seconds,
        "heap_delta": heap_delta,
        "rss_delta": rss_bytes() - before,
        "sessions": len(store._sessions),
    }


# --------------------------------------------------------------------------- relays
@dataclass(frozen=True)
class RelaySpec:
    """One relay: towards ``target``; delays in seconds per direction."""

    target: Address
    up_delay: float = 0.0
    down_delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    seed: int = 0


def _relays(specs: list[dict[str, Any]], emit: Callable[[Any], None]) -> None:
    from d2tls.net.relay import LinkProfile, Relay

    relays = [
        Relay(
            (s["target"][0], s["target"][1]),
            up=LinkProfile(s["up_delay"], s["jitter"], s["loss"]),
            down=LinkProfile(s["down_delay"], s["jitter"], s["loss"]),
            seed=s["seed"],
        ).start()
        for s in specs
    ]
    emit({"addresses": [r.address for r in relays]})
    try:
        for line in sys.stdin:
            command = json.loads(line)[0]
            if command == "stats":
                emit({"stats": [r.stats() for r in relays]})
            elif command == "reset":
                for r in relays:
                    r.reset_stats()
                emit({"ok": True})
            else:
                emit({"ok": True})
                break
    finally:
        for r in relays:
            r.stop()


class RelayProcess:
    """Relays in a child process; ``addresses[i]`` is where to send to reach ``specs[i]``."""

    def __init__(self, specs: list[RelaySpec]) -> None:
        self._child = ChildProcess("relays", {"relays": [s.__dict__ for s in specs]})
        self.addresses: list[Address] = []

    def __enter__(self) -> Self:
        hello = self._child.start()
        self.addresses = [(a[0], a[1]) for a in hello["addresses"]]
        return self

    def stats(self) -> list[dict[str, Any]]:
        stats: list[dict[str, Any]] = self._child.command("stats")["stats"]
        return stats

    def reset(self) -> None:
        self._child.command("reset")

    def __exit__(self, *exc: object) -> None:
        self._child.stop()


# --------------------------------------------------------------------------- device thread
class LoopThread:
    """A dedicated thread with its own asyncio loop; ``run`` executes a coroutine there."""

    def __init__(self, name: str = "d2tls-device") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the child processes: ``peers SPEC`` or ``relays SPEC``."""
    kind, spec = (argv or sys.argv[1:])[:2]
    out_lock = threading.Lock()

    def emit(message: Any) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(message) + "\n")
            sys.stdout.flush()

    if kind == "peers":
        asyncio.run(_peers(json.loads(spec), emit))
    elif kind == "relays":
        _relays(json.loads(spec)["relays"], emit)
    else:
        print(f"unknown child kind {kind!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
