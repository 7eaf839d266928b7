"""The command line starts fast and every option explains itself.

* ``d2tls --help`` lists every subcommand, but the plugin modules (prove, bench, conformance)
  are imported only when their subcommand is chosen; the help listed for them comes from a
  static table that must match what the modules register.
* The ``client``, ``server``, ``device`` and ``agent`` paths, run for real with
  ``python -X importtime``, never import the heavy libraries (plotting, learning, Redis,
  diagram support) or the plugin modules. The start-up time itself is measured in
  ``benchmarks/test_startup.py``, not here.
* Every option and positional argument of every subcommand, plugins included, has a help text.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest

from conftest import LoadedPKI
from d2tls.cli import PLUGINS, build_parser
from d2tls.lab.peers import OutputCapture, free_udp_port

PSK = "dev:" + "11" * 16
IMPORTTIME = [sys.executable, "-X", "importtime", "-m", "d2tls.cli"]
#: Top-level packages (and submodules) that must not load on the four main paths.
HEAVY = (
    "matplotlib",
    "numpy",
    "aalpy",
    "redis",
    "pyinstrument",
    "graphviz",
    "pygraphviz",
    "hypothesis",
    "transitions.extensions.diagrams",
    "d2tls.prove",
    "d2tls.bench",
    "d2tls.conformance",
    "d2tls.adversary",
    "d2tls.lab.fleet",
    "d2tls.lab.demo",
)


def _walk(parser: argparse.ArgumentParser, prefix: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _walk(child, f"{prefix} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield prefix, action


def test_every_option_of_every_subcommand_has_help() -> None:
    missing = [
        f"{prefix} {'/'.join(action.option_strings) or action.dest}"
        for prefix, action in _walk(build_parser(), "d2tls")
        if not action.help or action.help == argparse.SUPPRESS or not action.help.strip()
    ]
    assert not missing, "options without help:\n" + "\n".join(missing)


def test_walk_sees_plugin_options() -> None:
    """The help test really covers plugins (it would pass vacuously otherwise)."""
    seen = {prefix for prefix, _ in _walk(build_parser(), "d2tls")}
    assert {"d2tls prove", "d2tls bench device", "d2tls overhead", "d2tls conformance"} <= seen


def _listed_help(parser: argparse.ArgumentParser) -> dict[str, str | None]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: a.help for a in action._choices_actions}
    raise AssertionError("no subcommands")


def test_static_plugin_help_matches_the_modules() -> None:
    full = _listed_help(build_parser())
    lazy = _listed_help(build_parser("client"))
    assert list(lazy) == list(full)  # same commands, same order
    for name, (_, help_text) in PLUGINS.items():
        assert full[name] == help_text == lazy[name], name


def test_top_level_help_imports_no_plugin() -> None:
    code = (
        "import sys; from d2tls.cli import build_parser; build_parser('');"
        "print(sorted(m for m in sys.modules if m.startswith(('d2tls.prove', 'd2tls.bench',"
        " 'd2tls.conformance', 'd2tls.core.dtls.client', 'd2tls.core.dtls.server', 'asyncio'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]", out


def test_chosen_plugin_is_loaded_in_full() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "d2tls.cli", "overhead", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0 and "--figure9-lifetime" in run.stdout, run.stdout + run.stderr


def _imported(stderr: str) -> set[str]:
    return set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", stderr, re.MULTILINE))


def _assert_light(stderr: str) -> None:
    modules = _imported(stderr)
    assert "d2tls.core.dtls.constants" in modules, stderr[-2000:]  # the output was really parsed
    heavy = sorted(m for m in modules if m.startswith(HEAVY) or m.split(".")[0] in HEAVY)
    assert not heavy, heavy


def _run_until(argv: list[str], ready: bytes) -> str:
    """Run ``python -X importtime -m d2tls.cli ARGV`` until it prints ``ready``; its stderr."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, "-X", "importtime", "-m", "d2tls.cli", *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
        )
        assert proc.stdout is not None
        capture = OutputCapture(proc.stdout)
        try:
            assert capture.wait_for(ready, 30), capture.text()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            capture.join()
        err.seek(0)
        return err.read().decode()


def test_client_path_is_light() -> None:
    port = free_udp_port()  # closed: fails at once with port unreachable
    run = subprocess.run(
        [*IMPORTTIME, "client", f"127.0.0.1:{port}", "--psk", PSK, "--timeout", "2"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 1, run.stdout
    _assert_light(run.stderr)


def test_device_path_is_light(pki: LoadedPKI) -> None:
    device = pki.paths.devices[0]
    run = subprocess.run(
        [
            *IMPORTTIME,
            "device",
            *("--agent", f"127.0.0.1:{free_udp_port()}", "--psk", PSK),
            *("--server", "127.0.0.1:9", "--server-name", "localhost"),
            *("--cert", str(device.cert), "--key", str(device.key), "--timeout", "2"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 1, run.stdout
    _assert_light(run.stderr)


def test_server_path_is_light() -> None:
    _assert_light(_run_until(["server", "--listen", "127.0.0.1:0", "--psk", PSK], b"listening"))


def test_agent_path_is_light(pki: LoadedPKI) -> None:
    argv = ["agent", "--listen", "127.0.0.1:0", "--psk-file", str(pki.paths.psk_file)]
    _assert_light(_run_until([*argv, "--ca", str(pki.paths.ca_cert)], b"listening"))


def test_heavy_list_is_detected() -> None:
    """_assert_light fails on a path that does load a heavy module (``overhead`` loads
    matplotlib's plotting or the bench package at least)."""
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "d2tls.cli", "overhead", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    with pytest.raises(AssertionError):
        _assert_light(run.stderr)
