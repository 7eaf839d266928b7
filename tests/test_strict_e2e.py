"""Strict mode and server binding end to end (issue 24 items 2 and 3).

Real processes on 127.0.0.1: ``d2tls device`` and ``d2tls agent`` (or a compromised agent,
tests/steered_agent.py: the same agent code with the attacker's session) against our server
(``d2tls server --require-client-cert``) and OpenSSL (``openssl s_server -dtls1_2 -Verify 1
-verify_return_error``). Every certificate is made by the ``openssl`` command line
(tests/openssl_pki.py) under one CA: the server the device asks for (``localhost``), a server
for another name (``other.example``) and a second ``localhost`` server with another key.

* The honest run succeeds in bound mode with a pin and in strict mode (pin or chain), and the
  device resumes end to end (second connection: no delegation, an abbreviated handshake).
* An agent steered to the other server, or a pin that the server's key does not match, is
  refused by the device before it signs (the error names the cause); the agent ends the
  server's handshake with access_denied (RFC 5246 §7.2.2) and no session is resumed.
* An agent that swaps the server's ECDHE share gets a bound device's signature (the
  handshake then fails at the server), but not a strict device's.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import pytest

from d2tls.lab.peers import OpenSSLServer, OutputCapture, free_udp_port
from openssl_pki import DEVICE_CN, SERVER_EXT, SERVER_NAME, WRONG_NAME_EXT, Identity, OpenSSLPKI
from test_interop import CLIServer

pytestmark = pytest.mark.interop

D2TLS = [sys.executable, "-m", "d2tls.cli"]
STEERED_AGENT = [sys.executable, str(Path(__file__).with_name("steered_agent.py"))]
PSK = "ab" * 32
OTHER_NAME = "other.example"


def openssl_out(*command: str, stdin: bytes | None = None) -> bytes:
    done = subprocess.run(["openssl", *command], input=stdin, capture_output=True, check=True)
    return done.stdout


def openssl_pin(certificate: Path) -> str:
    """SHA-256 of the certificate's SubjectPublicKeyInfo, by the openssl CLI."""
    pem = openssl_out("x509", "-in", str(certificate), "-pubkey", "-noout")
    der = openssl_out("pkey", "-pubin", "-outform", "der", stdin=pem)
    return openssl_out("dgst", "-sha256", "-r", stdin=der).split()[0].decode()


def openssl_fingerprint(certificate: Path) -> str:
    """SHA-256 of the DER certificate (the agent's cert-sha256= binding), by the openssl CLI."""
    out = openssl_out("x509", "-in", str(certificate), "-noout", "-fingerprint", "-sha256")
    return out.decode().strip().split("=", 1)[1].replace(":", "").lower()


@dataclass(frozen=True)
class Files:
    pki: OpenSSLPKI
    other_name: Identity  # same CA, subjectAltName other.example
    twin: Identity  # same CA, same name (localhost), another key
    agent_psk_file: Path
    public_key: Path  # the server's public key alone, PEM (for --server-pin-file)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    directory = tmp_path_factory.mktemp("strict-e2e")
    pki = OpenSSLPKI(directory)
    agent_psk = directory / "agent-psk.txt"
    agent_psk.write_text(f"{DEVICE_CN}:{PSK} cert-sha256={openssl_fingerprint(pki.device.cert)}\n")
    public_key = directory / "server.pub"
    public_key.write_bytes(openssl_out("x509", "-in", str(pki.server.cert), "-pubkey", "-noout"))
    return Files(
        pki=pki,
        other_name=pki.issue("other-name", OTHER_NAME, WRONG_NAME_EXT),
        twin=pki.issue("twin", SERVER_NAME, SERVER_EXT),
        agent_psk_file=agent_psk,
        public_key=public_key,
    )


class Server(Protocol):
    port: int

    def saw_alert(self, name: str) -> bool: ...

    def resumptions(self) -> int: ...

    def handshakes(self) -> int: ...


class D2TLSServer:
    """``d2tls server`` (client certificates required, echo)."""

    def __init__(self, cli: CLIServer) -> None:
        self.cli, self.port = cli, cli.port

    def saw_alert(self, name: str) -> bool:
        return self.cli.wait_log(rf"peer sent fatal alert {name}\b", 0) is not None

    def resumptions(self) -> int:
        return len(re.findall(r"resumed=True", self.cli.log()))

    def handshakes(self) -> int:
        return len(re.findall(r"^handshake ", self.cli.log(), re.MULTILINE))


class SServer:
    """``openssl s_server -dtls1_2``, client certificates required."""

    ALERTS: ClassVar[dict[str, str]] = {"access_denied": "alert access denied"}

    def __init__(self, server: OpenSSLServer) -> None:
        self.server, self.port = server, server.port

    def saw_alert(self, name: str) -> bool:
        return self.server.wait_for(self.ALERTS[name], 5)

    def resumptions(self) -> int:
        return self.server.output().count("Reused session-id")

    def handshakes(self) -> int:
        return self.server.output().count("CIPHER is ")


