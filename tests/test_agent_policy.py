"""The agent's delegation policy (spec/delegation.md §6 and §9.1), over real UDP on loopback.

Parsing of the agent PSK file and of server rules, then the refusals a device meets: a server
not allowed, a certificate not bound to its PSK identity, an unbound (legacy) identity, a reused
request_id (after a refused and after a completed delegation, driven by a raw channel client),
and which side refused which certificate. Every refusal is a DelegationError with a reason, and
the agent logs it.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import SERVER_NAME, LoadedPKI, server_config
from d2tls.core.delegation.messages import (
    DelegationError,
    DelegationErrorCode,
    DelegationMessage,
    DelegationMode,
    DelegationRequest,
    SessionContext,
    SignRequest,
    SignResponse,
    Wiped,
    decode_message,
    encode_message,
)
from d2tls.core.delegation.policy import (
    AgentPolicy,
    DeviceEntry,
    load_agent_psk_file,
    parse_psk_line,
    parse_server_rule,
)
from d2tls.core.dtls.client import DTLSClient
from d2tls.core.dtls.config import ClientConfig
from d2tls.core.dtls.constants import CipherSuite
from d2tls.core.dtls.server import DTLSServer
from d2tls.core.errors import ConfigurationError
from d2tls.core.pki.generate import init_pki
from d2tls.core.pki.verify import (
    load_certificate_chain,
    load_private_key,
    load_psk_file,
    load_trust_store,
)
from d2tls.core.roles.agent import AgentConfig, AgentSession
from d2tls.core.roles.device import CHANNEL_MTU, DelegationFailed, DeviceConfig
from d2tls.core.roles.signer import DeviceSigner
from d2tls.lab.peers import free_udp_port
from d2tls.net.agent_host import Agent
from d2tls.net.device_host import Device
from d2tls.net.udp import ClientEndpoint, ServerEndpoint

KEY = "ab" * 32


def run(factory: Callable[[], Any]) -> Any:
    return asyncio.run(asyncio.wait_for(factory(), timeout=60))


# --------------------------------------------------------------------------- parsing
@pytest.mark.parametrize(
    ("rule", "host", "port", "expected"),
    [
        ("127.0.0.1:4433", "127.0.0.1", 4433, True),
        ("127.0.0.1:4433", "127.0.0.1", 4434, False),
        ("127.0.0.1", "127.0.0.1", 9, True),
        ("10.0.0.0/8", "10.200.1.1", 5684, True),
        ("10.0.0.0/8", "11.0.0.1", 5684, False),
        ("10.0.0.0/8:5684", "10.0.0.1", 5684, True),
        ("10.0.0.0/8:5684", "10.0.0.1", 5685, False),
        ("::1", "::1", 4433, True),
        ("[::1]:4433", "::1", 4433, True),
        ("[::1]:4433", "::1", 1, False),
        ("fd00::/8", "fd12::1", 1, True),
        ("[fd00::/8]:4433", "fd12::1", 4433, True),
        ("[fd00::/8]:4433", "127.0.0.1", 4433, False),
        ("LocalHost:4433", "localhost", 4433, True),
        ("localhost:4433", "127.0.0.1", 4433, False),  # names are never resolved
        ("127.0.0.0/8", "localhost", 4433, False),
    ],
)
def test_server_rules(rule: str, host: str, port: int, expected: bool) -> None:
    assert parse_server_rule(rule).matches(host, port) is expected


@pytest.mark.parametrize(
    "bad", ["", "localhost", "host:0", "host:70000", "10.0.0.1/8", "[::1", "[::1]x", "a b:1"]
)
def test_bad_server_rules_name_the_problem(bad: str) -> None:
    with pytest.raises(ConfigurationError, match=r"server rule|empty"):
        parse_server_rule(bad)


def test_psk_line_legacy_and_extended() -> None:
    legacy = parse_psk_line(f"urn:dev:1:{KEY}")
    assert (legacy.identity, legacy.key, legacy.bound, legacy.allow) == (
        b"urn:dev:1",
        bytes.fromhex(KEY),
        False,
        (),
    )
    fp = "cd" * 32
    entry = parse_psk_line(
        f"device-1:{KEY}  cert-sha256={fp},{'ef' * 32} allow=127.0.0.1:4433,[::1]:5684 "
        "cert-subject=CN=device\\201,O=x"
    )
    assert entry.identity == b"device-1" and entry.bound
    assert entry.cert_sha256 == {bytes.fromhex(fp), bytes.fromhex("ef" * 32)}
    assert entry.cert_subject == "CN=device 1,O=x"
    assert [str(r) for r in entry.allow] == ["127.0.0.1:4433", "[::1]:5684"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (f"d:{KEY} alow=1.2.3.4:5", "unknown attribute 'alow'"),
        (f"d:{KEY} cert-sha256=abcd", "64 hex digits"),
        (f"d:{KEY} cert-sha256=", "no value"),
        (f"d:{KEY} allow=nohost", "server rule"),
        ("d:zz", "not hex"),
    ],
)
def test_bad_psk_lines(line: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_psk_line(line)


def test_agent_psk_file_reports_the_line(tmp_path: Path) -> None:
    path = tmp_path / "agent-psk.txt"
    path.write_text(f"# devices\n\na:{KEY}\nb:{KEY} colour=blue\n")
    with pytest.raises(ConfigurationError, match=r"agent-psk.txt:4: unknown attribute"):
        load_agent_psk_file(path)
    path.write_text(f"a:{KEY}\na:{KEY} cert-sha256={'00' * 32}\n")
    with pytest.raises(ConfigurationError, match="duplicate"):
        load_agent_psk_file(path)


def test_pki_init_binds_every_device(tmp_path: Path) -> None:
    paths = init_pki(tmp_path, devices=2)
    table = load_agent_psk_file(paths.agent_psk_file)
    plain = load_psk_file(paths.psk_file)  # the plain file keeps the keys, unchanged format
    assert {i: e.key for i, e in table.items()} == plain
    for device in paths.devices:
        leaf = load_certificate_chain(device.cert)[0]
        entry = table[device.name.encode()]
        assert entry.cert_sha256 == {hashlib.sha256(leaf).digest()}


# --------------------------------------------------------------------------- sans-IO session
def request(request_id: int, chain: tuple[bytes, ...], port: int = 4433) -> DelegationRequest:
    return DelegationRequest(
        request_id=request_id,
        server_host="127.0.0.1",
        server_port=port,
        server_name=SERVER_NAME,
        cipher_suites=(int(CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8),),
        certificate_chain=chain,
        mode=DelegationMode.BLIND,
    )


def session_for(pki: LoadedPKI, used: set[int], sent: list[DelegationMessage]) -> AgentSession:
    entry = DeviceEntry(
        b"device-1", bytes(32), frozenset({hashlib.sha256(pki.device.chain[0]).digest()})
    )
    policy = AgentPolicy({b"device-1": entry})  # no server allowed
    session = NoHandshake(
        AgentConfig(psk_keys=policy.psk_keys, trust_store=pki.store, policy=policy),
        identity=b"device-1",
        used_request_ids=used,
    )
    session.outbox = sent  # what the agent would send the device
    return session


class NoHandshake(AgentSession):
    """A session whose policy must refuse: starting a handshake fails the test."""

    def _start_server_handshake(self, request: DelegationRequest) -> None:
        pytest.fail("must not start a handshake")


def test_refused_request_id_is_never_served_again(pki: LoadedPKI) -> None:
    used: set[int] = set()
    sent: list[DelegationMessage] = []
    session_for(pki, used, sent).receive(request(41, pki.device.chain))
    session_for(pki, used, sent).receive(request(41, pki.device.chain))
    first, second = sent
    assert isinstance(first, DelegationError) and isinstance(second, DelegationError)
    assert (first.request_id, first.code) == (41, DelegationErrorCode.UNSUPPORTED)
    assert "server 127.0.0.1:4433 is not allowed" in first.reason
    assert (second.request_id, second.code) == (41, DelegationErrorCode.UNEXPECTED_MESSAGE)
    assert second.reason == "request_id 41 was already used on this channel"


def test_delegation_error_carries_the_readable_request_id(pki: LoadedPKI) -> None:
    sent: list[DelegationMessage] = []
    # A message that is valid CBOR with request_id 77 but an unknown key: MALFORMED, id 77.
    data = bytearray(encode_message(SignResponse(77, b"\x30" * 8)))
    data[0] += 1  # one more map entry...
    data += b"\x17\x00"  # ...key 23 (unknown), value 0
    session_for(pki, set(), sent).receive_bytes(bytes(data))
    # A SignResponse with no open request: UNEXPECTED_MESSAGE, id 78.
    session_for(pki, set(), sent).receive(SignResponse(78, b"\x30" * 8))
    # Unreadable: 0.
    session_for(pki, set(), sent).receive_bytes(b"\xff")
    assert [(m.request_id, m.code) for m in sent if isinstance(m, DelegationError)] == [
        (77, DelegationErrorCode.MALFORMED),
        (78, DelegationErrorCode.UNEXPECTED_MESSAGE),
        (0, DelegationErrorCode.MALFORMED),
    ]


# --------------------------------------------------------------------------- real UDP
class Stack:
    """A server, and an agent with ``policy``, on loopback (two bound devices)."""

    def __init__(self, pki: LoadedPKI, two: Any, server: ServerEndpoint, agent: Agent) -> None:
        self.pki, self.two, self.server, self.agent = pki, two, server, agent
        assert server.address is not None and agent.address is not None
        self.server_address = server.address
        self.agent_address = agent.address

    def device(self, index: int = 0, cert_of: int | None = None, **overrides: Any) -> Device:
        paths = self.two.devices
        keys = load_psk_file(self.two.psk_file)
        owner = paths[index if cert_of is None else cert_of]
        settings: dict[str, Any] = {
            "agent": self.agent_address,
            "psk_identity": paths[index].name.encode(),
            "psk": keys[paths[index].name.encode()],
            "server": self.server_address,
            "server_name": SERVER_NAME,
            "certificate_chain": tuple(load_certificate_chain(owner.cert)),
            "signer": DeviceSigner(load_private_key(owner.key)),
            "timeout": 10.0,
        }
        settings.update(overrides)
        return Device(DeviceConfig(**settings))


@pytest.fixture(scope="module")
def two_devices(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A PKI with two devices: the session's PKI has only one."""
    return init_pki(tmp_path_factory.mktemp("pki2"), server_name=SERVER_NAME, devices=2)


