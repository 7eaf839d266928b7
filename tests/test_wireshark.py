"""Wireshark decrypts our DTLS traffic with our key log (SSLKEYLOGFILE, NSS format).

This checks our record protection and key log against an independent implementation:
tshark's DTLS dissector derives the keys from the logged master secret and decrypts the
application data of a full and of a resumed (abbreviated) handshake, for CCM-8 and GCM.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import LoadedPKI, Run, client_config, server_config
from d2tls.core.dtls.constants import CipherSuite
from d2tls.lab.pcap import write_pcap
from d2tls.sim import SERVER_ADDRESS

Packet = tuple[float, tuple[str, int], tuple[str, int], bytes]


def tshark_payloads(capture: Path, keylog: Path) -> list[str]:
    tshark = shutil.which("tshark")
    assert tshark, "tshark is not installed: scripts/setup.sh installs it (Debian package tshark)"
    result = subprocess.run(
        [
            tshark,
            "-r",
            str(capture),
            "-o",
            f"tls.keylog_file:{keylog}",
            "-d",
            f"udp.port=={SERVER_ADDRESS[1]},dtls",
            "-Y",
            "dtls.app_data and data",
            "-T",
            "fields",
            "-e",
            "data.data",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line.strip()]


def record_run(run: Run, packets: list[Packet]) -> None:
    def tap(source: tuple[str, int], destination: tuple[str, int], data: bytes) -> list[bytes]:
        packets.append((1_700_000_000 + run.sim.now, source, destination, data))
        return [data]

    run.sim.tap = tap


@pytest.mark.parametrize(
    "suite",
    [
        CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,
        CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ],
)
def test_tshark_decrypts_full_and_resumed_sessions(
    pki: LoadedPKI, tmp_path: Path, suite: CipherSuite
) -> None:
    keylog_lines: list[str] = []
    packets: list[Packet] = []
    server_cfg = server_config(pki, cipher_suites=(suite,))
    first = Run(server_cfg, client_config(pki, cipher_suites=(suite,), keylog=keylog_lines.append))
    record_run(first, packets)
    first.handshake()
    first.send_to_server(b"full handshake data")
    first.settle()
    session = Run.completed(first.client_events)[0].session
    second = Run(
        server_cfg,
        client_config(pki, cipher_suites=(suite,), keylog=keylog_lines.append, session=session),
        server=first.server,
        address=("198.51.100.8", 50001),
    )
    record_run(second, packets)
    second.handshake()
    assert Run.completed(second.client_events)[0].resumed
    second.send_to_server(b"resumed session data")
    second.settle()
    capture, keylog = tmp_path / "d2tls.lab.pcap", tmp_path / "keys.log"
    write_pcap(capture, packets)
    keylog.write_text("\n".join(keylog_lines) + "\n")
    decrypted = [bytes.fromhex(p.replace(":", "")) for p in tshark_payloads(capture, keylog)]
    assert b"full handshake data" in decrypted
    assert b"resumed session data" in decrypted
    # Without the key log nothing is readable.
    empty = tmp_path / "empty.log"
    empty.write_text("")
    assert tshark_payloads(capture, empty) == []