@contextmanager
def server(kind: str, identity: Identity, ca: Path) -> Iterator[Server]:
    if kind == "d2tls":
        with CLIServer(
            "--cert", str(identity.cert), "--key", str(identity.key), "--ca", str(ca),
            "--require-client-cert", "--echo",
        ) as cli:  # fmt: skip
            yield D2TLSServer(cli)
    else:
        with OpenSSLServer(cert=identity.cert, key=identity.key, ca=ca) as s_server:
            yield SServer(s_server)


@dataclass
class AgentProcess:
    port: int
    capture: OutputCapture


@contextmanager
def agent(files: Files, allowed: int, *attack: str) -> Iterator[AgentProcess]:
    """``d2tls agent`` (no ``attack``) or the compromised agent."""
    port = free_udp_port()
    command = STEERED_AGENT if attack else [*D2TLS, "agent"]
    argv = [*command, "--listen", f"127.0.0.1:{port}", "--psk-file", str(files.agent_psk_file)]
    argv += ["--ca", str(files.pki.ca.cert), "--allow-server", f"127.0.0.1:{allowed}", *attack]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    capture = OutputCapture(process.stdout)
    try:
        assert capture.wait_for(b"agent listening", 20), capture.text()
        yield AgentProcess(port, capture)
    finally:
        process.terminate()
        process.wait(timeout=10)
        capture.join()


def device(files: Files, agent_port: int, server_port: int, *extra: str) -> dict[str, Any]:
    """``d2tls device --json`` for two connections to 127.0.0.1:server_port, as localhost."""
    argv = [*D2TLS, "device", "--json", "--agent", f"127.0.0.1:{agent_port}"]
    argv += ["--psk", f"{DEVICE_CN}:{PSK}", "--server", f"127.0.0.1:{server_port}"]
    argv += ["--server-name", SERVER_NAME, "--cert", str(files.pki.device.cert)]
    argv += ["--key", str(files.pki.device.key), "--connections", "2", "--send", "strict-e2e"]
    argv += ["--receive-timeout", "1", *extra]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)
    assert "Traceback" not in done.stderr, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["rc"] = done.returncode
    return result


def strict_pin(files: Files) -> tuple[str, ...]:
    return ("--strict", "--server-pin-file", str(files.public_key))


def strict_chain(files: Files) -> tuple[str, ...]:
    return ("--strict", "--ca", str(files.pki.ca.cert))


def bound_pin(files: Files) -> tuple[str, ...]:
    return ("--server-pin", openssl_pin(files.pki.server.cert))


MODES = {"bound+pin": bound_pin, "strict+pin": strict_pin, "strict+chain": strict_chain}
KINDS = ("d2tls", "openssl")


def assert_refused(result: dict[str, Any], cause: str, target: Server, before: int) -> None:
    """Refused before signing, for ``cause``; the server heard access_denied, resumed nothing."""
    assert result["rc"] == 1 and not result["ok"], result
    assert result["error"].startswith("signing refused: "), result
    assert cause in result["error"], result
    assert result["connections"] == [], result
    assert target.saw_alert("access_denied")
    assert target.resumptions() == before


@pytest.mark.parametrize("kind", KINDS)
def test_honest_runs_succeed_and_resume_end_to_end(files: Files, kind: str) -> None:
    with (
        server(kind, files.pki.server, files.pki.ca.cert) as target,
        agent(files, target.port) as helper,
    ):
        for mode, options in {"bound": lambda _: (), **MODES}.items():
            before = target.resumptions()
            result = device(files, helper.port, target.port, *options(files))
            assert result["rc"] == 0 and result["ok"], (mode, result)
            first, second = result["connections"]
            assert first["delegations"] == 1 and not first["resumed_from_cache"], mode
            assert first["key_operations"]["sign"] == 1, mode
            assert second["delegations"] == 0 and second["resumed_from_cache"], mode
            assert second["key_operations"] == {"sign": 0, "verify": 0, "ecdh": 0, "keygen": 0}
            assert first["session_id"] == second["session_id"], mode
            # strict: the ServerKeyExchange verify (+ the one-certificate chain's verify)
            verifies = {"bound": 0, "bound+pin": 0, "strict+pin": 1, "strict+chain": 2}[mode]
            assert first["key_operations"]["verify"] == verifies, (mode, first)
            if kind == "d2tls":
                assert second["received"] == "strict-e2e", (mode, second)
            # the device resumed the agent's session twice (both connections) end to end
            assert target.resumptions() == before + 2, (mode, kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["bound", *MODES])
def test_agent_steered_to_another_server_is_refused(files: Files, kind: str, mode: str) -> None:
    """The attacker model's ``other-server`` case with real processes: the other server's
    certificate is valid under the same CA, for another name; the device refuses to sign."""
    options = MODES[mode](files) if mode in MODES else ()
    with ExitStack() as stack:
        asked = stack.enter_context(server(kind, files.pki.server, files.pki.ca.cert))
        other = stack.enter_context(server(kind, files.other_name, files.pki.ca.cert))
        steer = f"127.0.0.1:{other.port}:{OTHER_NAME}"
        helper = stack.enter_context(agent(files, asked.port, "--steer", steer))
        result = device(files, helper.port, asked.port, *options)
        cause = f"is not for '{SERVER_NAME}', the server this device asked for"
        assert_refused(result, cause, other, 0)
        assert asked.handshakes() == 0 and other.handshakes() == 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", list(MODES))
