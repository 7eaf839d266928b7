"""``sqlite:///path.db``: sessions in an SQLite file that survives server restarts.

Safe with concurrent access from threads and from several processes on one host:

* WAL journal mode (readers never block the writer) and ``synchronous=NORMAL``;
* a busy timeout, so a writer waits for another process's write instead of failing;
* one connection per thread (and per process: a forked child opens its own);
* every operation is one statement in autocommit mode, so there is no long transaction.

Entries are sealed by :class:`~d2tls.core.store.codec.SessionCodec` (the master secret is never in
the file in the clear); the expiry time is stored next to the entry, in the clear, so expired
rows can be skipped and purged without the key. Any SQLite error or unusable entry makes
``get`` a miss and ``put``/``delete`` a no-op, logged on the ``d2tls.core.store`` logger: the
server then runs a full handshake (D2TLS: the device delegates again) instead of failing.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path

from d2tls.core.clock import Clock, wall_time
from d2tls.core.dtls.session import Session
from d2tls.core.store.codec import CorruptEntry, SessionCodec

log = logging.getLogger("d2tls.core.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS d2tls_sessions (
    session_id BLOB PRIMARY KEY,
    expires_at REAL NOT NULL,
    entry BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS d2tls_sessions_expiry ON d2tls_sessions (expires_at);
"""
#: Expired rows are purged once every this many puts (and by ``purge_expired``).
PURGE_EVERY = 256


class SQLiteSessionStore:
    """Session store in one SQLite database file (see module docstring)."""

    def __init__(
        self,
        path: Path,
        codec: SessionCodec,
        *,
        busy_timeout: float = 5.0,
        clock: Clock = wall_time,
    ) -> None:
        self.path = Path(path).resolve()
        #: Wall clock: session expiry (``expires_at`` is seconds since the epoch).
        self._clock = clock
        self._codec = codec
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._puts = 0
        self._lock = threading.Lock()
        self.stats = {"hits": 0, "misses": 0, "corrupt": 0, "errors": 0, "puts": 0}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            # Created 0600: the entries are sealed, but there is no reason to share them.
            # SQLite gives the -wal and -shm files the database's permissions.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._connection().executescript(SCHEMA)

    # ------------------------------------------------------------------ plumbing
    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is not None and getattr(self._local, "pid", None) == os.getpid():
            return connection
        connection = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout,
            isolation_level=None,  # autocommit: each statement is its own transaction
            check_same_thread=True,
        )
        connection.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            log.warning("sqlite store %s: WAL mode unavailable (journal_mode=%s)", self.path, mode)
        connection.execute("PRAGMA synchronous = NORMAL")
        self._local.connection = connection
        self._local.pid = os.getpid()
        return connection

    def _fail(self, operation: str, exc: Exception) -> None:
        self.stats["errors"] += 1
        log.warning(
            "sqlite store %s: %s failed (%s: %s); treated as a miss",
            self.path,
            operation,
            type(exc).__name__,
            exc,
        )

    # ------------------------------------------------------------------ SessionStore
    def get(self, session_id: bytes) -> Session | None:
        try:
            row = (
                self._connection()
                .execute(
                    "SELECT entry FROM d2tls_sessions WHERE session_id = ? AND expires_at > ?",
                    (session_id, self._clock()),
                )
                .fetchone()
            )
        except sqlite3.Error as exc:
            self._fail("get", exc)
            return None
        if row is None or not isinstance(row[0], bytes):
            self.stats["misses"] += 1
            return None
        try:
            session = self._codec.open(session_id, row[0])
        except CorruptEntry as exc:
            self.stats["corrupt"] += 1
            log.warning(
                "sqlite store %s: unusable entry for session %s…: %s; treated as a miss",
                self.path,
                session_id[:8].hex(),
                exc,
            )
            return None
        if session.expired(self._clock()):
            self.stats["misses"] += 1
            return None
        self.stats["hits"] += 1
        return session

    def put(self, session: Session) -> None:
        expires_at = session.created_at + session.lifetime
        if expires_at <= self._clock():
            return
        entry = self._codec.seal(session)
        try:
            self._connection().execute(
                "INSERT OR REPLACE INTO d2tls_sessions (session_id, expires_at, entry) "
                "VALUES (?, ?, ?)",
                (bytes(session.session_id), expires_at, entry),
            )
        except sqlite3.Error as exc:
            self._fail("put", exc)
            return
        self.stats["puts"] += 1
        with self._lock:
            self._puts += 1
            purge = self._puts % PURGE_EVERY == 0
        if purge:
            self.purge_expired()

    def delete(self, session_id: bytes) -> None:
        try:
            self._connection().execute(
                "DELETE FROM d2tls_sessions WHERE session_id = ?", (session_id,)
            )
        except sqlite3.Error as exc:
            self._fail("delete", exc)

    def count(self) -> int:
        try:
            row = (
                self._connection()
                .execute(
                    "SELECT COUNT(*) FROM d2tls_sessions WHERE expires_at > ?", (self._clock(),)
                )
                .fetchone()
            )
        except sqlite3.Error as exc:
            self._fail("count", exc)
            return 0
        return int(row[0]) if row else 0

    # ------------------------------------------------------------------ maintenance
    def purge_expired(self) -> int:
        """Delete expired rows; returns how many."""
        try:
            cursor = self._connection().execute(
                "DELETE FROM d2tls_sessions WHERE expires_at <= ?", (self._clock(),)
            )
        except sqlite3.Error as exc:
            self._fail("purge", exc)
            return 0
        return max(cursor.rowcount, 0)

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def __repr__(self) -> str:
        return f"SQLiteSessionStore({str(self.path)!r}, key={self._codec.key_id.hex()})"
