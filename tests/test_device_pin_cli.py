"""``d2tls device --server-pin``: the bound-mode pin (RFC 7469 §2.4) from the command line.

Real processes on 127.0.0.1: ``d2tls server`` (client certificates required), ``d2tls agent``
(allow-listed, certificate-bound PSK file) and ``d2tls device``. The pin is computed with the
``openssl`` CLI, independently of d2tls.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import SERVER_NAME
from d2tls.core.pki import init_pki
from d2tls.lab.peers import OutputCapture, free_udp_port


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "d2tls.cli", *args]


def openssl_pin(certificate: Path) -> str:
    """SHA-256 of the certificate's SubjectPublicKeyInfo, by the openssl CLI."""
    spki = subprocess.run(
        f"openssl x509 -in {certificate} -pubkey -noout | openssl pkey -pubin -outform der "
        "| openssl dgst -sha256 -r",
        shell=True,
        capture_output=True,
        text=True,
        check=True,
    )
    return spki.stdout.split()[0]


def started(argv: list[str], ready: bytes) -> tuple[subprocess.Popen[bytes], OutputCapture]:
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    capture = OutputCapture(process.stdout)
    assert capture.wait_for(re.compile(re.escape(ready)), 15), capture.text()
    return process, capture


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    pki = init_pki(tmp_path_factory.mktemp("pin-pki"), server_name=SERVER_NAME, devices=1)
    server_port, agent_port = free_udp_port(), free_udp_port()
    server, _ = started(
        cli(
            "server",
            "--listen",
            f"127.0.0.1:{server_port}",
            "--cert",
            str(pki.server_cert),
            "--key",
            str(pki.server_key),
            "--ca",
            str(pki.ca_cert),
            "--require-client-cert",
            "--echo",
        ),
        b"listening on",
    )
    agent, _ = started(
        cli(
            "agent",
            "--listen",
            f"127.0.0.1:{agent_port}",
            "--psk-file",
            str(pki.agent_psk_file),
            "--ca",
            str(pki.ca_cert),
            "--allow-server",
            f"127.0.0.1:{server_port}",
        ),
        b"agent listening",
    )
    try:
        yield {"pki": pki, "server_port": server_port, "agent_port": agent_port}
    finally:
        for process in (agent, server):
            process.terminate()
            process.wait(timeout=10)


def device(stack: dict[str, Any], *extra: str) -> subprocess.CompletedProcess[str]:
    pki = stack["pki"]
    psk = pki.psk_file.read_text().splitlines()[0]
    return subprocess.run(
        cli(
            "device",
            "--json",
            "--agent",
            f"127.0.0.1:{stack['agent_port']}",
            "--psk",
            psk,
            "--server",
            f"127.0.0.1:{stack['server_port']}",
            "--server-name",
            SERVER_NAME,
            "--cert",
            str(pki.devices[0].cert),
            "--key",
            str(pki.devices[0].key),
            "--send",
            "pinned",
            *extra,
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_right_pin_delegates_and_resumes(stack: dict[str, Any]) -> None:
    run = device(stack, "--server-pin", openssl_pin(stack["pki"].server_cert))
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert run.returncode == 0 and result["ok"], run.stdout + run.stderr
    assert result["connections"][0]["received"] == "pinned"


def test_a_wrong_pin_refuses_to_sign_and_says_why(stack: dict[str, Any]) -> None:
    other = openssl_pin(stack["pki"].devices[0].cert)  # a real key, but not the server's
    run = device(stack, "--server-pin", other)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert run.returncode == 1 and not result["ok"], run.stdout + run.stderr
    assert "pinned key" in result["error"], result


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--server-pin", "abcd"), "expected 64 hex digits"),
        (("--server-pin", "00" * 32, "--mode", "blind"), "--server-pin needs bound mode"),
    ],
)
def test_bad_pin_arguments_exit_2(
    stack: dict[str, Any], extra: tuple[str, ...], message: str
) -> None:
    run = device(stack, *extra)
    assert run.returncode == 2, run.stdout + run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr, run.stderr
