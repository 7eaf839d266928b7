"""``d2tls bench server``: full handshakes/s and resumptions/s of our DTLS server under load.

The server runs alone in a child process (one asyncio loop, one core); a closed-loop load
generator in this process keeps ``concurrency`` client endpoints busy (each a real UDP socket on
127.0.0.1 with its own port; a client starts its next handshake as soon as one completes).
Throughput is counted **by the server** (HandshakeCompleted events) over a fixed window, and
the server's process CPU time over the same window gives its CPU per handshake, which is
compared with the crypto floor (:mod:`d2tls.bench.floor`) timed in the same run.

With two cores the load generator (whose client handshake costs about what the server's does)
can be the bottleneck: ``server_utilisation`` says how busy the server was; the CPU per
handshake, and ``capacity_per_s = 1 / cpu_per_handshake``, do not depend on that.

The same handshakes also run in this process through the sans-IO engines alone (no sockets, no
event loop; :func:`engine_pass`), timing only the server engine's calls and counting its
public-key operations: the server's CPU splits into crypto floor, engine (Python protocol work
above the floor) and host (asyncio and the socket calls), all from one run.

Then the session cache is filled with 10^3..10^6 realistic sessions (own ID, secret and a copy
of a real client certificate) to measure memory per cached session (RSS) and resumption
throughput against the cache size. If ``d2tls.bench.store`` is present, each ``--store`` URL is
benchmarked too.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import tempfile
import time
from pathlib import Path
from typing import Any

from d2tls.bench.common import (
    SERVER_NAME,
    Materials,
    Progress,
    environment,
    ratio,
    table,
    target_line,
)
from d2tls.bench.floor import (
    SERVER_FULL_OPERATIONS,
    SERVER_RESUMPTION_OPERATIONS,
    server_full_floor,
    server_resumption_floor,
)
from d2tls.bench.infra import Peers, PeersSpec
from d2tls.core.dtls.client import DTLSClient
from d2tls.core.dtls.config import ClientAuth, ClientConfig, ServerConfig
from d2tls.core.dtls.events import HandshakeCompleted
from d2tls.core.dtls.server import DTLSServer
from d2tls.core.dtls.session import MemorySessionStore, Session
from d2tls.core.pki.verdict_cache import DEFAULT_MAX_ENTRIES
from d2tls.net.udp import ClientEndpoint, ConnectionFailed

Address = tuple[str, int]
#: Issue 23: server CPU per handshake against its crypto floor, best concurrency level.
TARGETS = {"full_vs_floor": 4.0, "resumption_vs_floor": 10.0}
#: Public-key operations per handshake counted by the server engine (``engine_pass``).
KEY_OPERATIONS = ("sign", "verify", "ecdh", "keygen")
ENGINE_ADDRESS: Address = ("192.0.2.1", 4433)  # documentation address; never on a socket


class LoadGenerator:
    """Closed-loop clients against one server address."""

    def __init__(self, materials: Materials, server: Address) -> None:
        self.materials = materials
        self.server = server
        self.retransmissions = 0
        self.failures = 0

    def full_config(self) -> ClientConfig:
        m = self.materials
        return ClientConfig(
            trust_store=m.store,
            server_name=SERVER_NAME,
            certificate_chain=m.device_chain,
            private_key=m.device_key,
        )

    @staticmethod
    def resume_config(session: Session) -> ClientConfig:
        return ClientConfig(
            cipher_suites=(session.cipher_suite,),
            server_name=SERVER_NAME,
            session=session,
            resume_only=True,
        )

    async def handshake(self, config: ClientConfig, timeout: float = 30.0) -> Session | None:
        engine = DTLSClient(config)
        endpoint = await ClientEndpoint.connect(self.server[0], self.server[1], engine)
        try:
            done = await endpoint.handshake(timeout=timeout)
        except (ConnectionFailed, TimeoutError):
            self.failures += 1
            return None
        finally:
            self.retransmissions += engine.stats["retransmissions"]
            await endpoint.close()
        return done.session

    async def run(
        self, peers: Peers, kind: str, concurrency: int, duration: float
    ) -> dict[str, Any]:
        """Keep ``concurrency`` clients busy for ``duration`` s; count at the server."""
        stop = asyncio.Event()
        go = asyncio.Event()
        ready = 0
        self.retransmissions = self.failures = 0

        async def worker() -> None:
            nonlocal ready
            session: Session | None = None
            if kind == "resumption":
                while session is None and not stop.is_set():
                    session = await self.handshake(self.full_config())
            ready += 1
            await go.wait()
            while not stop.is_set():
                config = (
                    self.full_config()
                    if kind == "full" or session is None
                    else self.resume_config(session)
                )
                await self.handshake(config)

        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        while ready < concurrency:
            await asyncio.sleep(0.01)
        go.set()
        await asyncio.sleep(min(1.0, duration / 4))  # reach steady state
        before = await asyncio.to_thread(peers.command, "cpu")
        retransmissions, failures = self.retransmissions, self.failures
        await asyncio.sleep(duration)
        after = await asyncio.to_thread(peers.command, "cpu")
        retransmissions = self.retransmissions - retransmissions
        failures = self.failures - failures
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        wall = after["wall"] - before["wall"]
        cpu = after["process"] - before["process"]
        field = "full" if kind == "full" else "resumed"
        completed = after[field] - before[field]
        per = cpu / completed if completed else None
        return {
            "kind": kind,
            "concurrency": concurrency,
            "window_s": round(wall, 3),
            "completed": completed,
            "per_s": round(completed / wall, 1) if wall else None,
            "server_cpu_ms": round(per * 1000, 4) if per else None,
            "server_utilisation": round(cpu / wall, 3) if wall else None,
            "capacity_per_s": round(1 / per, 1) if per else None,
            "client_retransmissions": retransmissions,
            "client_failures": failures,
            "server_failed": after["failed"] - before["failed"],
        }


def engine_pass(materials: Materials, kind: str, n: int) -> dict[str, Any]:
    """``n`` handshakes of ``kind`` (``full`` or ``resumption``) through the sans-IO engines.

    The server is configured as in ``Peers`` (client certificates required, cookie exchange,
    memory store, verdict cache on); each handshake ends with the client's close_notify, as
    in the load generator. Only the server engine's calls are timed (thread CPU, the cyclic
    GC paused); its public-key operations are read from its connection's counters.
    """
    load = LoadGenerator(materials, ENGINE_ADDRESS)
    server = DTLSServer(
        ServerConfig(
            certificate_chain=materials.server_chain,
            private_key=materials.server_key,
            trust_store=materials.store,
            client_auth=ClientAuth.REQUIRED,
            session_store=MemorySessionStore(),
        )
    )
    spent = 0.0
    counted = dict.fromkeys(KEY_OPERATIONS, 0)

    def serve(datagrams: list[tuple[bytes, Address]], peer: Address) -> list[bytes]:
        nonlocal spent
        start = time.thread_time()
        for data, _ in datagrams:
            server.receive_datagram(data, peer, 0.0)
        replies = server.datagrams_to_send(0.0)
        spent += time.thread_time() - start
        return [data for data, _ in replies]

    def handshake(config: ClientConfig, port: int) -> HandshakeCompleted:
        peer: Address = ("198.51.100.20", port)
        client = DTLSClient(config)
        client.remote = ENGINE_ADDRESS
        client.connect(0.0)
        done: HandshakeCompleted | None = None
        for _ in range(16):
            replies = serve(client.datagrams_to_send(0.0), peer)
            while (event := server.next_event()) is not None:
                if isinstance(event, HandshakeCompleted):
                    done = event
                    connection = server.connection(peer)
                    assert connection is not None
                    for op in KEY_OPERATIONS:
                        counted[op] += connection.stats[op]
            for data in replies:
                client.receive_datagram(data, ENGINE_ADDRESS, 0.0)
            while client.next_event() is not None:
                pass
            if done is not None and client.is_established:
                client.close()
                serve(client.datagrams_to_send(0.0), peer)
                while server.next_event() is not None:
                    pass
                return done
        raise RuntimeError(f"engine pass: a {kind} handshake did not complete")

    first = handshake(load.full_config(), 1)
    ports = iter(range(2, 65536))

    def one() -> HandshakeCompleted:
        config = load.full_config() if kind == "full" else load.resume_config(first.session)
        done = handshake(config, next(ports))
        if done.resumed != (kind == "resumption"):
            raise RuntimeError(f"engine pass: expected a {kind}, got resumed={done.resumed}")
        return done

    for _ in range(5):  # warm up
        one()
    spent = 0.0
    counted = dict.fromkeys(KEY_OPERATIONS, 0)
    gc.collect()
    gc.disable()
    try:
        for _ in range(n):
            one()
    finally:
        gc.enable()
    return {
        "kind": kind,
        "handshakes": n,
        "server_engine_cpu_ms": round(spent / n * 1000, 4),
        "key_operations": {op: counted[op] / n for op in KEY_OPERATIONS},
    }


def _stores(urls: list[str], n: int) -> dict[str, Any]:
    if importlib.util.find_spec("d2tls.bench.store") is None:
        return {"available": False, "note": "d2tls.bench.store not installed (hook left here)"}
    from d2tls.bench.store import bench_store

    results: dict[str, Any] = {"available": True, "results": []}
    for url in urls:
        try:
            results["results"].append(bench_store(url, n))
        except Exception as exc:  # a missing redis-server must not end the benchmark
            results["results"].append({"url": url, "error": f"{type(exc).__name__}: {exc}"})
    return results


def default_store_urls(directory: Path) -> list[str]:
    return ["memory://", f"sqlite:///{directory / 'bench-store.db'}"]


async def _run_async(
    materials: Materials,
    peers: Peers,
    concurrency: list[int],
    duration: float,
    cache_sizes: list[int],
    cache_duration: float,
    bar: Progress,
) -> dict[str, Any]:
    load = LoadGenerator(materials, peers.server)
    for _ in range(3):  # warm up both sides
        session = await load.handshake(load.full_config())
        if session is not None:
            await load.handshake(load.resume_config(session))
    levels = []
    for kind in ("full", "resumption"):
        for level in concurrency:
            bar.describe(f"bench server: {kind} x{level}")
            levels.append(await load.run(peers, kind, level, duration))
            bar.update()
    bar.describe("bench server: verdict cache off/on")
    verdict_cache = await _verdict_cache_pair(load, peers, duration)
    bar.update()
    cache: list[dict[str, Any]] = []
    current = int(peers.command("stats")["sessions"])
    for size in sorted(cache_sizes):
        bar.describe(f"bench server: cache {size:,}")
        fill: dict[str, Any] = {"added": 0, "heap_delta": 0, "rss_delta": 0, "seconds": 0.0}
        if size > current:
            fill = await asyncio.to_thread(peers.command, "fill", size - current)
            current = int(fill["sessions"])
        row = await load.run(peers, "resumption", 10, cache_duration)
        row["cached_sessions"] = current
        row["fill_added"] = fill["added"]
        row["fill_rss_delta"] = fill["rss_delta"]
        row["bytes_per_session"] = (
            round(fill["heap_delta"] / fill["added"]) if fill["added"] else None
        )
        cache.append(row)
        bar.update()
    return {
        "levels": levels,
        "verdict_cache": verdict_cache,
        "cache": cache,
        "final_stats": peers.command("stats"),
    }


async def _verdict_cache_pair(load: LoadGenerator, peers: Peers, duration: float) -> dict[str, Any]:
    """Resumption CPU with the client-chain verdict cache off, then on (10 clients, same
    server and sessions): what re-verifying the stored chain costs a resumption."""
    rows = {}
    for state, size in (("off", 0), ("on", DEFAULT_MAX_ENTRIES)):
        await asyncio.to_thread(peers.command, "verdict_cache", size)
        rows[state] = await load.run(peers, "resumption", 10, duration)
    off, on = rows["off"]["server_cpu_ms"], rows["on"]["server_cpu_ms"]
    return {
        **rows,
        "saved_ms": round(off - on, 4) if off and on else None,
        "ratio": ratio(on, off, 3),
    }


def run(
    concurrency: list[int] | None = None,
    duration: float = 5.0,
    cache_sizes: list[int] | None = None,
    cache_duration: float = 3.0,
    store_urls: list[str] | None = None,
    store_n: int = 1000,
    progress: bool = True,
    materials: Materials | None = None,
    engine_handshakes: int = 300,
) -> dict[str, Any]:
    concurrency = concurrency or [10, 100, 1000]
    cache_sizes = cache_sizes if cache_sizes is not None else [10**3, 10**4, 10**5, 10**6]
    materials = materials or Materials.create()
    result: dict[str, Any] = {
        "benchmark": "server",
        "duration_s": duration,
        "environment": environment(),
    }
    total = 2 * len(concurrency) + len(cache_sizes) + 4
    with Progress(total, "bench server", progress) as bar:
        full_floor = server_full_floor(materials)
        resumption_floor = server_resumption_floor(materials)
        bar.update()
        bar.describe("bench server: sans-IO engine pass")
        engine = {
            kind: engine_pass(materials, kind, max(1, engine_handshakes))
            for kind in ("full", "resumption")
        }
        bar.update()
        spec = PeersSpec(materials.paths.directory, agent=False, max_sessions=2 * 10**6 + 10**5)
        with Peers(spec) as peers:
            measured = asyncio.run(
                _run_async(
                    materials, peers, concurrency, duration, cache_sizes, cache_duration, bar
                )
            )
        bar.describe("bench server: stores")
        if store_urls is None:
            directory = Path(tempfile.mkdtemp(prefix="d2tls-store-bench-"))
            store_urls = default_store_urls(directory)
        result["stores"] = _stores(store_urls, store_n) if store_urls else {"skipped": True}
        bar.update()
    result.update(measured)
    result["engine"] = engine
    result["floor"] = {
        "full_ms": full_floor["total_s"] * 1000,
        "resumption_ms": resumption_floor["total_s"] * 1000,
        "full_ops": {
            k: {"count": v["count"], "ms": v["seconds"] * 1000}
            for k, v in full_floor["ops"].items()
        },
        "resumption_ops": {
            k: {"count": v["count"], "ms": v["seconds"] * 1000}
            for k, v in resumption_floor["ops"].items()
        },
        "full_ops_meaning": SERVER_FULL_OPERATIONS,
        "resumption_ops_meaning": SERVER_RESUMPTION_OPERATIONS,
    }
    result["floor"]["key_operations_agree"] = _key_operations_agree(result["floor"], engine)
    best = _best(result["levels"])
    floor_ms = {"full": result["floor"]["full_ms"], "resumption": result["floor"]["resumption_ms"]}
    result["ratios"] = {
        "full_vs_floor": ratio(best.get("full"), floor_ms["full"], 3),
        "resumption_vs_floor": ratio(best.get("resumption"), floor_ms["resumption"], 3),
    }
    result["split"] = {
        kind: _split(best.get(kind), engine[kind]["server_engine_cpu_ms"], floor_ms[kind])
        for kind in ("full", "resumption")
    }
    result["targets"] = {
        name: {
            "limit": limit,
            "value": result["ratios"][name],
            "met": result["ratios"][name] is not None and result["ratios"][name] <= limit,
        }
        for name, limit in TARGETS.items()
    }
    sizes = [r["bytes_per_session"] for r in result["cache"] if r.get("bytes_per_session")]
    result["bytes_per_cached_session"] = sizes[-1] if sizes else None
    return result


def _key_operations_agree(floor: dict[str, Any], engine: dict[str, Any]) -> dict[str, Any]:
    """The public-key operations the floors charge against those the engine counted."""
    ops = floor["full_ops"]
    charged = {
        "full": {
            "sign": ops["ecdsa_sign_server_key_exchange"]["count"],
            "verify": ops["ecdsa_verify_client_chain"]["count"]
            + ops["ecdsa_verify_certificate_verify"]["count"],
            "ecdh": ops["ecdhe_keygen_and_exchange"]["count"],
            "keygen": ops["ecdhe_keygen_and_exchange"]["count"],
        },
        "resumption": dict.fromkeys(KEY_OPERATIONS, 0),
    }
    counted = {kind: engine[kind]["key_operations"] for kind in charged}
    return {
        "charged": charged,
        "counted": counted,
        "agree": all(counted[k][op] == charged[k][op] for k in charged for op in KEY_OPERATIONS),
    }


def _split(process_ms: float | None, engine_ms: float, floor_ms: float) -> dict[str, Any]:
    """Server CPU per handshake: crypto floor, Python engine work above it, and the host."""
    return {
        "process_ms": process_ms,
        "engine_ms": engine_ms,
        "floor_ms": round(floor_ms, 4),
        "engine_above_floor_ms": round(engine_ms - floor_ms, 4),
        "host_ms": round(process_ms - engine_ms, 4) if process_ms is not None else None,
        "engine_vs_floor": ratio(engine_ms, floor_ms, 3),
        "process_vs_floor": ratio(process_ms, floor_ms, 3),
    }


def _best(levels: list[dict[str, Any]]) -> dict[str, float]:
    """Lowest server CPU per handshake of each kind over the concurrency levels."""
    best: dict[str, float] = {}
    for row in levels:
        if row["server_cpu_ms"] is None:
            continue
        kind = row["kind"]
        best[kind] = min(best.get(kind, float("inf")), row["server_cpu_ms"])
    return best


def render(result: dict[str, Any]) -> str:
    out = []
    rows = [
        [
            r["kind"],
            r["concurrency"],
            r["per_s"],
            r["server_cpu_ms"],
            r["capacity_per_s"],
            r["server_utilisation"],
            r["client_retransmissions"],
            r["client_failures"],
        ]
        for r in result["levels"]
    ]
    out.append(
        table(
            [
                "handshake",
                "clients",
                "per s",
                "server CPU ms",
                "capacity/s",
                "server busy",
                "retransmits",
                "failures",
            ],
            rows,
            title=f"Server throughput, closed loop, {result['duration_s']} s per level "
            "(counted at the server)",
        )
    )
    floor = result["floor"]
    out.append(
        f"\nCrypto floor per handshake (same run): full mutual-auth {floor['full_ms']:.4f} ms, "
        f"resumption {floor['resumption_ms']:.4f} ms"
    )
    for kind in ("full", "resumption"):
        ops = ", ".join(f"{name} x{entry['count']}" for name, entry in floor[f"{kind}_ops"].items())
        out.append(f"  {kind}: {ops}")
    agree = floor.get("key_operations_agree")
    if agree:
        counted = agree["counted"]["full"]
        out.append(
            "  public-key operations counted by the server engine per full handshake: "
            + ", ".join(f"{op} {counted[op]:g}" for op in KEY_OPERATIONS)
            + (" (as the floor charges)" if agree["agree"] else " (the floor charges otherwise!)")
        )
    split = result.get("split")
    if split:
        rows = [
            [
                kind,
                entry["floor_ms"],
                entry["engine_ms"],
                entry["process_ms"],
                entry["host_ms"],
                entry["engine_vs_floor"],
                entry["process_vs_floor"],
            ]
            for kind, entry in split.items()
        ]
        out.append(
            "\n"
            + table(
                [
                    "handshake",
                    "floor ms",
                    "engine ms",
                    "process ms",
                    "host ms",
                    "engine x floor",
                    "process x floor",
                ],
                rows,
                title="Server CPU per handshake: crypto floor, sans-IO engine (this process), "
                "whole server process (best level); host = asyncio + sockets",
            )
        )
    out.append("Targets (issue 23: whole server process, best level):")
    for name, entry in result["targets"].items():
        out.append(target_line(name, entry["value"], entry["limit"], "x"))
    pair = result.get("verdict_cache")
    if pair:
        out.append(
            f"Resumption with the client-chain verdict cache off / on (10 clients, same run): "
            f"{pair['off']['server_cpu_ms']} / {pair['on']['server_cpu_ms']} server CPU ms "
            f"(on/off ratio {pair['ratio']})"
        )
    rows = [
        [
            r["cached_sessions"],
            r["per_s"],
            r["server_cpu_ms"],
            r["bytes_per_session"],
        ]
        for r in result["cache"]
    ]
    if rows:
        out.append(
            "\n"
            + table(
                ["cached sessions", "resumptions/s", "server CPU ms", "RSS B/session added"],
                rows,
                title="Resumption (10 clients) against the session-cache size",
            )
        )
    stores = result.get("stores", {})
    if stores.get("results"):
        srows = []
        for entry in stores["results"]:
            if "error" in entry:
                srows.append([entry["url"], None, None, None, None, entry["error"][:40]])
                continue
            srows.append(
                [
                    entry["store"],
                    entry.get("put_per_s"),
                    entry.get("get_per_s"),
                    entry.get("resumptions_per_s"),
                    entry.get("bytes_per_session"),
                    entry.get("bytes_measured_as", ""),
                ]
            )
        out.append(
            "\n"
            + table(
                ["store", "put/s", "get/s", "resumptions/s", "B/session", "measured as"],
                srows,
                title="Session stores (d2tls.bench.store)",
            )
        )
    elif stores:
        out.append(f"\nSession stores: {stores.get('note', 'skipped')}")
    return "\n".join(out)
