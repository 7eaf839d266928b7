"""``d2tls server --stats-file FILE``: on SIGUSR1 the running server writes its counters
(``DTLSServer.counters()``) as JSON, which is how ``d2tls bench flood`` reads the pending
state of a server process. Real subprocess, real UDP on 127.0.0.1."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from d2tls.core.dtls.constants import ContentType
from d2tls.core.dtls.fragments import HandshakeFragment, encode_fragment
from d2tls.lab.peers import OutputCapture

PSK_ID, PSK_KEY = b"stats", bytes(range(32))


def _read_after_sigusr1(process: subprocess.Popen[bytes], path: Path) -> dict[str, int]:
    before = path.stat().st_mtime_ns if path.exists() else 0
    process.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_mtime_ns != before:
            data: dict[str, int] = json.loads(path.read_text(encoding="utf-8"))
            return data
        time.sleep(0.05)
    raise AssertionError(f"{path} not written after SIGUSR1")


def _partial_hello(source: socket.socket, port: int) -> None:
    """The first fragment of a ClientHello that declares 4,000 bytes and never completes."""
    fragment = HandshakeFragment(
        msg_type=1,
        length=4000,
        message_seq=0,
        fragment_offset=0,
        fragment_length=100,
        body=b"\x01" * 100,
    )
    body = encode_fragment(fragment)
    header = bytes([ContentType.HANDSHAKE]) + b"\xfe\xfd" + bytes(8) + len(body).to_bytes(2, "big")
    source.sendto(header + body, ("127.0.0.1", port))


def test_sigusr1_writes_the_counters_as_json(tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    argv = [sys.executable, "-m", "d2tls.cli", "server", "--listen", "127.0.0.1:0"]
    argv += ["--psk", f"{PSK_ID.decode()}:{PSK_KEY.hex()}", "--stats-file", str(stats)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    capture = OutputCapture(process.stdout)
    ready = re.compile(rb"listening on 127\.0\.0\.1:(\d+)\n")
    try:
        assert capture.wait_for(ready, 15), capture.text()
        match = ready.search(capture.data())
        assert match is not None
        port = int(match.group(1))
        idle = _read_after_sigusr1(process, stats)
        assert idle["pending_hellos"] == 0 and idle["established"] == 0, idle

        sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(5)]
        try:
            for sock in sockets:
                sock.bind(("127.0.0.1", 0))
                _partial_hello(sock, port)
            time.sleep(0.5)
            flooded = _read_after_sigusr1(process, stats)
        finally:
            for sock in sockets:
                sock.close()
        assert flooded["pending_hellos"] == 5, flooded
        assert 500 <= flooded["pending_hello_bytes"] < 5 * 4000, flooded
        assert process.poll() is None, capture.text()
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert "Traceback" not in capture.text()