async def start(
    pki: LoadedPKI,
    two: Any,
    *,
    allow: tuple[str, ...] | None = None,
    psk_file: Path | None = None,
    allow_unbound: bool = False,
    agent_store: Any = None,
    server_store: Any = None,
    write_psk_file: Callable[[int], Path] | None = None,
) -> Stack:
    store = load_trust_store(two.ca_cert)
    config = server_config(
        pki,
        certificate_chain=tuple(load_certificate_chain(two.server_cert)),
        private_key=load_private_key(two.server_key),
        trust_store=server_store or store,
    )
    endpoint = await ServerEndpoint.listen("127.0.0.1", 0, DTLSServer(config), echo=True)
    assert endpoint.address is not None
    rules = allow if allow is not None else (f"127.0.0.1:{endpoint.address[1]}",)
    if write_psk_file is not None:
        psk_file = write_psk_file(endpoint.address[1])
    policy = AgentPolicy.build(
        load_agent_psk_file(psk_file or two.agent_psk_file), rules, allow_unbound
    )
    agent = Agent(
        AgentConfig(psk_keys=policy.psk_keys, trust_store=agent_store or store, policy=policy)
    )
    await agent.start("127.0.0.1", 0)
    return Stack(pki, two, endpoint, agent)


def stop(stack: Stack) -> None:
    stack.agent.close()
    stack.server.close()


