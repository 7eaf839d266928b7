"""Pre-shared keys of 1..64 bytes everywhere (issue 18, point 3).

RFC 4279 sets no minimum key length and §5.3 asks for keys up to 64 octets. The 9-byte key of
the libcoap and tinydtls examples (``secretPSK``) must work with our client against OpenSSL's
``s_server -psk``, with our server, and on the device-agent channel, each time with a loud
warning naming the identity and the length; 0 and 65 bytes are refused with a clear error.
Keys that d2tls generates stay 32 bytes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import LoadedPKI
from d2tls.core.dtls.config import ClientConfig, ServerConfig
from d2tls.core.dtls.constants import CipherSuite
from d2tls.core.errors import ConfigurationError
from d2tls.core.pki import init_pki, load_psk_file, parse_psk
from d2tls.lab.peers import OpenSSLServer
from test_client_cert_nosan import assert_delegated_then_resumed, run_delegation
from test_interop import CLIServer

IDENTITY = "Client_identity"
SHORT = b"secretPSK"
PSK_SUITE = CipherSuite.TLS_PSK_WITH_AES_128_CCM_8
WARNING = f"PSK for identity {IDENTITY!r} is only 9 bytes (72 bits)"


def d2tls(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "d2tls.cli", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


def client_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_parse_psk_bounds() -> None:
    assert parse_psk(f"{IDENTITY}:{SHORT.hex()}") == (IDENTITY.encode(), SHORT)
    assert parse_psk("a:01") == (b"a", b"\x01")
    assert parse_psk("a:" + "ab" * 64)[1] == b"\xab" * 64
    with pytest.raises(ConfigurationError, match=r"is 0 bytes; it must be 1\.\.64 bytes"):
        parse_psk("a:")
    with pytest.raises(ConfigurationError, match=r"is 65 bytes; it must be 1\.\.64 bytes"):
        parse_psk("a:" + "ab" * 65)


def test_short_psk_warns_with_identity_and_length(caplog: pytest.LogCaptureFixture) -> None:
    parse_psk(f"{IDENTITY}:{SHORT.hex()}")
    assert WARNING in caplog.text
    caplog.clear()
    parse_psk(f"{IDENTITY}:{bytes(16).hex()}")
    assert caplog.text == ""


def test_configs_refuse_out_of_range_keys() -> None:
    for key in (b"", bytes(65)):
        with pytest.raises(ConfigurationError, match=r"must be 1\.\.64 bytes"):
            ClientConfig(cipher_suites=(PSK_SUITE,), psk_identity=b"id", psk=key).validate()
        with pytest.raises(ConfigurationError, match=r"must be 1\.\.64 bytes"):
            ServerConfig(cipher_suites=(PSK_SUITE,), psk_keys={b"id": key}).validate()
    ClientConfig(cipher_suites=(PSK_SUITE,), psk_identity=b"id", psk=b"\x01").validate()
    ServerConfig(cipher_suites=(PSK_SUITE,), psk_keys={b"id": bytes(64)}).validate()


def test_psk_file_refuses_out_of_range_keys_by_line(tmp_path: Path) -> None:
    path = tmp_path / "psk.txt"
    path.write_text(f"ok:{SHORT.hex()}\nlong:{'00' * 65}\n")
    with pytest.raises(ConfigurationError, match=r"psk\.txt:2: PSK key for 'long' is 65 bytes"):
        load_psk_file(path)


def test_generated_keys_stay_32_bytes(tmp_path: Path) -> None:
    paths = init_pki(tmp_path / "pki", devices=3)
    assert {len(key) for key in load_psk_file(paths.psk_file).values()} == {32}


@pytest.mark.parametrize("key", ["", "00" * 65], ids=["0-bytes", "65-bytes"])
def test_cli_refuses_out_of_range_keys(key: str) -> None:
    client = d2tls("client", "127.0.0.1:9", "--psk", f"{IDENTITY}:{key}")
    assert client.returncode == 2
    length = len(key) // 2
    expected = f"PSK key for {IDENTITY!r} is {length} bytes; it must be 1..64 bytes"
    assert expected in client.stderr, client.stderr
    server = d2tls("server", "--listen", "127.0.0.1:0", "--psk", f"{IDENTITY}:{key}")
    assert server.returncode == 2
    assert expected in server.stderr, server.stderr


def test_nine_byte_psk_against_openssl_s_server() -> None:
    """``openssl s_server -psk 73656372657450534b`` (``secretPSK``) over DTLS 1.2."""
    with OpenSSLServer(psk=(IDENTITY.encode(), SHORT), client_auth="none") as server:

        def reply() -> None:
            if server.wait_for("hello-openssl", 15):
                server.send(b"hello-back\n")

        replier = threading.Thread(target=reply, daemon=True)
        replier.start()
        proc = d2tls(
            "client",
            f"127.0.0.1:{server.port}",
            "--json",
            "--timeout",
            "10",
            "--psk",
            f"{IDENTITY}:{SHORT.hex()}",
            "--send",
            "hello-openssl",
            "--receive-timeout",
            "5",
        )
        replier.join(5)
        assert server.wait_for("CIPHER is PSK-AES128-CCM8"), server.output()
    result = client_json(proc)
    assert proc.returncode == 0 and result["ok"] is True, (result, proc.stderr)
    assert result["cipher"] == PSK_SUITE.name
    assert result["received"] == "hello-back\n"
    assert WARNING in proc.stderr, proc.stderr


def test_nine_byte_psk_against_our_server() -> None:
    with CLIServer("--psk", f"{IDENTITY}:{SHORT.hex()}", "--echo") as server:
        proc = d2tls(
            "client",
            f"127.0.0.1:{server.port}",
            "--json",
            "--psk",
            f"{IDENTITY}:{SHORT.hex()}",
            "--send",
            "hello-ours",
        )
        assert WARNING in server.log(), server.log()
    result = client_json(proc)
    assert result["ok"] is True and result["received"] == "hello-ours", (result, proc.stderr)
    assert result["cipher"] == PSK_SUITE.name
    assert WARNING in proc.stderr


def test_nine_byte_psk_on_the_agent_channel(pki: LoadedPKI, tmp_path: Path) -> None:
    """The device-agent channel (DTLS-PSK) with ``secretPSK``; the agent warns at start."""
    device = pki.paths.devices[0]
    psk_file = tmp_path / "psk.txt"
    psk_file.write_text(f"{IDENTITY}:{SHORT.hex()}\n")
    with CLIServer(
        "--cert",
        str(pki.paths.server_cert),
        "--key",
        str(pki.paths.server_key),
        "--ca",
        str(pki.paths.ca_cert),
        "--require-client-cert",
        "--echo",
    ) as server:
        proc, agent_log = run_delegation(
            psk_file=psk_file,
            psk_arg=f"{IDENTITY}:{SHORT.hex()}",
            ca=pki.paths.ca_cert,
            server_port=server.port,
            cert=device.cert,
            key=device.key,
        )
    assert_delegated_then_resumed(proc)
    assert WARNING in agent_log, agent_log
    assert WARNING in proc.stderr, proc.stderr
