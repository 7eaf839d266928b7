"""Session store benchmark: what each store costs a resuming server (``d2tls bench server``).

``bench_store(url, n)`` measures, for one store URL:

* ``put_per_s`` / ``get_per_s``: store operations per second on realistic D2TLS sessions (a
  32-byte ID, a 48-byte master secret, SNI and a real P-256 client certificate of the kind the
  agent presents for the device), sealed with AES-256-GCM for SQLite and Redis;
* ``resumptions_per_s``: complete abbreviated handshakes per second (RFC 5246 §7.3 with the
  cookie exchange) through the real sans-IO server and client engines in this process, with the
  server looking each session up in the store — the store's cost inside a resumption, without
  network latency; ``resumption_ms`` is the mean time of one;
* ``bytes_per_session``: memory (``memory://``: Python heap, by tracemalloc; ``redis://``:
  Redis ``used_memory``) or disk (``sqlite://``: database pages) per stored session, and
  ``entry_bytes``, the size of one sealed entry.

Every session the benchmark writes is deleted again, so it can run against a shared store.
Without ``keys``/``key_file`` a throwaway key is generated.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.verification import Store

from d2tls.core.clock import monotonic
from d2tls.core.dtls.client import DTLSClient
from d2tls.core.dtls.config import ClientAuth, ClientConfig, ServerConfig
from d2tls.core.dtls.constants import CipherSuite
from d2tls.core.dtls.events import HandshakeCompleted
from d2tls.core.dtls.server import DTLSServer
from d2tls.core.dtls.session import MemorySessionStore, Session, SessionStore
from d2tls.core.pki.generate import create_ca, issue_certificate
from d2tls.core.randomness import system_random
from d2tls.core.store import open_store
from d2tls.core.store.codec import SessionCodec, StoreKeys, load_key_file
from d2tls.core.store.redis_store import RedisSessionStore, redact
from d2tls.core.store.sqlite_store import SQLiteSessionStore

SUITE = CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8
SERVER_NAME = "localhost"


@dataclass(frozen=True)
class _Materials:
    trust_store: Store
    server_chain: tuple[bytes, ...]
    server_key: Any
    client_chain: tuple[bytes, ...]


def _materials() -> _Materials:
    ca_cert, ca_key = create_ca("d2tls bench CA")
    server_cert, server_key = issue_certificate(
        ca_cert, ca_key, "server", server_names=(SERVER_NAME,), client=False
    )
    client_cert, _ = issue_certificate(
        ca_cert, ca_key, "device-1", server_names=("device-1.local",), client=True
    )
    return _Materials(
        trust_store=Store([ca_cert]),
        server_chain=(server_cert.public_bytes(Encoding.DER),),
        server_key=server_key,
        client_chain=(client_cert.public_bytes(Encoding.DER),),
    )


def _session(chain: tuple[bytes, ...], lifetime: float = 3600.0) -> Session:
    return Session(
        session_id=system_random(32),
        master_secret=bytearray(system_random(48)),
        cipher_suite=SUITE,
        extended_master_secret=True,
        server_name=SERVER_NAME,
        # A fresh bytes object per session, as a server parsing Certificate messages has.
        peer_certificates=tuple(bytes(bytearray(c)) for c in chain),
        lifetime=lifetime,
    )


def _rate(count: int, function: Callable[[], None]) -> float:
    start = time.perf_counter()
    function()
    elapsed = time.perf_counter() - start
    return count / elapsed if elapsed > 0 else float("inf")


def _bytes_per_session(store: SessionStore, chain: tuple[bytes, ...], n: int) -> tuple[float, str]:
    if isinstance(store, MemorySessionStore):
        fresh = MemorySessionStore(max_sessions=n + 1)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(n):
                fresh.put(_session(chain))
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        return (after - before) / n, "python heap (tracemalloc)"
    if isinstance(store, SQLiteSessionStore):
        connection = store._connection()

        def pages() -> int:  # pages in use (free pages are reused first)
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            total = connection.execute("PRAGMA page_count").fetchone()
            free = connection.execute("PRAGMA freelist_count").fetchone()
            return int(total[0]) - int(free[0])

        page_size = int(connection.execute("PRAGMA page_size").fetchone()[0])
        before = pages()
        sessions = [_session(chain) for _ in range(n)]
        for session in sessions:
            store.put(session)
        after = pages()
        for session in sessions:
            store.delete(session.session_id)
        return (after - before) * page_size / n, "sqlite database pages"
    if isinstance(store, RedisSessionStore):
        client = store.client

        def info() -> int:
            return int(client.info("memory")["used_memory"])

        before = info()
        sessions = [_session(chain) for _ in range(n)]
        for session in sessions:
            store.put(session)
        after = info()
        for session in sessions:
            store.delete(session.session_id)
        return (after - before) / n, "redis used_memory"
    return float("nan"), "unknown store"


#: The server's address as the in-memory client sees it (documentation range, no socket).
SERVER_ADDRESS = ("192.0.2.1", 4433)


def _resume_once(server: DTLSServer, config: ClientConfig, address: tuple[str, int]) -> bool:
    client = DTLSClient(config, remote=SERVER_ADDRESS)
    now = monotonic()
    client.connect(now)
    for _ in range(20):
        moved = False
        for datagram, _server in client.datagrams_to_send(now):
            server.receive_datagram(datagram, address, now)
            moved = True
        for datagram, _peer in server.datagrams_to_send(now):
            client.receive_datagram(datagram, SERVER_ADDRESS, now)
            moved = True
        if not moved:
            break
    resumed = False
    while (event := server.next_event()) is not None:
        if isinstance(event, HandshakeCompleted) and event.resumed:
            resumed = True
    server.close(address)
    server.datagrams_to_send(now)
    while server.next_event() is not None:
        pass
    return resumed and client.is_established


def _resumptions(store: SessionStore, materials: _Materials, count: int) -> tuple[float, int]:
    server = DTLSServer(
        ServerConfig(
            cipher_suites=(SUITE,),
            certificate_chain=materials.server_chain,
            private_key=materials.server_key,
            trust_store=materials.trust_store,
            client_auth=ClientAuth.REQUIRED,
            session_store=store,
        )
    )
    pairs = []
    for _ in range(count):
        stored = _session(materials.client_chain)
        store.put(stored)
        client_view = Session(
            session_id=stored.session_id,
            master_secret=bytearray(stored.master_secret),
            cipher_suite=SUITE,
            extended_master_secret=True,
            server_name=SERVER_NAME,
            peer_certificates=materials.server_chain,
        )
        config = ClientConfig(
            cipher_suites=(SUITE,),
            server_name=SERVER_NAME,
            session=client_view,
            resume_only=True,
        )
        pairs.append((stored.session_id, config))
    ok = 0
    start = time.perf_counter()
    for index, (_sid, config) in enumerate(pairs):
        ok += _resume_once(server, config, ("192.0.2.10", 10000 + index))
    elapsed = time.perf_counter() - start
    for sid, _ in pairs:
        store.delete(sid)
    return (count / elapsed if elapsed > 0 else float("inf")), ok


def bench_store(
    url: str,
    n: int = 1000,
    *,
    key_file: Path | None = None,
    keys: StoreKeys | None = None,
    handshakes: int | None = None,
) -> dict[str, Any]:
    """Benchmark the store at ``url`` with ``n`` sessions (see module docstring).

    ``handshakes`` resumptions are run through the engines (default ``min(n, 200)``; 0 skips).
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    if keys is None:
        keys = load_key_file(key_file) if key_file is not None else StoreKeys.generate()
    store = open_store(url, None, keys=keys)
    materials = _materials()
    sessions = [_session(materials.client_chain) for _ in range(n)]
    ids = [s.session_id for s in sessions]
    result: dict[str, Any] = {"url": redact(url), "store": url.split(":", 1)[0], "sessions": n}
    try:

        def put_all() -> None:
            for session in sessions:
                store.put(session)

        hits: list[Session | None] = []

        def get_all() -> None:
            hits.extend(store.get(sid) for sid in ids)

        missing = [system_random(32) for _ in range(n)]

        def miss_all() -> None:
            for sid in missing:
                store.get(sid)

        def delete_all() -> None:
            for sid in ids:
                store.delete(sid)

        result["put_per_s"] = round(_rate(n, put_all))
        result["get_per_s"] = round(_rate(n, get_all))
        result["get_hits"] = sum(1 for h in hits if h is not None)
        result["miss_per_s"] = round(_rate(n, miss_all))
        result["count"] = store.count()
        result["delete_per_s"] = round(_rate(n, delete_all))
        result["entry_bytes"] = (
            None
            if isinstance(store, MemorySessionStore)
            else len(SessionCodec(keys).seal(sessions[0]))
        )
        per_session, how = _bytes_per_session(store, materials.client_chain, n)
        result["bytes_per_session"] = round(per_session)
        result["bytes_measured_as"] = how
        count = min(n, 200) if handshakes is None else handshakes
        if count > 0:
            rate, ok = _resumptions(store, materials, count)
            result["resumptions_per_s"] = round(rate)
            result["resumption_ms"] = round(1000 / rate, 3) if rate else None
            result["resumptions_ok"] = ok
            result["resumptions"] = count
    finally:
        for sid in ids:
            store.delete(sid)
        close = getattr(store, "close", None)
        if close is not None:
            close()
    return result


def format_result(result: dict[str, Any]) -> str:
    """One line for a terminal."""
    parts = [
        f"{result['store']:<7} put {result['put_per_s']:>8}/s  get {result['get_per_s']:>8}/s",
        f"{result['bytes_per_session']:>6} B/session ({result['bytes_measured_as']})",
    ]
    if "resumptions_per_s" in result:
        parts.append(
            f"resumptions {result['resumptions_per_s']:>5}/s "
            f"({result['resumptions_ok']}/{result['resumptions']} ok)"
        )
    return "  ".join(parts)
