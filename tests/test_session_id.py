"""Servers that issue an empty session ID (issue 18, point 4).

RFC 5246 §7.4.1.3: an empty session_id in the ServerHello means the session "will not be
cached and therefore cannot be resumed". ``openssl s_server -no_cache`` is such a server (it
turns the server session cache off, and without a ticket OpenSSL then sends a zero-length ID).
``d2tls client --session-out`` must say so at once and write no file; a caching server still
gets its file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import LoadedPKI
from d2tls.core.dtls.constants import CipherSuite
from d2tls.core.dtls.session import Session
from d2tls.core.dtls.session_file import (
    SessionNotResumable,
    load_session,
    save_session,
    session_to_dict,
)
from d2tls.lab.peers import OpenSSLServer

PSK = (b"device-1", bytes(range(32)))
PSK_ARG = f"device-1:{PSK[1].hex()}"


def d2tls_client(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "d2tls.cli", "client", f"127.0.0.1:{port}", "--timeout", "10"]
    proc = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=40, check=False)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


def no_cache_server(pki: LoadedPKI | None = None) -> OpenSSLServer:
    if pki is None:
        return OpenSSLServer(psk=PSK, client_auth="none", extra_args=["-no_cache"])
    return OpenSSLServer(
        cert=pki.paths.server_cert,
        key=pki.paths.server_key,
        ca=pki.paths.ca_cert,
        extra_args=["-no_cache"],
    )


def test_save_session_refuses_an_empty_session_id(tmp_path: Path) -> None:
    session = Session(
        session_id=b"",
        master_secret=bytearray(48),
        cipher_suite=CipherSuite.TLS_PSK_WITH_AES_128_CCM_8,
        extended_master_secret=True,
    )
    path = tmp_path / "s.json"
    with pytest.raises(SessionNotResumable, match="cannot be resumed"):
        save_session(session, path, "example:5684")
    assert not path.exists()
    # A file written by an older d2tls, which saved such sessions, is explained on loading.
    path.write_text(json.dumps(session_to_dict(session)))
    with pytest.raises(SessionNotResumable, match="holds an empty session ID"):
        load_session(path)


def test_openssl_no_cache_really_sends_an_empty_session_id() -> None:
    """The premise, seen by our client (which reports the ServerHello's session ID)."""
    with no_cache_server() as server:
        proc = d2tls_client(server.port, "--psk", PSK_ARG, "--json")
    result = json.loads(proc.stdout)
    assert result["ok"] is True, result
    assert result["session_id"] == "", result


@pytest.mark.parametrize("kind", ["psk", "certificate"])
def test_session_out_against_a_server_without_session_ids(
    pki: LoadedPKI, tmp_path: Path, kind: str
) -> None:
    out = tmp_path / "session.json"
    device = pki.paths.devices[0]
    if kind == "psk":
        args = ["--psk", PSK_ARG]
    else:
        args = ["--ca", str(pki.paths.ca_cert), "--cert", str(device.cert)]
        args += ["--key", str(device.key), "--server-name", "localhost"]
    with no_cache_server(None if kind == "psk" else pki) as server:
        proc = d2tls_client(server.port, *args, "--session-out", str(out))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith(
        f"d2tls: error: the server 127.0.0.1:{server.port} sent an empty session ID: it does not "
        "cache sessions, so this session cannot be resumed"
    ), proc.stderr
    assert "no session file written" in proc.stderr
    assert not out.exists()


def test_session_out_json_against_a_server_without_session_ids(tmp_path: Path) -> None:
    out = tmp_path / "session.json"
    with no_cache_server() as server:
        proc = d2tls_client(server.port, "--psk", PSK_ARG, "--json", "--session-out", str(out))
    result = json.loads(proc.stdout)
    assert proc.returncode == 2 and result["ok"] is False
    assert "cannot be resumed" in result["error"]
    assert not out.exists()


def test_session_out_still_written_for_a_caching_server(tmp_path: Path) -> None:
    """The control: the same s_server with its session cache on issues an ID; the file is
    written and loads."""
    out = tmp_path / "session.json"
    with OpenSSLServer(psk=PSK, client_auth="none") as server:
        proc = d2tls_client(server.port, "--psk", PSK_ARG, "--session-out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert len(load_session(out).session_id) == 32
