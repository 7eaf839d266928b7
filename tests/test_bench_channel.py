"""``d2tls bench channel``: the device's cost of one channel handshake, psk vs
ecdhe-psk (issue 23 item 1). Counts and bytes are checked; timings only for being there."""

from __future__ import annotations

import json
import subprocess
import sys

from d2tls.bench.channel import handshake, measure


def test_ecdhe_psk_costs_one_keygen_one_ecdh_and_two_points() -> None:
    psk, ecdhe = handshake("psk"), handshake("ecdhe-psk")
    assert psk.key_operations == {"keygen": 0, "ecdh": 0, "sign": 0, "verify": 0}
    assert ecdhe.key_operations == {"keygen": 1, "ecdh": 1, "sign": 0, "verify": 0}
    # Same flights (cookie exchange included). Sent: the ClientKeyExchange's point<1..255>
    # (1 + 65 bytes). Received: the ServerKeyExchange in its own record (13 + 12 header bytes,
    # hint<0..2^16-1> 2, named_curve 3, point 1 + 65; RFC 5489 §2) and the ServerHello's
    # ec_point_formats extension (6 bytes, RFC 8422 §5.2). The AEAD overhead is the same (16).
    assert psk.datagrams == ecdhe.datagrams == 6
    assert ecdhe.bytes_sent - psk.bytes_sent == 1 + 65
    assert ecdhe.bytes_received - psk.bytes_received == (13 + 12) + 2 + 3 + (1 + 65) + 6


def test_measure_reports_ratios_from_one_run() -> None:
    result = measure(3)
    channels = result["channels"]
    assert set(channels) == {"psk", "ecdhe-psk"}
    assert channels["ecdhe-psk"]["suite"] == "TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256"
    assert result["ratio_ecdhe_psk_over_psk"]["bytes"] == round(
        channels["ecdhe-psk"]["bytes"] / channels["psk"]["bytes"], 2
    )
    assert result["ratio_ecdhe_psk_over_psk"]["cpu"] > 0


def test_command_line_json() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "d2tls.cli", "bench", "channel", "--runs", "2", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(proc.stdout)
    assert result["runs"] == 2 and result["ratio_ecdhe_psk_over_psk"]["bytes"] > 1.0
