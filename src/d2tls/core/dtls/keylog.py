"""NSS key log writer (the SSLKEYLOGFILE format read by Wireshark) for debugging only.

Format: ``CLIENT_RANDOM <client_random hex> <master_secret hex>`` per line (NSS "Key Log
Format"; the TLS 1.2 master secret is 48 bytes, RFC 5246 §8.1).
"""

from __future__ import annotations

import os
import threading
from types import TracebackType

from d2tls.core.errors import ConfigurationError

#: Environment variable naming the key log file (NSS, OpenSSL, curl, browsers).
ENV_VAR = "SSLKEYLOGFILE"


def keylog_line(client_random: bytes, master_secret: bytes) -> str:
    """One key log line, without the newline."""
    if len(client_random) != 32:
        raise ValueError("client_random must be 32 bytes")
    if len(master_secret) != 48:
        raise ValueError("master secret must be 48 bytes")
    return f"CLIENT_RANDOM {bytes(client_random).hex()} {bytes(master_secret).hex()}"


class KeyLogFile:
    """Appends key log lines to ``path`` (created with mode 0600); call it with a line.

    Writes are serialized by a lock and flushed per line, so concurrent connections (threads or
    asyncio tasks) never interleave partial lines.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "a", encoding="ascii")
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:
        text = line if line.endswith("\n") else line + "\n"
        with self._lock:
            if self._file.closed:
                return
            self._file.write(text)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.closed

    def __enter__(self) -> KeyLogFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KeyLogFile({self.path!r})"


def keylog_from_environment() -> KeyLogFile | None:
    """A :class:`KeyLogFile` on ``$SSLKEYLOGFILE`` if that is set and non-empty, else None."""
    path = os.environ.get(ENV_VAR)
    if not path:
        return None
    try:
        return KeyLogFile(path)
    except OSError as exc:
        raise ConfigurationError(f"cannot open {ENV_VAR}={path!r}: {exc}") from exc
