"""`d2tls demo` (the README's first command) against each server, as real processes.

The comparison must show what D2TLS promises (paper §4.1, §6): for a new session the device
does exactly one private-key operation and no verification, ECDH or key generation; a reused
context costs no key operation at all; standalone DTLS needs at least four public-key
operations on the device.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def run_demo(server: str) -> dict[str, object]:
    completed = subprocess.run(
        [sys.executable, "-m", "d2tls.cli", "demo", "--json", "--server", server],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    result: dict[str, object] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.interop
@pytest.mark.parametrize("server", ["d2tls", "openssl", "gnutls"])
def test_demo_comparison(server: str) -> None:
    result = run_demo(server)
    assert result["ok"] is True
    bound, blind, standalone = result["bound"], result["blind"], result["standalone"]
    assert isinstance(bound, list) and isinstance(blind, list) and isinstance(standalone, list)
    for row in (bound[0], blind[0]):
        assert row["delegations"] == 1
        assert row["key_operations"] == {"sign": 1, "verify": 0, "ecdh": 0, "keygen": 0}
        assert row["links"]["device-agent"]["bytes_sent"] > 0
    # Bound mode ships the transcript to the device, blind mode only its hash.
    assert (
        bound[0]["links"]["device-agent"]["bytes_received"]
        > blind[0]["links"]["device-agent"]["bytes_received"]
    )
    assert bound[1]["delegations"] == 0 and bound[1]["resumed_from_cache"] is True
    assert bound[1]["public_key_operations"] == 0
    assert bound[1]["session_id"] == bound[0]["session_id"]
    assert standalone[0]["public_key_operations"] >= 4
    assert standalone[0]["key_operations"]["sign"] == 1
    timeline = result["timeline"]
    assert isinstance(timeline, list)
    messages = [(row["from"], row["to"], row["message"]) for row in timeline]
    expected_order = [
        ("device", "agent", "DelegationRequest"),
        ("agent", "server", "ClientHello"),
        ("agent", "device", "SignRequest"),
        ("device", "agent", "SignResponse"),
        ("server", "agent", "Finished"),
        ("agent", "device", "SessionContext"),
        ("agent", "device", "Wiped"),
        ("device", "server", "ClientHello"),
        ("device", "server", "Finished"),
    ]
    positions = [messages.index(step) for step in expected_order]
    assert positions == sorted(positions), messages


def test_demo_text_output_shows_timeline_and_table() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "d2tls.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    out = completed.stdout
    assert "agent -> device  SignRequest" in out
    assert "D2TLS bound (new, standing channel)" in out and "standalone (new)" in out
    assert out.rstrip().endswith("result: OK")
