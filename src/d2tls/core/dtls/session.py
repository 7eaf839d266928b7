"""Resumable session state (RFC 5246 §7.4.1.2) and the server's session store interface."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol

from d2tls.core.clock import Clock, wall_time
from d2tls.core.dtls.constants import CipherSuite


@dataclass
class Session:
    """What both sides must remember to resume a session with an abbreviated handshake.

    RFC 5246 §7.4.1.2 requires the cipher suite; RFC 7627 §5.3 requires the EMS flag; we also
    bind the peer identity and SNI so that a resumption cannot silently change them.
    ``master_secret`` is a bytearray so that holders can wipe it (see ``wipe``).
    """

    session_id: bytes
    master_secret: bytearray
    cipher_suite: CipherSuite
    extended_master_secret: bool
    server_name: str | None = None
    peer_certificates: tuple[bytes, ...] = ()
    psk_identity: bytes | None = None
    #: Wall-clock seconds since the epoch; engines set it from their injected ``wall_clock``.
    created_at: float = field(default_factory=wall_time)
    lifetime: float = 3600.0

    def expired(self, now: float | None = None) -> bool:
        """True once the session's lifetime has passed at wall-clock time ``now`` (default:
        the system clock, :func:`d2tls.core.clock.wall_time`)."""
        current = wall_time() if now is None else now
        return current >= self.created_at + self.lifetime

    def wipe(self) -> None:
        """Overwrite the master secret in place (best effort: Python may hold other copies)."""
        for i in range(len(self.master_secret)):
            self.master_secret[i] = 0
        self.master_secret = bytearray()

    def __repr__(self) -> str:  # never print secrets
        return (
            f"Session(id={self.session_id.hex()}, suite={self.cipher_suite.name}, "
            f"ems={self.extended_master_secret}, server_name={self.server_name!r})"
        )


class SessionStore(Protocol):
    """The small interface the server uses to cache sessions by ID (RFC 5246 §7.4.1.2)."""

    def get(self, session_id: bytes) -> Session | None:
        """Return the session, or None if unknown or expired."""

    def put(self, session: Session) -> None:
        """Store a session until it expires."""

    def delete(self, session_id: bytes) -> None:
        """Forget a session."""

    def count(self) -> int:
        """Number of live sessions."""


class MemorySessionStore:
    """In-memory session cache with expiry and a size bound (oldest evicted first).

    Thread-safe. Other stores (SQLite, Redis, selected by URL) are in :mod:`d2tls.core.store`.
    """

    def __init__(self, max_sessions: int = 10_000, clock: Clock = wall_time) -> None:
        self._sessions: dict[bytes, Session] = {}
        self._clock = clock
        self._max = max_sessions
        self._lock = threading.RLock()

    def get(self, session_id: bytes) -> Session | None:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if session.expired(self._clock()):
                self.delete(session_id)
                return None
            return session

    def put(self, session: Session) -> None:
        with self._lock:
            self._sessions.pop(session.session_id, None)
            while self._sessions and len(self._sessions) >= self._max:
                oldest = next(iter(self._sessions))
                self.delete(oldest)
            self._sessions[session.session_id] = session

    def delete(self, session_id: bytes) -> None:
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is not None:
            session.wipe()

    def count(self) -> int:
        with self._lock:
            for sid in [s for s, v in self._sessions.items() if v.expired(self._clock())]:
                self.delete(sid)
            return len(self._sessions)
