"""``redis://host:port/db``: sessions shared by a fleet of servers through Redis.

* Each session is one Redis string ``<prefix><session id hex>`` holding the sealed entry of
  :class:`~d2tls.core.store.codec.SessionCodec` (never the master secret in the clear), written
  with ``SET … PX`` so that **Redis expires it** at the end of the session's lifetime.
* The server's engine is sans-IO and calls the store synchronously, so this uses the
  synchronous ``redis`` client with short socket timeouts and no retries: a slow or dead Redis
  costs at most ``socket_timeout`` per call, and after a failure Redis is not tried again for
  ``retry_interval`` seconds (a small circuit breaker), so an outage does not stall the server.
* During an outage ``get`` is a miss (the client falls back to a full handshake: in D2TLS the
  device delegates again) and ``put`` cannot reach Redis: the session is kept in a small local
  fallback cache instead, so a device whose delegated handshake ran on *this* instance can
  still resume here. When Redis answers again the client reconnects by itself, the fallback
  sessions are copied to Redis and everything is shared again. Outages and recoveries are
  logged on the ``d2tls.core.store`` logger (never with a secret).

URL: ``redis://[[user]:password@]host[:port][/db][?socket_timeout=S&retry_interval=S&prefix=P]``
(``rediss://`` for TLS).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from d2tls.core.clock import Clock, monotonic, wall_time
from d2tls.core.dtls.session import Session
from d2tls.core.errors import ConfigurationError
from d2tls.core.store.codec import CorruptEntry, SessionCodec

log = logging.getLogger("d2tls.core.store")

DEFAULT_PREFIX = "d2tls:session:"
DEFAULT_SOCKET_TIMEOUT = 0.25
DEFAULT_RETRY_INTERVAL = 1.0
DEFAULT_FALLBACK_SESSIONS = 10_000


def redact(url: str) -> str:
    """``url`` without its password (for logs and error messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


def _copy(session: Session) -> Session:
    return Session(
        session_id=session.session_id,
        master_secret=bytearray(session.master_secret),
        cipher_suite=session.cipher_suite,
        extended_master_secret=session.extended_master_secret,
        server_name=session.server_name,
        peer_certificates=session.peer_certificates,
        psk_identity=session.psk_identity,
        created_at=session.created_at,
        lifetime=session.lifetime,
    )


class LocalFallback:
    """Sessions written while Redis was down: bounded, oldest dropped first, thread-safe.

    ``get`` returns copies, so wiping an entry here never touches a session in use.
    """

    def __init__(self, max_sessions: int, clock: Clock = wall_time) -> None:
        self._sessions: OrderedDict[bytes, Session] = OrderedDict()
        self._clock = clock
        self._max = max_sessions
        self._lock = threading.Lock()

    def get(self, session_id: bytes) -> Session | None:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if session.expired(self._clock()):
                self._sessions.pop(session_id).wipe()
                return None
            return _copy(session)

    def put(self, session: Session) -> None:
        with self._lock:
            self._sessions.pop(session.session_id, None)
            while self._max > 0 and len(self._sessions) >= self._max:
                self._sessions.popitem(last=False)[1].wipe()
            if self._max > 0:
                self._sessions[session.session_id] = _copy(session)

    def delete(self, session_id: bytes) -> None:
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is not None:
            session.wipe()

    def ids(self) -> list[bytes]:
        with self._lock:
            return list(self._sessions)

    def count(self) -> int:
        with self._lock:
            for sid in [s for s, v in self._sessions.items() if v.expired(self._clock())]:
                self._sessions.pop(sid).wipe()
            return len(self._sessions)


class RedisSessionStore:
    """Session store in Redis (see module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        codec: SessionCodec,
        *,
        prefix: str = DEFAULT_PREFIX,
        retry_interval: float = DEFAULT_RETRY_INTERVAL,
        fallback_sessions: int = DEFAULT_FALLBACK_SESSIONS,
        description: str = "redis",
        clock: Clock = wall_time,
        monotonic_clock: Clock = monotonic,
    ) -> None:
        self.client = client
        #: Wall clock (session expiry, TTLs) and monotonic clock (retry after an outage).
        self._clock = clock
        self._monotonic = monotonic_clock
        self._codec = codec
        self._prefix = prefix.encode()
        self._retry_interval = retry_interval
        self._fallback = LocalFallback(fallback_sessions, clock)
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._lock = threading.Lock()
        self.description = description
        self.stats = {
            "hits": 0,
            "misses": 0,
            "corrupt": 0,
            "errors": 0,
            "puts": 0,
            "fallback_puts": 0,
            "fallback_hits": 0,
        }

    @classmethod
    def from_url(
        cls, url: str, codec: SessionCodec, *, fallback_sessions: int = DEFAULT_FALLBACK_SESSIONS
    ) -> RedisSessionStore:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ConfigurationError(f"not a Redis URL: {redact(url)}")
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(options) - {"socket_timeout", "retry_interval", "prefix"}
        if unknown:
            raise ConfigurationError(
                f"unknown Redis store option(s) {', '.join(sorted(unknown))} in {redact(url)} "
                "(known: socket_timeout, retry_interval, prefix)"
            )
        try:
            port = parts.port or 6379
            path = parts.path.strip("/")
            db = int(path) if path else 0
            timeout = float(options.get("socket_timeout", DEFAULT_SOCKET_TIMEOUT))
            retry_interval = float(options.get("retry_interval", DEFAULT_RETRY_INTERVAL))
        except ValueError as exc:
            raise ConfigurationError(f"bad Redis URL {redact(url)}: {exc}") from None
        if timeout <= 0 or retry_interval < 0:
            raise ConfigurationError(f"bad Redis URL {redact(url)}: timeouts must be positive")
        client = redis.Redis(
            host=parts.hostname or "127.0.0.1",
            port=port,
            db=db,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            ssl=parts.scheme == "rediss",
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # fail fast; the circuit breaker decides when to retry
            health_check_interval=0,
        )
        return cls(
            client,
            codec,
            prefix=options.get("prefix", DEFAULT_PREFIX),
            retry_interval=retry_interval,
            fallback_sessions=fallback_sessions,
            description=redact(url),
        )

    # ------------------------------------------------------------------ availability
    def _key(self, session_id: bytes) -> bytes:
        return self._prefix + session_id.hex().encode()

    @property
    def available(self) -> bool:
        """False while Redis is considered down (between a failure and the next retry)."""
        return self._down_since is None

    def _may_try(self) -> bool:
        return self._down_since is None or self._monotonic() >= self._retry_at

    def _failed(self, operation: str, exc: Exception) -> None:
        self.stats["errors"] += 1
        with self._lock:
            first = self._down_since is None
            if first:
                self._down_since = self._monotonic()
            self._retry_at = self._monotonic() + self._retry_interval
        if first:
            log.warning(
                "session store %s unavailable (%s failed: %s: %s); resumption falls back to "
                "full handshakes, new sessions are kept locally until it returns",
                self.description,
                operation,
                type(exc).__name__,
                exc,
            )
        else:
            log.debug("session store %s still unavailable (%s)", self.description, operation)

    def _succeeded(self) -> None:
        if self._down_since is None:
            return
        with self._lock:
            if self._down_since is None:
                return
            outage = self._monotonic() - self._down_since
            self._down_since = None
        copied = self._flush_fallback()
        log.warning(
            "session store %s reachable again after %.1f s; %d locally kept session(s) copied",
            self.description,
            outage,
            copied,
        )

    def _flush_fallback(self) -> int:
        """Copy the sessions kept locally during an outage to Redis."""
        copied = 0
        for session_id in self._fallback.ids():
            session = self._fallback.get(session_id)
            if session is None:
                continue
            if not self._redis_put(session):
                break
            self._fallback.delete(session_id)
            copied += 1
        return copied

    # ------------------------------------------------------------------ Redis calls
    def _redis_put(self, session: Session) -> bool:
        remaining_ms = int((session.created_at + session.lifetime - self._clock()) * 1000)
        if remaining_ms <= 0:
            return True
        try:
            self.client.set(
                self._key(session.session_id), self._codec.seal(session), px=remaining_ms
            )
        except redis.RedisError as exc:
            self._failed("put", exc)
            return False
        return True

    # ------------------------------------------------------------------ SessionStore
    def get(self, session_id: bytes) -> Session | None:
        entry: object = None
        if self._may_try():
            try:
                entry = self.client.get(self._key(session_id))
            except redis.RedisError as exc:
                self._failed("get", exc)
            else:
                self._succeeded()
        if entry is None:
            session = self._fallback.get(session_id)
            if session is not None:
                self.stats["fallback_hits"] += 1
                return session
            self.stats["misses"] += 1
            return None
        if not isinstance(entry, bytes):
            self.stats["corrupt"] += 1
            log.warning("session store %s: entry of type %s ignored", self.description, type(entry))
            return None
        try:
            session = self._codec.open(session_id, entry)
        except CorruptEntry as exc:
            self.stats["corrupt"] += 1
            log.warning(
                "session store %s: unusable entry for session %s…: %s; treated as a miss",
                self.description,
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
        if self._may_try() and self._redis_put(session):
            self.stats["puts"] += 1
            self._succeeded()
            return
        # Redis is down: keep the session here so that it can at least be resumed locally.
        self.stats["fallback_puts"] += 1
        log.debug(
            "session store %s: session %s… kept locally (Redis unavailable)",
            self.description,
            session.session_id[:8].hex(),
        )
        self._fallback.put(session)

    def delete(self, session_id: bytes) -> None:
        self._fallback.delete(session_id)
        if not self._may_try():
            return
        try:
            self.client.delete(self._key(session_id))
        except redis.RedisError as exc:
            self._failed("delete", exc)
        else:
            self._succeeded()

    def count(self) -> int:
        """Live sessions in Redis (a SCAN over the prefix: O(n), for monitoring) + local."""
        local = self._fallback.count()
        if not self._may_try():
            return local
        try:
            shared = sum(1 for _ in self.client.scan_iter(match=self._prefix + b"*", count=1000))
        except redis.RedisError as exc:
            self._failed("count", exc)
            return local
        self._succeeded()
        return shared + local

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"RedisSessionStore({self.description!r}, key={self._codec.key_id.hex()})"
