"""Start-up time of the ``d2tls`` command line (not part of the default suite).

Run: ``.venv/bin/python -m pytest benchmarks/test_startup.py --benchmark-only``. Each round
starts a fresh interpreter, ``python -m d2tls.cli ARGS``, and waits for it to exit: the figure
is the whole process, interpreter start-up included. The target (issue 18) is under 0.5 s for
the ``client``, ``server``, ``device`` and ``agent`` paths; nothing here asserts a speed, only
that the command really ran (exit status 0 and its usage text).
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

CLI = [sys.executable, "-m", "d2tls.cli"]
COMMANDS = [
    pytest.param(["--help"], id="help"),
    pytest.param(["client", "--help"], id="client"),
    pytest.param(["server", "--help"], id="server"),
    pytest.param(["device", "--help"], id="device"),
    pytest.param(["agent", "--help"], id="agent"),
    pytest.param(["bench", "--help"], id="bench-plugin"),
]


def _run(args: list[str]) -> str:
    completed = subprocess.run(
        [sys.executable, "-m", "d2tls.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


@pytest.mark.benchmark(group="cli-startup")
@pytest.mark.parametrize("args", COMMANDS)
def test_cli_startup(benchmark: Any, args: list[str]) -> None:
    out = benchmark.pedantic(_run, args=(args,), rounds=10, warmup_rounds=1)
    assert out.startswith("usage: d2tls")


def _client_run(port: int) -> str:
    completed = subprocess.run(
        [*CLI, "client", f"127.0.0.1:{port}", "--timeout", "5", "--psk", "dev:" + "11" * 16],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert completed.returncode == 1, completed.stderr
    return completed.stderr


@pytest.mark.benchmark(group="cli-startup")
def test_cli_client_run_to_first_failure(benchmark: Any) -> None:
    """The whole client path: parse, build the engine, send a ClientHello to a closed port
    on 127.0.0.1 and report ICMP port unreachable (imports everything a handshake needs)."""
    from d2tls.lab.peers import free_udp_port

    err = benchmark.pedantic(_client_run, args=(free_udp_port(),), rounds=10, warmup_rounds=1)
    assert "port unreachable" in err
