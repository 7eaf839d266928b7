"""A throwaway ``redis-server`` on 127.0.0.1 (fleet demo, tests, benchmarks).

It runs Debian's ``redis-server`` binary with a temporary directory, no persistence
(``--save '' --appendonly no``) and loopback only; it can be killed and restarted on the same
port to simulate an outage.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from d2tls.core.clock import monotonic
from d2tls.core.errors import ConfigurationError
from d2tls.core.errors import (
    RedisServerMissing as RedisServerMissing,  # re-exported: its home is d2tls.core.errors
)

INSTALL_HINT = "install Debian's redis-server package (bash scripts/setup.sh does it)"


def redis_server_binary() -> str:
    """Path of ``redis-server``; RedisServerMissing with the install hint if absent."""
    found = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if Path(p).exists()), None
    )
    if found is None:
        raise RedisServerMissing(f"redis-server not found: {INSTALL_HINT}")
    return found


def free_tcp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """``with RedisServer() as server: server.url`` — a private Redis on loopback."""

    def __init__(self, port: int | None = None, directory: Path | None = None) -> None:
        self.binary = redis_server_binary()
        self.port = port if port is not None else free_tcp_port()
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="d2tls-redis-")
            directory = Path(self._tempdir.name)
        self.directory = directory
        self.log = directory / f"redis-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def argv(self) -> list[str]:
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
        ]

    def start(self, timeout: float = 10.0) -> None:
        """Start it and wait until it answers PING."""
        if self.running:
            return
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            self.argv(), stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        handle.close()
        client = redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5
        )
        deadline = monotonic() + timeout
        try:
            while monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    time.sleep(0.02)
        finally:
            client.close()
        tail = self.log.read_text(errors="replace")[-2000:]
        self.stop(kill=True)
        raise ConfigurationError(f"redis-server on port {self.port} did not start: {tail}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, kill: bool = False) -> None:
        """Stop it (SIGKILL with ``kill``: a crash, nothing flushed)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        if kill:
            process.kill()
        else:
            process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def restart(self) -> None:
        """Stop and start again on the same port (empty: nothing is persisted)."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
