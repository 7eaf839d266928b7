"""README.md's command-line section works when pasted.

The first ``sh`` block under "## Command line" is run as written, in order, in a temporary
directory: each command through ``bash -c`` with a ``d2tls`` on the PATH that is this
checkout's (what ``source .venv/bin/activate`` gives a reader). A command under a comment
that says it "runs until Ctrl-C" is started in the background, like in its own terminal, and
must print that it listens; every other command must exit 0. Free ports replace 4433, 5684
and 8080 so that the test does not collide with anything. At the end each background command
gets Ctrl-C (SIGINT) and must exit with status 130 without a traceback.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from d2tls.lab.peers import OutputCapture, free_udp_port

ROOT = Path(__file__).resolve().parents[1]
LONG_RUNNING = "runs until Ctrl-C"


@dataclass(frozen=True)
class Step:
    command: str
    background: bool


def readme_steps() -> list[Step]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Command line") :]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match, "no sh block in the command-line section"
    lines = match.group(1).replace("\\\n", " ").splitlines()
    steps: list[Step] = []
    background = False
    for line in lines:
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            background = LONG_RUNNING in stripped
            continue
        steps.append(Step(stripped, background))
        background = False
    return steps


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_readme_block_is_parsed() -> None:
    """The parser sees the documented steps (a slip would make the run test vacuous)."""
    steps = readme_steps()
    assert steps[0].command.startswith("source .venv/bin/activate")
    background = [s.command.split()[1] for s in steps if s.background]
    assert background == ["server", "pki", "agent"]
    assert sum(s.command.startswith("d2tls client") for s in steps) == 2
    assert sum(s.command.startswith("d2tls device") for s in steps) == 2


def test_readme_command_line_runs_when_pasted(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "d2tls"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m d2tls.cli "$@"\n')
    shim.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    ports = {"4433": free_udp_port(), "5684": free_udp_port(), "8080": free_tcp_port()}
    background: list[tuple[str, subprocess.Popen[bytes], OutputCapture]] = []
    try:
        for step in readme_steps():
            if step.command.startswith("source .venv/bin/activate"):
                continue  # the shim on PATH stands for the activated venv
            command = step.command
            for old, new in ports.items():
                command = command.replace(f":{old}", f":{new}")
            if step.background:
                proc = subprocess.Popen(
                    ["bash", "-c", f"exec {command}"],
                    cwd=work,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                assert proc.stdout is not None
                capture = OutputCapture(proc.stdout)
                background.append((command, proc, capture))
                assert capture.wait_for(b"listening", 30), f"{command}:\n{capture.text()}"
                continue
            run = subprocess.run(
                ["bash", "-c", command],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert run.returncode == 0, f"{command}\n{run.stdout}\n{run.stderr}"
            assert "Traceback" not in run.stderr, run.stderr
            if "--session-in" in command:
                assert '"resumed": true' in run.stdout, run.stdout
    finally:
        for _, proc, _ in background:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        statuses = []
        for command, proc, capture in background:
            try:
                statuses.append((command, proc.wait(timeout=20), capture))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                statuses.append((command, proc.wait(), capture))
            capture.join()
    for command, status, capture in statuses:
        assert status == 130, f"{command} exited {status}:\n{capture.text()}"
        assert "Traceback" not in capture.text()
    assert (work / "client.svg").read_bytes().lstrip().startswith((b"<?xml", b"<svg"))
