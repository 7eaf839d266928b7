"""Session stores for real deployments, selected by URL (docs/stores.md).

* ``memory://`` (default): in the server process; lost on restart; one instance only;
* ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``: one SQLite file that
  survives restarts and is shared by the server processes of one host (WAL, busy timeout);
* ``redis://host:port/db``: shared by a fleet; expiry by Redis TTLs.

Every store implements :class:`d2tls.core.dtls.session.SessionStore` (``get``, ``put`` until the
session's expiry, ``delete``, ``count``). SQLite and Redis stores seal each entry with a key
the operator provides (``--store-key-file``, see :mod:`d2tls.core.store.codec`): the master
secret is
never written to them in the clear, and opening one without a key file is a
:class:`~d2tls.core.errors.ConfigurationError`. Their ``get`` never raises: an unusable entry or an
unreachable backend is a miss (logged on the ``d2tls.core.store`` logger), so the server falls back
to a full handshake.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from d2tls.core.dtls.session import MemorySessionStore, SessionStore
from d2tls.core.errors import ConfigurationError
from d2tls.core.store.codec import (
    CorruptEntry,
    SessionCodec,
    StoreKeys,
    load_key_file,
    parse_key_text,
    write_key_file,
)

SCHEMES = ("memory", "sqlite", "redis", "rediss")


def _sqlite_path(url: str) -> Path:
    """SQLAlchemy's convention: ``sqlite:///rel.db`` is relative, ``sqlite:////abs.db`` not."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ConfigurationError(
            f"bad SQLite store URL {url!r}: expected sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db"
        )
    path = unquote(url[len(prefix) :].split("?", 1)[0])
    if path == ":memory:":
        raise ConfigurationError("sqlite :memory: is not a session store; use memory://")
    return Path(path)


def open_store(
    url: str,
    key_file: Path | None,
    *,
    keys: StoreKeys | None = None,
) -> SessionStore:
    """The session store for ``url``.

    ``key_file`` (or, for programs and tests, ``keys``) is required for SQLite and Redis and
    ignored by ``memory://``, which never serializes sessions.
    """
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES or "://" not in url:
        raise ConfigurationError(
            f"unknown session store URL {url.split('@')[-1]!r}: use memory://, "
            "sqlite:///path.db or redis://host:port/db"
        )
    if scheme == "memory":
        options = parse_qs(urlsplit(url).query)
        try:
            max_sessions = int(options.get("max_sessions", ["10000"])[-1])
        except ValueError:
            raise ConfigurationError(f"bad memory store URL {url!r}") from None
        return MemorySessionStore(max_sessions=max_sessions)
    if keys is None:
        if key_file is None:
            raise ConfigurationError(
                f"the {scheme} session store needs --store-key-file: master secrets are never "
                "stored in the clear (a file with 32 random bytes as 64 hex digits, mode 0600; "
                "create one with: python -c 'import os; print(os.urandom(32).hex())' > FILE)"
            )
        keys = load_key_file(key_file)
    codec = SessionCodec(keys)
    if scheme == "sqlite":
        from d2tls.core.store.sqlite_store import SQLiteSessionStore

        try:
            return SQLiteSessionStore(_sqlite_path(url), codec)
        except (OSError, ValueError, sqlite3.Error) as exc:  # not a database, read-only, ...
            raise ConfigurationError(f"cannot open SQLite store {url!r}: {exc}") from exc
    from d2tls.core.store.redis_store import RedisSessionStore

    return RedisSessionStore.from_url(url, codec)


__all__ = [
    "CorruptEntry",
    "MemorySessionStore",
    "SessionCodec",
    "SessionStore",
    "StoreKeys",
    "load_key_file",
    "open_store",
    "parse_key_text",
    "write_key_file",
]