def test_a_server_without_the_pinned_key_is_refused(files: Files, kind: str, mode: str) -> None:
    """A second ``localhost`` server under the same CA (another key): the name check passes;
    the pin refuses it. Without a pin a strict device signs for it (the CA vouches for the
    name; only a pin tells two servers of one name apart), and then its resumption at the
    server it asked for is refused: no session either way."""
    with ExitStack() as stack:
        asked = stack.enter_context(server(kind, files.pki.server, files.pki.ca.cert))
        twin = stack.enter_context(server(kind, files.twin, files.pki.ca.cert))
        steer = f"127.0.0.1:{twin.port}:{SERVER_NAME}"
        helper = stack.enter_context(agent(files, asked.port, "--steer", steer))
        result = device(files, helper.port, asked.port, *MODES[mode](files))
        if mode == "strict+chain":  # the documented boundary (docs/device-modes.md)
            assert result["rc"] == 1 and result["connections"] == [], result
            assert result["error"] == "the server refused the delegated session again", result
            assert twin.resumptions() == asked.resumptions() == 0
            return
        assert_refused(result, "does not carry the pinned key", twin, 0)
        assert twin.handshakes() == 0


@pytest.mark.parametrize("kind", KINDS)
def test_a_wrong_pin_is_refused_by_an_honest_agents_device(files: Files, kind: str) -> None:
    """No attacker: the device was configured with another server's key (the twin's)."""
    with (
        server(kind, files.pki.server, files.pki.ca.cert) as target,
        agent(files, target.port) as helper,
    ):
        for options in (
            ("--server-pin-file", str(files.twin.cert)),
            ("--strict", "--server-pin", openssl_pin(files.twin.cert)),
        ):
            result = device(files, helper.port, target.port, *options)
            assert_refused(result, "does not carry the pinned key", target, 0)
            assert target.handshakes() == 0
    # the agent's log names the device's refusal and what it told the server
    logged = "device: signing_refused: signing refused: the server certificate in the transcript "
    logged += "does not carry the pinned key; handshake with the server ended (access_denied)"
    assert helper.capture.text().count(logged) == 2, helper.capture.text()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", list(MODES))
def test_a_swapped_ecdhe_share_is_refused_only_in_strict_mode(
    files: Files, kind: str, mode: str
) -> None:
    """The compromised agent shows the device the genuine server flight with its own ECDHE
    share. Bound mode's checks (random, name, pin) all pass and the device signs a transcript
    the server never signed (this agent's engine then finds the signature is not over the real
    handshake). Strict mode refuses to sign."""
    with (
        server(kind, files.pki.server, files.pki.ca.cert) as target,
        agent(files, target.port, "--swap-share") as helper,
    ):
        result = device(files, helper.port, target.port, *MODES[mode](files))
    assert result["rc"] == 1 and not result["ok"] and result["connections"] == [], result
    if mode == "bound+pin":
        assert not result["error"].startswith("signing refused"), result
        # the device signed the swapped transcript: the agent's engine got a signature that
        # is not over the real handshake (the adversary's to use; the server never sees it)
        assert "the external signer returned an invalid signature" in result["error"], result
        assert target.resumptions() == 0
    else:
        assert result["error"] == (
            "signing refused: the ServerKeyExchange signature does not verify under the "
            "server's key"
        ), result
        assert target.saw_alert("access_denied")
        assert target.handshakes() == 0


@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        (lambda f: f.pki.dir / "missing.pem", (), "cannot read"),
        (lambda f: f.pki.server.key, (), "holds a private key"),
        (lambda f: f.agent_psk_file, (), "neither a PEM certificate nor a PEM/DER public key"),
        (lambda f: f.pki.dir, (), "Is a directory"),
        (lambda f: f.public_key, ("--mode", "blind"), "--server-pin needs bound mode"),
    ],
    ids=["missing", "private-key", "not-a-key", "directory", "blind"],
)
def test_a_bad_pin_file_is_a_clean_usage_error(
    files: Files, make: Any, extra: tuple[str, ...], message: str
) -> None:
    argv = [*D2TLS, "device", "--server", "127.0.0.1:9", "--server-name", SERVER_NAME]
    argv += ["--cert", str(files.pki.device.cert), "--key", str(files.pki.device.key)]
    argv += ["--strict", "--server-pin-file", str(make(files)), *extra]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--strict",), "--strict needs the server's key"),
        (("--strict", "--mode", "blind", "--ca", "ca.pem"), "--strict needs bound mode"),
        (("--ca", "ca.pem"), "--ca is used only with --standalone or with --strict"),
    ],
)
def test_strict_options_are_checked(files: Files, extra: tuple[str, ...], message: str) -> None:
    argv = [*D2TLS, "device", "--server", "127.0.0.1:9", "--server-name", SERVER_NAME]
    argv += ["--cert", str(files.pki.device.cert), "--key", str(files.pki.device.key), *extra]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2 and message in done.stderr, done.stderr