def agent_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "d2tls.agent"]


async def refused(stack: Stack, device: Device, phrase: str, signatures: int = 0) -> str:
    completed = stack.agent.completed
    with pytest.raises(DelegationFailed) as failure:
        await device.connect()
    message = str(failure.value)
    assert phrase in message, message
    # A policy refusal comes before any signature; the server judges the device's
    # certificate only after the CertificateVerify.
    assert device.config.signer.signatures == signatures
    assert stack.agent.completed == completed
    return message


def test_bound_device_delegates_to_an_allowed_server(pki: LoadedPKI, two_devices: Any) -> None:
    async def scenario() -> None:
        stack = await start(pki, two_devices)
        try:
            connection = await stack.device(1).connect()
            connection.send(b"ok")
            assert await connection.receive() == b"ok"
            await connection.close()
            assert stack.agent.completed == 1
        finally:
            stop(stack)

    run(scenario)


def test_server_not_allowed_is_refused_and_logged(
    pki: LoadedPKI, two_devices: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        stack = await start(pki, two_devices, allow=("127.0.0.1:1", "10.0.0.0/8"))
        try:
            port = stack.server_address[1]
            message = await refused(
                stack, stack.device(), f"server 127.0.0.1:{port} is not allowed"
            )
            assert "agent: unsupported: refused:" in message
        finally:
            stop(stack)

    run(scenario)
    assert any("is not allowed for PSK identity 'device-1'" in m for m in agent_log(caplog))


def test_per_device_allow_entry(pki: LoadedPKI, two_devices: Any, tmp_path: Path) -> None:
    """A device's allow= entry opens a server for that device only."""

    def write(port: int) -> Path:
        lines = two_devices.agent_psk_file.read_text().splitlines()
        lines[0] += f" allow=[::1]:1,127.0.0.1:{port}"
        table = tmp_path / "agent-psk.txt"
        table.write_text("\n".join(lines) + "\n")
        return table

    async def scenario() -> None:
        stack = await start(pki, two_devices, allow=(), write_psk_file=write)
        try:
            connection = await stack.device(0).connect()
            await connection.close()
            await refused(stack, stack.device(1), "is not allowed for PSK identity 'device-2'")
        finally:
            stop(stack)

    run(scenario)


def test_psk_of_one_device_cannot_delegate_for_another_certificate(
    pki: LoadedPKI, two_devices: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """device-2's PSK with device-1's chain (and key): refused, whatever the device can sign."""

    async def scenario() -> None:
        stack = await start(pki, two_devices)
        try:
            await refused(
                stack,
                stack.device(1, cert_of=0),
                "PSK identity 'device-2' is bound to another certificate",
            )
        finally:
            stop(stack)

    run(scenario)
    assert any("bound to another certificate" in m for m in agent_log(caplog))


def test_unbound_identity_is_refused_unless_allowed(
    pki: LoadedPKI, two_devices: Any, tmp_path: Path
) -> None:
    legacy = tmp_path / "psk.txt"
    legacy.write_text(two_devices.psk_file.read_text())  # ID:HEX lines only

    async def scenario() -> None:
        stack = await start(pki, two_devices, psk_file=legacy)
        try:
            await refused(stack, stack.device(), "not bound to a device certificate")
        finally:
            stop(stack)
        stack = await start(pki, two_devices, psk_file=legacy, allow_unbound=True)
        try:
            connection = await stack.device().connect()
            await connection.close()
        finally:
            stop(stack)

    run(scenario)


def test_which_side_refused_which_certificate(pki: LoadedPKI, two_devices: Any) -> None:
    async def scenario() -> None:
        # The server does not trust the device's CA: it refuses the device's certificate.
        stack = await start(pki, two_devices, server_store=pki.other_store)
        try:
            message = await refused(
                stack,
                stack.device(),
                "the server refused the device's certificate (alert unknown_ca",
                signatures=1,
            )
            assert "handshake_failed" in message and "from the server" in message
        finally:
            stop(stack)
        # The agent does not trust the server's CA: it refuses the server's certificate.
        stack = await start(pki, two_devices, agent_store=pki.other_store)
        try:
            message = await refused(stack, stack.device(), "the agent refused the server's")
            assert "server_certificate_invalid" in message
        finally:
            stop(stack)

    run(scenario)


async def open_channel(stack: Stack) -> ClientEndpoint:
    keys = load_psk_file(stack.two.psk_file)
    engine = DTLSClient(
        ClientConfig(
            cipher_suites=(CipherSuite.TLS_PSK_WITH_AES_128_CCM_8,),
            psk_identity=b"device-1",
            psk=keys[b"device-1"],
            mtu=CHANNEL_MTU,
        )
    )
    host, port = stack.agent_address
    channel = await ClientEndpoint.connect(host, port, engine)
    await channel.handshake(timeout=10)
    return channel


async def exchange(channel: ClientEndpoint, message: DelegationMessage) -> DelegationMessage:
    channel.send(encode_message(message))
    return decode_message(await channel.receive(timeout=10))


def test_request_id_is_never_served_twice_on_a_channel(pki: LoadedPKI, two_devices: Any) -> None:
    """spec/delegation.md §6: neither after a refusal nor after a completed delegation."""
    chain = tuple(load_certificate_chain(two_devices.devices[0].cert))
    signer = DeviceSigner(load_private_key(two_devices.devices[0].key))

    async def scenario() -> None:
        stack = await start(pki, two_devices)
        port = stack.server_address[1]
        try:
            channel = await open_channel(stack)
            # Refused (server not allowed), then the same id again.
            answer = await exchange(channel, request(5, chain, port=1))
            assert isinstance(answer, DelegationError) and answer.request_id == 5
            again = await exchange(channel, request(5, chain, port=port))
            assert isinstance(again, DelegationError), again
            assert (again.request_id, again.code) == (5, DelegationErrorCode.UNEXPECTED_MESSAGE)
            assert "request_id 5 was already used" in again.reason
            # Completed (blind mode: the raw client signs the digest), then the same id again.
            sign = await exchange(channel, request(6, chain, port=port))
            assert isinstance(sign, SignRequest), sign
            context = await exchange(channel, SignResponse(6, signer.sign_digest(sign.digest)))
            assert isinstance(context, SessionContext)
            wiped = decode_message(await channel.receive(timeout=10))
            assert isinstance(wiped, Wiped)
            replay = await exchange(channel, request(6, chain, port=port))
            assert isinstance(replay, DelegationError), replay
            assert (replay.request_id, replay.code) == (6, DelegationErrorCode.UNEXPECTED_MESSAGE)
            # A fresh id on the same channel is served.
            fresh = await exchange(channel, request(7, chain, port=port))
            assert isinstance(fresh, SignRequest)
            await channel.close()
            # A new channel starts afresh: id 5 is new there.
            channel = await open_channel(stack)
            answer = await exchange(channel, request(5, chain, port=port))
            assert isinstance(answer, SignRequest)
            await channel.close()
        finally:
            stop(stack)

    run(scenario)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "d2tls.cli", *args]


def test_cli_agent_wrong_psk_fails_fast_and_is_logged(two_devices: Any) -> None:
    """``d2tls agent`` + ``d2tls device`` as processes: a wrong key is named at once by the
    device, and the agent logs the failed channel handshake."""
    port = free_udp_port()
    agent = subprocess.Popen(
        cli(
            "agent",
            "--listen",
            f"127.0.0.1:{port}",
            "--psk-file",
            str(two_devices.agent_psk_file),
            "--ca",
            str(two_devices.ca_cert),
            "--allow-server",
            "127.0.0.1:9",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert agent.stdout is not None
        assert "agent listening" in agent.stdout.readline()
        started = time.monotonic()
        device = subprocess.run(
            cli(
                "device",
                "--agent",
                f"127.0.0.1:{port}",
                "--psk",
                f"device-1:{'00' * 32}",
                "--server",
                "127.0.0.1:9",
                "--server-name",
                SERVER_NAME,
                "--cert",
                str(two_devices.devices[0].cert),
                "--key",
                str(two_devices.devices[0].key),
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
        elapsed = time.monotonic() - started
    finally:
        agent.terminate()
        _, err = agent.communicate(timeout=20)
    assert device.returncode == 1
    assert "the agent refused the PSK" in device.stderr, device.stderr
    assert elapsed < 15, f"{elapsed:.1f} s: the device waited for a timeout"
    assert "decrypt_error" in err and "PSK key does not match" in err, err
